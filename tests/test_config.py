from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portwatchd import config as config_module
from portwatchd.config import (
    DEFAULT_CONFIG_PATH,
    OVERRIDE_OPTIONS,
    Config,
    ConfigError,
    IgnoreRule,
    SocketConfig,
    load_config,
)
from portwatchd.model import Endpoint, Owner
from tests.other_user import python_as

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "portwatchd.toml"
    path.write_text(textwrap.dedent(text))
    return str(path)


def error_of(tmp_path: Path, text: str) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value


def endpoint(
    port: int = 22, address: str = "0.0.0.0", proto: str = "tcp", family: str = "ipv4"
) -> Endpoint:
    return Endpoint(proto=proto, family=family, address=address, port=port)  # type: ignore[arg-type]


# -- defaults and a full file ------------------------------------------------------


def test_defaults_run_without_a_file() -> None:
    config = Config()
    assert config.interval == 1.0
    assert config.backend == "auto"
    assert config.owners is True
    assert config.state_dir == "/var/lib/portwatchd"
    assert config.ring_size == 1000
    assert config.socket == SocketConfig(
        path="/run/portwatchd/control.sock", group="", mode=0o660, max_clients=64, idle_timeout=60
    )
    assert config.ignore == ()
    assert config.source is None


def test_missing_default_file_means_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    absent = str(tmp_path / "absent.toml")
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATH", absent)
    assert load_config(None) == Config()
    assert load_config(absent) == Config()


def test_default_file_is_read_when_present(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "interval = 2\n")
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATH", path)
    config = load_config(None)
    assert config.interval == 2.0
    assert config.source == path


def test_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.toml")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"{path}: cannot read the configuration file: no such file"


def test_unreadable_file_is_an_error() -> None:
    # Root reads any file whatever its mode: as root, ask as "nobody". The
    # directory is open to all, so that the file's own mode is what denies
    # (pytest's tmp_path is private to root).
    with tempfile.TemporaryDirectory(prefix="pwcfg-") as directory:
        os.chmod(directory, 0o755)
        path = write(Path(directory), "interval = 1\n")
        os.chmod(path, 0)
        check_unreadable(path)


def check_unreadable(path: str) -> None:
    program = (
        "from portwatchd.config import load_config, ConfigError\n"
        "try:\n"
        f"    load_config({path!r})\n"
        "except ConfigError as error:\n"
        "    print(error)\n"
    )
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("needs setpriv(1) to drop root")
        nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        result = python_as(nobody, "-c", program, check=False, timeout=60)
    else:
        result = subprocess.run(
            [sys.executable, "-c", program],
            cwd=REPO, capture_output=True, text=True, check=False, timeout=60,
        )  # fmt: skip
    assert result.stdout.strip() == (
        f"{path}: cannot read the configuration file: Permission denied"
    ), result.stderr


def test_a_directory_is_not_a_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"^{tmp_path}: cannot read.*directory"):
        load_config(str(tmp_path))


