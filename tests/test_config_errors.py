"""Every configuration error names the file, the line and the key."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portwatchd.config import Config, ConfigError, check_config, load_config


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "portwatchd.toml"
    path.write_text(textwrap.dedent(text))
    return str(path)


def error_of(tmp_path: Path, text: str) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value


# -- errors name the file, the line and the key ------------------------------------

BAD_VALUES = [
    # (file text, line, key, message)
    ("interval = 0", 1, "interval", "must be between 0.1 and 3600 seconds, got 0"),
    ("interval = 3601.5", 1, "interval", "must be between 0.1 and 3600 seconds, got 3601.5"),
    ("interval = nan", 1, "interval", "must be between 0.1 and 3600 seconds, got nan"),
    ('interval = "1"', 1, "interval", 'must be a number of seconds or "auto", got "1"'),
    ('interval = "fast"', 1, "interval", 'must be a number of seconds or "auto", got "fast"'),
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
    ("history_size = 0", 1, "history_size", "must be between 1 and 10000000, got 0"),
    ("history_size = 10000001", 1, "history_size", "must be between 1 and 10000000"),
    ("history_size = 10.0", 1, "history_size", "must be an integer, got float 10.0"),
    ("history_size = false", 1, "history_size", "must be an integer, got boolean false"),
    ("ring_size = 0", 1, "ring_size", "must be between 1 and 10000000, got 0"),
    ("ring_size = false", 1, "ring_size", "must be an integer, got boolean false"),
    ("history_max_age = 0", 1, "history_max_age", 'between 1 second and 3650 days, or "none"'),
    ("history_max_age = -5", 1, "history_max_age", "got integer -5"),
    ('history_max_age = "3651d"', 1, "history_max_age", 'got string "3651d"'),
    ("history_max_age = nan", 1, "history_max_age", "got float nan"),
    ("history_max_age = true", 1, "history_max_age", "got boolean true"),
    ('history_max_age = "30"', 1, "history_max_age", "(add a unit: s, m, h or d)"),
    ('history_max_age = "1w"', 1, "history_max_age", 'like "30d", "12h", "90m" or "3600s"'),
    ('history_max_age = "forever"', 1, "history_max_age", 'or "none", got "forever"'),
    ("history_max_age = [1]", 1, "history_max_age", "got an array"),
    (
        "ring_size = 5\nhistory_size = 6",
        1,
        "ring_size",
        "is the old name of history_size, which this file also sets; remove ring_size",
    ),
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
    ('group = "adm"', 1, "group", "unknown key; write socket.group, or put it under [socket]"),
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
    error = error_of(tmp_path, "interval = 1\nhistory_size = ")
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
    errors = check_config(str(path))
    assert all(str(error).startswith(str(path)) for error in errors)
    try:
        config = load_config(str(path))
    except ConfigError as error:
        # load_config stops at the first of the errors check_config lists.
        assert errors and str(error) == str(errors[0])
    else:
        assert isinstance(config, Config)
        assert errors == []
