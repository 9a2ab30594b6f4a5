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

from portwatchd import config as config_module
from portwatchd.config import (
    DEFAULT_CONFIG_PATH,
    OVERRIDE_OPTIONS,
    Config,
    ConfigError,
    IgnoreRule,
    KeyOrigin,
    SocketConfig,
    load_config,
)
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


# -- defaults and a full file ------------------------------------------------------


def test_defaults_run_without_a_file() -> None:
    config = Config()
    assert config.interval is None  # "auto": 5 s with the kernel's notices, 1 s without
    assert config.backend == "auto"
    assert config.owners is True
    assert config.state_dir == "/var/lib/portwatchd"
    assert config.history_size == 10_000
    assert config.history_max_age_s is None
    assert config.socket == SocketConfig(
        path="/run/portwatchd/control.sock", group="", mode=0o660, max_clients=64, idle_timeout=60
    )
    assert config.ignore == ()
    assert config.source is None
    assert config.sources == ()
    assert config.warnings == ()


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
        history_size = 5000
        history_max_age = "30d"

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
    assert config.history_size == 5000
    assert config.history_max_age_s == 30 * 86400
    assert config.socket == SocketConfig("/run/pw.sock", "portwatchd", 0o640, 8, 30.0)
    assert config.source == path
    assert config.sources == (path,)
    assert config.warnings == ()
    first, second = config.ignore
    assert first == IgnoreRule(ports=((5353, 5353),), proto="udp", line=18, source=path)
    assert second.ports == ((6000, 6010), (22, 22))
    assert second.networks == (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    assert second.process == "sshd"
    assert second.unit == "docker-*.scope"
    assert second.line == 22


SHIPPED = REPO / "packaging" / "portwatchd.toml"


def test_shipped_default_file_loads_and_equals_the_defaults() -> None:
    # packaging/portwatchd.toml has every key commented out: installing it
    # must change nothing.
    path = str(SHIPPED)
    config = load_config(path)
    assert config == Config(source=path, sources=(path,))


def test_shipped_default_file_shows_every_key_with_its_default(tmp_path: Path) -> None:
    # Uncommenting every "#key = value" line must give the defaults again:
    # the file documents them truthfully, and misses none.
    text = SHIPPED.read_text()
    setting = re.compile(r"^#([a-z_.]+) = ")
    uncommented = [line[1:] if setting.match(line) else line for line in text.splitlines()]
    shown = [match[1] for line in text.splitlines() if (match := setting.match(line))]
    assert sorted(shown) == sorted(
        [
            "interval",
            "restart_grace",
            "realtime",
            "backend",
            "owners",
            "metrics_textfile",
            "namespaces",
            "state_dir",
            "log_target",
            "log_format",
            "history_size",
            "history_max_age",
            "socket.path",
            "socket.group",
            "socket.mode",
            "socket.max_clients",
            "socket.idle_timeout",
        ]
    )
    path = tmp_path / "uncommented.toml"
    path.write_text("\n".join(uncommented))
    config = load_config(str(path))
    assert config == Config(source=str(path), sources=(str(path),))
    assert config.warnings == ()


def test_shipped_default_file_has_no_active_table() -> None:
    for number, line in enumerate(SHIPPED.read_text().splitlines(), start=1):
        assert not line.lstrip().startswith("["), f"line {number} opens a table: {line}"


def test_a_key_appended_to_the_shipped_file_is_a_top_level_key(tmp_path: Path) -> None:
    path = tmp_path / "portwatchd.toml"
    path.write_text(SHIPPED.read_text() + "interval = 5\n")
    assert load_config(str(path)).interval == 5.0


def test_each_socket_key_uncommented_alone_applies(tmp_path: Path) -> None:
    # The admin's usual edit: remove one "#". Without an active [socket]
    # table the dotted key must work wherever it stands.
    text = SHIPPED.read_text().replace('#socket.group = ""', 'socket.group = "adm"')
    path = tmp_path / "portwatchd.toml"
    path.write_text(text + "backend = 'proc'\n")
    config = load_config(str(path))
    assert (config.socket.group, config.backend) == ("adm", "proc")


# -- history ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "seconds"),
    [
        ("3600", 3600.0),
        ("1.5", 1.5),
        ('"30d"', 30 * 86400.0),
        ('"12h"', 12 * 3600.0),
        ('"90m"', 90 * 60.0),
        ('"3600s"', 3600.0),
        ('" 1.5h "', 5400.0),
        ('"3650d"', 3650 * 86400.0),
        ('"none"', None),
    ],
)
def test_history_max_age_takes_seconds_or_a_duration(
    tmp_path: Path, written: str, seconds: float | None
) -> None:
    config = load_config(write(tmp_path, f"history_max_age = {written}\n"))
    assert config.history_max_age_s == seconds