def test_every_key_is_read(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        interval = 0.5
        backend = "proc"
        owners = false
        state_dir = "/srv/state"
        log_target = "stderr"
        log_format = "json"
        ring_size = 5000

        [socket]
        path = "/run/pw.sock"
        group = "portwatchd"
        mode = "0640"
        max_clients = 8
        idle_timeout = 30

        [[ignore]]
        port = 5353
        proto = "udp"

        [[ignore]]
        port = ["6000-6010", 22]
        address = ["127.0.0.0/8", "::1"]
        process = "sshd"
        unit = "docker-*.scope"
        """,
    )
    config = load_config(path)
    assert config.interval == 0.5
    assert config.backend == "proc"
    assert config.owners is False
    assert config.state_dir == "/srv/state"
    assert config.log_target == "stderr"
    assert config.log_format == "json"
    assert config.ring_size == 5000
    assert config.socket == SocketConfig("/run/pw.sock", "portwatchd", 0o640, 8, 30.0)
    assert config.source == path
    first, second = config.ignore
    assert first == IgnoreRule(ports=((5353, 5353),), proto="udp", line=17)
    assert second.ports == ((6000, 6010), (22, 22))
    assert second.networks == (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    assert second.process == "sshd"
    assert second.unit == "docker-*.scope"
    assert second.line == 21


def test_shipped_default_file_loads_and_equals_the_defaults() -> None:
    # packaging/portwatchd.toml has every key commented out: installing it
    # must change nothing.
    path = str(REPO / "packaging" / "portwatchd.toml")
    config = load_config(path)
    assert config == Config(source=path)


def test_shipped_default_file_shows_every_key_with_its_default(tmp_path: Path) -> None:
    # Uncommenting every "#key = value" line must give the defaults again:
    # the file documents them truthfully, and misses none.
    text = (REPO / "packaging" / "portwatchd.toml").read_text()
    setting = re.compile(r"^#([a-z_]+) = ")
    uncommented = [line[1:] if setting.match(line) else line for line in text.splitlines()]
    shown = [match[1] for line in text.splitlines() if (match := setting.match(line))]
    assert sorted(shown) == sorted(
        [
            "interval",
            "backend",
            "owners",
            "state_dir",
            "log_target",
            "log_format",
            "ring_size",
            "path",
            "group",
            "mode",
            "max_clients",
            "idle_timeout",
        ]
    )
    path = tmp_path / "uncommented.toml"
    path.write_text("\n".join(uncommented))
    assert load_config(str(path)) == Config(source=str(path))


# -- errors name the file, the line and the key ------------------------------------

BAD_VALUES = [
    # (file text, line, key, message)
    ("interval = 0", 1, "interval", "must be between 0.1 and 3600 seconds, got 0"),
    ("interval = 3601.5", 1, "interval", "must be between 0.1 and 3600 seconds, got 3601.5"),
    ("interval = nan", 1, "interval", "must be between 0.1 and 3600 seconds, got nan"),
    ('interval = "1"', 1, "interval", 'must be a number of seconds, got string "1"'),
    ("interval = true", 1, "interval", "must be a number of seconds, got boolean true"),
    (
        'backend = "ebpf"',
        1,
        "backend",
        'must be one of "auto", "netlink", "proc", got string "ebpf"',
    ),
    ("owners = 1", 1, "owners", "must be true or false, got integer 1"),
    ('owners = "yes"', 1, "owners", 'must be true or false, got string "yes"'),
    ('state_dir = ""', 1, "state_dir", "must not be empty"),
    ("state_dir = 5", 1, "state_dir", "must be a string, got integer 5"),
    ('log_target = "syslog"', 1, "log_target", 'must be one of "auto", "journal", "stderr"'),
    ('log_format = "xml"', 1, "log_format", 'must be one of "text", "json", got string "xml"'),
    ("ring_size = 0", 1, "ring_size", "must be between 1 and 1000000, got 0"),
    ("ring_size = 10.0", 1, "ring_size", "must be an integer, got float 10.0"),
    ("ring_size = false", 1, "ring_size", "must be an integer, got boolean false"),
    ("\n[socket]\npath = 1", 3, "socket.path", "must be a string, got integer 1"),
    (
        f'[socket]\npath = "/run/{"x" * 120}"',
        2,
        "socket.path",
        "is 125 bytes long; a Unix socket path can be at most 107 bytes",
    ),
    ('[socket]\ngroup = "port watch"', 2, "socket.group", "must be a group name or number"),
    ('[socket]\n\nmode = "0999"', 3, "socket.mode", 'must be an octal mode like "0660"'),
    ("[socket]\nmode = 0o660", 2, "socket.mode", "got integer 432 (put the mode in quotes)"),
    ("[socket]\nmax_clients = 0", 2, "socket.max_clients", "must be between 1 and 4096, got 0"),
    ("[socket]\nidle_timeout = 0", 2, "socket.idle_timeout", "must be between 1 and 86400"),
    ("socket = 3", 1, "socket", "must be a table ([socket]), got integer 3"),
    ("[ignore]\nport = 1", 1, "ignore", "must be an array of tables ([[ignore]]), got a table"),
    ("[[ignore]]\nport = 0", 2, "ignore[1].port", "must be between 1 and 65535, got 0"),
    ("[[ignore]]\nport = 70000", 2, "ignore[1].port", "must be between 1 and 65535, got 70000"),
    (
        '[[ignore]]\nport = "9-3"',
        2,
        "ignore[1].port",
        'range "9-3" is backwards; did you mean "3-9"?',
    ),
    (
        '[[ignore]]\nport = "http"',
        2,
        "ignore[1].port",
        'must be a port number or a range like "8000-8099"',
    ),
    ("[[ignore]]\nport = []", 2, "ignore[1].port", "must not be an empty array"),
    ("[[ignore]]\nport = [22, true]", 2, "ignore[1].port", "got boolean true"),
    (
        '[[ignore]]\naddress = "localhost"',
        2,
        "ignore[1].address",
        "must be an IP address or a CIDR",
    ),
    ('[[ignore]]\naddress = "127.0.0.1/8"', 2, "ignore[1].address", 'did you mean "127.0.0.0/8"?'),
    ('[[ignore]]\nproto = "sctp"', 2, "ignore[1].proto", 'must be one of "tcp", "udp"'),
    ('[[ignore]]\nprocess = ""', 2, "ignore[1].process", "must not be empty"),
    (
        '[[ignore]]\nprocess = "systemd-resolved-x"',
        2,
        "ignore[1].process",
        'longer than 15 bytes: the kernel truncates process names, so write "systemd-resolve"',
    ),
    ("[[ignore]]\nunit = 7", 2, "ignore[1].unit", "must be a string, got integer 7"),
    (
        "[[ignore]]\nport = 1\n\n[[ignore]]\n# nothing\n\n[[ignore]]\nport = 2",
        4,
        "ignore[2]",
        "an empty rule would ignore everything",
    ),
    (
        '[[ignore]]\nport = 1\n[[ignore]]\nport = 2\nproto = "icmp"',
        5,
        "ignore[2].proto",
        "must be one of",
    ),
    ("ignore = [{port = 1}, {proto = 1}]", 1, "ignore[2].proto", "got integer 1"),
    ("ignore = [3]", 1, "ignore[1]", "must be a table ([[ignore]]), got integer 3"),
    ("[socket.path]\nx = 1", 1, "socket.path", "must be a string, got a table"),
    (
        'socket.mode = "0600"\nsocket.max_clients = -1',
        2,
        "socket.max_clients",
        "between 1 and 4096",
    ),
]


@pytest.mark.parametrize(("text", "line", "key", "message"), BAD_VALUES)
def test_bad_value_names_file_line_and_key(
    tmp_path: Path, text: str, line: int, key: str, message: str
) -> None:
    error = error_of(tmp_path, text + "\n")
    path = str(tmp_path / "portwatchd.toml")
    assert (error.source, error.line, error.key) == (path, line, key)
    assert message in error.message
    assert str(error).startswith(f"{path}:{line}: {key}: ")


def test_the_error_message_reads_like_a_compiler_message(tmp_path: Path) -> None:
    error = error_of(tmp_path, "# portwatchd\n\ninterval = 0\n")
    assert (
        str(error)
        == f"{tmp_path}/portwatchd.toml:3: interval: must be between 0.1 and 3600 seconds, got 0"
    )


UNKNOWN_KEYS = [
    ("intervall = 2", 1, "intervall", "unknown key; did you mean interval?"),
    ("frobnicate = 2", 1, "frobnicate", "unknown key"),
    ("[sockets]\npath = 'x'", 1, "sockets", "unknown table; did you mean socket?"),
    (
        "[socket]\n\nmaxclients = 3",
        3,
        "socket.maxclients",
        "unknown key; did you mean max_clients?",
    ),
    (
        "[[ignore]]\nport = 1\nadress = '::1'",
        3,
        "ignore[1].adress",
        "unknown key; did you mean address?",
    ),
    ("[[ignores]]\nport = 1", 1, "ignores", "unknown table; did you mean ignore?"),
]


@pytest.mark.parametrize(("text", "line", "key", "message"), UNKNOWN_KEYS)
def test_unknown_key_is_named_with_a_suggestion(
    tmp_path: Path, text: str, line: int, key: str, message: str
) -> None:
    error = error_of(tmp_path, text + "\n")
    assert (error.line, error.key, error.message) == (line, key, message)


def test_unknown_key_without_a_close_match_has_no_suggestion(tmp_path: Path) -> None:
    assert "did you mean" not in error_of(tmp_path, "zzz = 1\n").message


def test_line_numbers_survive_multiline_strings_and_arrays(tmp_path: Path) -> None:
    text = '''\
    [[ignore]]
    # a comment with key = value in it
    port = [
      22,   # ssh
      "80-81",
    ]
    unit = """not
    process = "a key inside a string"
    """

    [[ignore]]
    port = 1
    unit = 'x'
    proto = "udpp"
    '''
    error = error_of(tmp_path, text)
    assert (error.line, error.key) == (14, "ignore[2].proto")


def test_quoted_and_dotted_keys_are_located(tmp_path: Path) -> None:
    error = error_of(tmp_path, '[socket]\n"path" = "/x"\n"max_clients" = 0\n')
    assert (error.line, error.key) == (3, "socket.max_clients")


def test_toml_syntax_error_gives_its_line(tmp_path: Path) -> None:
    error = error_of(tmp_path, "interval = 1\n\n[socket\npath = 'x'\n")
    assert error.line == 3
    assert error.key is None
    assert error.message.startswith("invalid TOML: ")
    assert "(column" in error.message
    assert str(error).startswith(f"{tmp_path}/portwatchd.toml:3: invalid TOML: ")


def test_unquoted_mode_gets_a_hint(tmp_path: Path) -> None:
    error = error_of(tmp_path, "[socket]\nmode = 0660\n")
    assert error.line == 2
    assert error.message.endswith('(write a mode in quotes: "0660")')


def test_key_given_twice_points_at_the_second(tmp_path: Path) -> None:
    error = error_of(tmp_path, "interval = 1\nbackend = 'proc'\ninterval = 2")
    assert error.line == 3
    assert "invalid TOML" in error.message


def test_unterminated_value_points_at_the_end(tmp_path: Path) -> None:
    error = error_of(tmp_path, "interval = 1\nring_size = ")
    assert error.line == 2


def test_bytes_that_are_not_utf8_give_their_line(tmp_path: Path) -> None:
    path = tmp_path / "portwatchd.toml"
    path.write_bytes(b"interval = 1\n# caf\xe9\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert (caught.value.line, caught.value.message) == (2, "not valid UTF-8")


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.one_of(
        st.text(),
        st.text(alphabet="[]={}\"'#.,\n -_0123456789abcdefghijklmnopqrstuvwxyz"),
        st.lists(
            st.sampled_from(
                [
                    "interval = 2",
                    "interval = 0",
                    "[socket]",
                    "[[ignore]]",
                    "port = 22",
                    'port = "1-2"',
                    'address = "10.0.0.0/8"',
                    "mode = '0600'",
                    "x = [",
                    "]",
                    '"""',
                    "'''",
                    "a.b = 1",
                    "[socket.x]",
                    "[[ignore.x]]",
                    "proto = 'tcp'",
                    "ignore = []",
                    "owners = true",
                    "max_clients = 3",
                    "\\",
                    "\r\n",
                ]
            ),
        ).map("\n".join),
    )
)
def test_any_text_gives_a_config_or_a_config_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "fuzz.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        config = load_config(str(path))
    except ConfigError as error:
        assert str(error).startswith(str(path))
    else:
        assert isinstance(config, Config)


# -- overrides ---------------------------------------------------------------------


def test_overrides_beat_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "interval = 5\n[socket]\npath = '/run/a.sock'\nmode = '0600'\n")
    config = load_config(
        path,
        {
            "interval": 0.25,
            "socket_path": "run/control.sock",
            "state_dir": "run/state",
            "owners": False,
            "socket_mode": "0666",
            "ring_size": 10,
            "backend": "netlink",
            "log_target": "stderr",
            "log_format": "json",
            "socket_group": "adm",
            "socket_max_clients": 2,
            "socket_idle_timeout": 5,
        },
    )
    assert config.interval == 0.25
    assert config.socket == SocketConfig("run/control.sock", "adm", 0o666, 2, 5.0)
    assert config.state_dir == "run/state"
    assert (config.owners, config.ring_size, config.backend) == (False, 10, "netlink")
    assert (config.log_target, config.log_format) == ("stderr", "json")
    assert config.source == path


def test_none_overrides_are_not_given(tmp_path: Path) -> None:
    path = write(tmp_path, "interval = 5\n")
    assert load_config(path, {"interval": None, "socket_path": None}).interval == 5.0


def test_every_override_name_maps_to_a_real_key() -> None:
    defaults = Config()
    for name, (key_path, option) in OVERRIDE_OPTIONS.items():
        assert option.startswith("--")
        holder: object = defaults
        for part in key_path:
            holder = getattr(holder, part)
        assert name.endswith(key_path[-1])


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"interval": 0}, "--interval: must be between 0.1 and 3600 seconds, got 0"),
        ({"interval": "2"}, '--interval: must be a number of seconds, got string "2"'),
        ({"ring_size": True}, "--ring-size: must be an integer, got boolean true"),
        ({"socket_path": ""}, "--socket: must not be empty"),
        (
            {"backend": "bpf"},
            '--backend: must be one of "auto", "netlink", "proc", got string "bpf"',
        ),
        ({"socket_mode": "rw"}, '--socket-mode: must be an octal mode like "0660", got "rw"'),
        ({"intervall": 1}, "unknown override 'intervall'; did you mean interval?"),
    ],
)
def test_bad_override_names_the_option(overrides: dict[str, object], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(str(REPO / "packaging" / "portwatchd.toml"), overrides)
    assert str(caught.value) == expected


def test_overrides_apply_without_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATH", str(tmp_path / "absent"))
    config = load_config(None, {"interval": 3})
    assert config.interval == 3.0
    assert config.source is None
    assert DEFAULT_CONFIG_PATH == "/etc/portwatchd/portwatchd.toml"


# -- ignore rules ------------------------------------------------------------------


def rules_of(tmp_path: Path, text: str) -> Config:
    return load_config(write(tmp_path, text))


def test_port_range_and_list(tmp_path: Path) -> None:
    config = rules_of(tmp_path, '[[ignore]]\nport = ["6000-6010", 22]\n')
    assert config.is_ignored(endpoint(6000))
    assert config.is_ignored(endpoint(6010))
    assert config.is_ignored(endpoint(22))
    assert not config.is_ignored(endpoint(6011))
    assert not config.is_ignored(endpoint(5999))


def test_cidr_and_exact_address(tmp_path: Path) -> None:
    config = rules_of(
        tmp_path, '[[ignore]]\naddress = "127.0.0.0/8"\n[[ignore]]\naddress = "::1"\n'
    )
    assert config.is_ignored(endpoint(address="127.0.0.53"))
    assert config.is_ignored(endpoint(address="::1", family="ipv6"))
    assert not config.is_ignored(endpoint(address="0.0.0.0"))
    assert not config.is_ignored(endpoint(address="::", family="ipv6"))
    assert not config.is_ignored(endpoint(address="128.0.0.1"))


def test_ipv4_rule_matches_an_ipv4_mapped_address(tmp_path: Path) -> None:
    config = rules_of(tmp_path, '[[ignore]]\naddress = "10.0.0.0/8"\n')
    assert config.is_ignored(endpoint(address="::ffff:10.1.2.3", family="ipv6"))
    assert not config.is_ignored(endpoint(address="::ffff:11.1.2.3", family="ipv6"))


def test_wildcard_address_is_matched_exactly_not_as_everything(tmp_path: Path) -> None:
    config = rules_of(tmp_path, '[[ignore]]\naddress = "0.0.0.0"\n')
    assert config.is_ignored(endpoint(address="0.0.0.0"))
    assert not config.is_ignored(endpoint(address="192.168.1.1"))


def test_every_field_of_a_rule_must_match(tmp_path: Path) -> None:
    config = rules_of(tmp_path, '[[ignore]]\nport = 5353\nproto = "udp"\n')
    assert config.is_ignored(endpoint(5353, proto="udp"))
    assert not config.is_ignored(endpoint(5353, proto="tcp"))
    assert not config.is_ignored(endpoint(5354, proto="udp"))


def test_any_rule_may_match(tmp_path: Path) -> None:
    config = rules_of(tmp_path, "[[ignore]]\nport = 1\n[[ignore]]\nport = 2\n")
    assert config.is_ignored(endpoint(1))
    assert config.is_ignored(endpoint(2))
    assert not config.is_ignored(endpoint(3))


def test_process_and_unit_rules_judge_the_owner(tmp_path: Path) -> None:
    config = rules_of(
        tmp_path, '[[ignore]]\nprocess = "dnsmasq"\n[[ignore]]\nunit = "docker-*.scope"\n'
    )
    dnsmasq = Owner(pid=10, comm="dnsmasq", unit="libvirtd.service")
    container = Owner(pid=11, comm="nginx", unit="docker-0123abcd.scope")
    host_nginx = Owner(pid=12, comm="nginx", unit="nginx.service")
    assert config.is_ignored(endpoint(53), dnsmasq)
    assert config.is_ignored(endpoint(80), container)
    assert not config.is_ignored(endpoint(80), host_nginx)
    # Unknown owner: a process or unit rule cannot match.
    assert not config.is_ignored(endpoint(53), None)
    assert not config.is_ignored(endpoint(53), Owner())


def test_exact_unit_is_not_a_prefix(tmp_path: Path) -> None:
    config = rules_of(tmp_path, '[[ignore]]\nunit = "ssh.service"\n')
    assert config.is_ignored(endpoint(), Owner(pid=1, unit="ssh.service"))
    assert not config.is_ignored(endpoint(), Owner(pid=1, unit="ssh.service.d"))
    assert not config.is_ignored(endpoint(), Owner(pid=1, unit="sshd.service"))


def test_rule_describes_itself_for_log_lines(tmp_path: Path) -> None:
    config = rules_of(
        tmp_path, '[[ignore]]\nport = [22, "80-81"]\nproto = "tcp"\naddress = "::1"\n'
    )
    assert config.ignore[0].describe() == "port=22,80-81 address=::1/128 proto=tcp"


def test_the_man_page_example_is_a_valid_configuration(tmp_path: Path) -> None:
    page = (REPO / "man" / "portwatchd.toml.5").read_text()
    examples = page.split(".SH EXAMPLES", 1)[1]
    block = examples.split(".nf\n", 1)[1].split(".fi\n", 1)[0]
    config = rules_of(tmp_path, block.replace("\\-", "-"))
    assert config.interval == 2.0
    assert config.socket.group == "adm"
    assert len(config.ignore) == 3
    assert config.is_ignored(endpoint(5353, proto="udp"))
    assert config.is_ignored(endpoint(8080, address="::1", family="ipv6"))
    assert not config.is_ignored(endpoint(8080))


def test_absurdly_deep_nesting_is_a_config_error_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "deep.toml"
    path.write_text("interval = " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert str(path) in str(caught.value)