def test_history_size_reaches_ten_million(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "history_size = 10_000_000\n")).history_size == 10_000_000


def test_ring_size_still_works_with_a_warning(tmp_path: Path) -> None:
    path = write(tmp_path, "interval = 2\nring_size = 5000\n")
    config = load_config(path)
    assert config.history_size == 5000
    assert config.ring_size == 5000
    assert config.warnings == (
        f"{path}:2: ring_size: is deprecated: write history_size = 5000 instead "
        "(the same setting; ring_size will be removed in a later version)",
    )
    assert config.origin("history_size") == KeyOrigin(path, 2, "ring_size")


def test_the_new_name_has_no_warning(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "history_size = 5000\n")).warnings == ()


# -- overrides ---------------------------------------------------------------------


def test_overrides_beat_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "interval = 5\nstate_dir = '/a'\nlog_target = 'journal'\n"
        "[socket]\npath = '/run/a.sock'\nmode = '0600'\n",
    )
    config = load_config(
        path,
        {
            "interval": 0.25,
            "socket_path": "run/control.sock",
            "state_dir": "run/state",
            "log_target": "stderr",
        },
    )
    assert config.interval == 0.25
    assert config.socket == SocketConfig("run/control.sock", "", 0o600, 64, 60.0)
    assert config.state_dir == "run/state"
    assert config.log_target == "stderr"
    assert config.source == path
    assert config.origin("socket.path") == KeyOrigin(None, None, "--socket")
    assert config.origin("socket.mode") == KeyOrigin(path, 6, "socket.mode")


def test_override_options_are_the_options_portwatchd_has() -> None:
    # Every override is reachable from the command line, and every option
    # the daemon passes is a known override.
    from portwatchd.daemon import build_parser, overrides_from

    parser = build_parser()
    options = {option for action in parser._actions for option in action.option_strings}
    assert {option for _path, option in OVERRIDE_OPTIONS.values()} <= options
    args = parser.parse_args(
        [
            "--interval", "2", "--socket", "/x.sock", "--state-dir", "/s",
            "--log-target", "stderr", "--namespaces", "host",
        ]
    )  # fmt: skip
    assert set(overrides_from(args)) == set(OVERRIDE_OPTIONS)
    config = load_config(str(SHIPPED), overrides_from(args))
    assert (config.interval, config.socket.path, config.state_dir, config.log_target) == (
        2.0,
        "/x.sock",
        "/s",
        "stderr",
    )


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
        ({"interval": "2"}, '--interval: must be a number of seconds or "auto", got "2"'),
        ({"socket_path": ""}, "--socket: must not be empty"),
        ({"state_dir": ""}, "--state-dir: must not be empty"),
        (
            {"log_target": "syslog"},
            '--log-target: must be one of "auto", "journal", "stderr", got string "syslog"',
        ),
        ({"intervall": 1}, "unknown override 'intervall'; did you mean interval?"),
        ({"ring_size": 5}, "unknown override 'ring_size'"),
        ({"backend": "proc"}, "unknown override 'backend'"),
    ],
)
def test_bad_override_names_the_option(overrides: dict[str, object], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(str(SHIPPED), overrides)
    assert str(caught.value) == expected


def test_overrides_apply_without_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATH", str(tmp_path / "absent"))
    config = load_config(None, {"interval": 3})
    assert config.interval == 3.0
    assert config.source is None
    assert DEFAULT_CONFIG_PATH == "/etc/portwatchd/portwatchd.toml"


def test_absurdly_deep_nesting_is_a_config_error_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "deep.toml"
    path.write_text("interval = " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert str(path) in str(caught.value)


def test_the_readme_example_is_a_valid_configuration(tmp_path: Path) -> None:
    if not (REPO / "README.md").exists():
        pytest.skip("no README.md here (the package build copies only the code and tests)")
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Configuration", 1)[1]
    block = section.split("```toml\n", 1)[1].split("```", 1)[0]
    config = load_config(write(tmp_path, block))
    assert (config.history_size, config.history_max_age_s) == (10_000, None)
    assert len(config.ignore) == 1
