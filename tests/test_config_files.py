"""Reading the files: bounds, drop-ins, every error at once, and what the
system must provide."""

from __future__ import annotations

import grp
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from portwatchd import config as config_module
from portwatchd.config import (
    Config,
    ConfigError,
    KeyOrigin,
    check_config,
    drop_in_dir,
    format_errors,
    load_config,
)
from portwatchd.config_env import environment_errors
from portwatchd.model import Endpoint
from tests.other_user import python_as

REPO = Path(__file__).resolve().parent.parent


def write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return str(path)


def refusal(path: str) -> tuple[ConfigError, float]:
    started = time.monotonic()
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value, time.monotonic() - started


# -- bounded reads -----------------------------------------------------------------


def test_a_fifo_is_refused_at_once_without_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "portwatchd.toml"
    os.mkfifo(fifo)
    error, took = refusal(str(fifo))
    assert str(error) == (
        f"{fifo}: cannot read the configuration file: it is a FIFO (named pipe), not a regular file"
    )
    assert took < 0.5


def test_dev_zero_is_refused_at_once() -> None:
    error, took = refusal("/dev/zero")
    assert str(error) == (
        "/dev/zero: cannot read the configuration file: it is a character device, "
        "not a regular file"
    )
    assert took < 0.5


def test_a_file_over_one_mib_is_refused_unread(tmp_path: Path) -> None:
    big = tmp_path / "portwatchd.toml"
    big.write_bytes(b"# padding\n" * (2 * 1024 * 1024 // 10))
    error, took = refusal(str(big))
    assert error.source == str(big)
    assert error.message == (
        "the configuration file is 2,097,150 bytes, over the limit of 1,048,576 bytes "
        "(1 MiB); is this the right file?"
    )
    assert took < 0.5


def test_a_file_of_exactly_one_mib_is_read(tmp_path: Path) -> None:
    line = b"# " + b"x" * 1021 + b"\n"  # 1,024 bytes
    path = tmp_path / "portwatchd.toml"
    path.write_bytes(line * 1023 + b"interval = 3\n" + b"#" * (1024 - 14) + b"\n")
    assert path.stat().st_size == 1024 * 1024
    assert load_config(str(path)).interval == 3.0


def test_a_unix_socket_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        error, took = refusal(str(path))
    assert error.message == (
        "cannot read the configuration file: it is a socket, not a regular file"
    )
    assert took < 0.5


def test_a_symlink_to_a_regular_file_is_read(tmp_path: Path) -> None:
    target = write(tmp_path / "real.toml", "interval = 4\n")
    link = tmp_path / "portwatchd.toml"
    link.symlink_to(target)
    assert load_config(str(link)).interval == 4.0


# -- drop-ins ----------------------------------------------------------------------


@pytest.fixture
def etc(tmp_path: Path) -> Path:
    """A configuration directory: portwatchd.toml and portwatchd.d/."""
    return tmp_path / "etc"


def test_drop_in_directory_is_beside_the_main_file() -> None:
    assert drop_in_dir("/etc/portwatchd/portwatchd.toml") == "/etc/portwatchd/portwatchd.d"


def test_drop_ins_apply_in_name_order_after_the_main_file(etc: Path) -> None:
    main = write(
        etc / "portwatchd.toml", "interval = 5\nbackend = 'proc'\n[socket]\nmode = '0600'\n"
    )
    second = write(etc / "portwatchd.d" / "20-b.toml", "interval = 3\n[socket]\ngroup = 'adm'\n")
    first = write(etc / "portwatchd.d" / "10-a.toml", "interval = 2\nowners = false\n")
    config = load_config(main)
    assert config.interval == 3.0  # 20-b.toml is read last
    assert (config.backend, config.owners) == ("proc", False)
    assert (config.socket.mode, config.socket.group) == (0o600, "adm")
    assert config.source == main
    assert config.sources == (main, first, second)
    assert config.origin("interval") == KeyOrigin(second, 1, "interval")
    assert config.origin("owners") == KeyOrigin(first, 2, "owners")


def test_ignore_rules_from_every_file_add_up(etc: Path) -> None:
    main = write(etc / "portwatchd.toml", "[[ignore]]\nport = 1\n")
    drop_in = write(etc / "portwatchd.d" / "50-ignore.toml", "\n[[ignore]]\nport = 2\n")
    config = load_config(main)
    assert [(rule.ports, rule.source, rule.line) for rule in config.ignore] == [
        (((1, 1),), main, 1),
        (((2, 2),), drop_in, 2),
    ]
    assert config.is_ignored(Endpoint("tcp", "ipv4", "0.0.0.0", 2))


def test_only_visible_toml_files_are_drop_ins(etc: Path) -> None:
    main = write(etc / "portwatchd.toml", "")
    for name in ("a.toml~", "b.conf", "c.toml.dpkg-old", ".d.toml", "README"):
        write(etc / "portwatchd.d" / name, "this is not TOML =")
    (etc / "portwatchd.d" / "e.toml.disabled").mkdir()
    assert load_config(main) == Config(source=main, sources=(main,))


def test_an_error_in_a_drop_in_names_the_drop_in_and_its_line(etc: Path) -> None:
    main = write(etc / "portwatchd.toml", "interval = 1\n")
    drop_in = write(etc / "portwatchd.d" / "10-x.toml", "# mine\n\ninterval = 0\n")
    with pytest.raises(ConfigError) as caught:
        load_config(main)
    assert str(caught.value) == (
        f"{drop_in}:3: interval: must be between 0.1 and 3600 seconds, got 0"
    )


def test_drop_ins_are_bounded_like_the_main_file(etc: Path) -> None:
    main = write(etc / "portwatchd.toml", "")
    (etc / "portwatchd.d").mkdir()
    fifo = etc / "portwatchd.d" / "10-fifo.toml"
    os.mkfifo(fifo)
    error, took = refusal(main)
    assert str(error) == (
        f"{fifo}: cannot read the configuration file: it is a FIFO (named pipe), not a regular file"
    )
    assert took < 0.5


def test_drop_ins_apply_when_the_default_file_is_absent(
    etc: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    main = str(etc / "portwatchd.toml")
    drop_in = write(etc / "portwatchd.d" / "10-x.toml", "interval = 7\n")
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATH", main)
    config = load_config(None)
    assert config.interval == 7.0
    assert (config.source, config.sources) == (None, (drop_in,))


def test_a_drop_in_path_that_is_a_file_is_an_error(etc: Path) -> None:
    main = write(etc / "portwatchd.toml", "")
    write(etc / "portwatchd.d", "interval = 2\n")
    with pytest.raises(ConfigError) as caught:
        load_config(main)
    assert str(caught.value) == (
        f"{etc}/portwatchd.d: cannot read the drop-in directory: Not a directory"
    )


def test_ring_size_in_a_drop_in_warns_with_the_drop_in_name(etc: Path) -> None:
    main = write(etc / "portwatchd.toml", "history_size = 100\n")
    drop_in = write(etc / "portwatchd.d" / "10-old.toml", "ring_size = 200\n")
    config = load_config(main)
    assert config.history_size == 200
    assert len(config.warnings) == 1
    assert config.warnings[0].startswith(f"{drop_in}:1: ring_size: is deprecated")


# -- every error at once -----------------------------------------------------------


def test_check_config_reports_every_error_of_every_file(etc: Path) -> None:
    main = write(
        etc / "portwatchd.toml",
        """\
        interval = 0
        backend = "ebpf"
        intervall = 2

        [socket]
        mode = 660
        max_clients = 0

        [[ignore]]
        port = 70000
        proto = "icmp"
        """,
    )
    broken = write(etc / "portwatchd.d" / "10-broken.toml", "owners = true\n[socket\n")
    later = write(etc / "portwatchd.d" / "20-later.toml", "log_format = 'xml'\n")
    errors = check_config(main, {"interval": 0, "socket_path": ""})
    assert [(error.source, error.line, error.key) for error in errors] == [
        (main, 1, "interval"),
        (main, 2, "backend"),
        (main, 3, "intervall"),
        (main, 6, "socket.mode"),
        (main, 7, "socket.max_clients"),
        (main, 10, "ignore[1].port"),
        (main, 11, "ignore[1].proto"),
        (broken, 2, None),  # a syntax error stops its own file only
        (later, 1, "log_format"),
        (None, None, "--interval"),
        (None, None, "--socket"),
    ]
    with pytest.raises(ConfigError) as caught:
        load_config(main)
    assert str(caught.value) == str(errors[0])


def test_check_config_of_a_good_configuration_is_empty(etc: Path) -> None:
    main = write(etc / "portwatchd.toml", "interval = 2\n")
    write(etc / "portwatchd.d" / "10-x.toml", "[[ignore]]\nport = 22\n")
    assert check_config(main) == []


def test_format_errors_lists_them_with_a_count(etc: Path) -> None:
    main = write(etc / "portwatchd.toml", "interval = 0\nowners = 1\n")
    text = format_errors(check_config(main))
    assert text == (
        f"{main}:1: interval: must be between 0.1 and 3600 seconds, got 0\n"
        f"{main}:2: owners: must be true or false, got integer 1\n"
        "2 errors"
    )
    assert format_errors([]) == "configuration OK"


# -- what the system must provide ------------------------------------------------


def absent_group() -> str:
    name = "pwtest-no-such-group"
    with pytest.raises(KeyError):
        grp.getgrnam(name)
    return name


def test_a_group_that_does_not_exist_is_reported_with_its_line(etc: Path) -> None:
    name = absent_group()
    main = write(etc / "portwatchd.toml", f"# who may ask\n[socket]\ngroup = '{name}'\n")
    write(etc / "portwatchd.d" / "10-x.toml", f"socket.path = '{etc}/c.sock'\n")
    config = load_config(main)
    assert [str(error) for error in environment_errors(config)] == [
        f'{main}:3: socket.group: no group "{name}" on this system; create it '
        f"(groupadd --system {name}) or name another group"
    ]
    assert [str(error) for error in check_config(main, environment=True)] == [
        str(error) for error in environment_errors(config)
    ]


def test_an_existing_group_and_a_gid_are_fine(tmp_path: Path) -> None:
    existing = grp.getgrgid(os.getgid()).gr_name
    for group in (existing, "4242", ""):
        config = Config(
            state_dir=str(tmp_path / "state"),
            socket=config_module.SocketConfig(path=f"{tmp_path}/c.sock", group=group),
        )
        assert environment_errors(config) == []


def test_a_socket_path_taken_by_a_file_is_reported(tmp_path: Path) -> None:
    taken = tmp_path / "control.sock"
    taken.write_text("")
    errors = environment_errors(
        Config(state_dir=str(tmp_path), socket=config_module.SocketConfig(path=str(taken)))
    )
    assert [error.message for error in errors] == [
        f"{taken} exists and is not a socket; remove it or choose another path"
    ]


def test_a_socket_directory_under_a_file_is_reported_with_the_option(tmp_path: Path) -> None:
    blocker = tmp_path / "run"
    blocker.write_text("")
    main = write(tmp_path / "portwatchd.toml", f"state_dir = '{tmp_path}'\n")
    config = load_config(main, {"socket_path": f"{blocker}/portwatchd/control.sock"})
    assert [str(error) for error in environment_errors(config)] == [
        f"--socket: {blocker} is not a directory, so {blocker}/portwatchd cannot be one"
    ]


def test_a_socket_directory_that_can_be_created_is_fine(tmp_path: Path) -> None:
    config = Config(
        state_dir=str(tmp_path / "state"),
        socket=config_module.SocketConfig(path=f"{tmp_path}/run/portwatchd/control.sock"),
    )
    assert environment_errors(config) == []
    assert not (tmp_path / "run").exists()  # looked, created nothing


def test_a_live_socket_at_the_path_is_fine(tmp_path: Path) -> None:
    path = tmp_path / "c.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        config = Config(state_dir=str(tmp_path), socket=config_module.SocketConfig(path=str(path)))
        assert environment_errors(config) == []


def test_a_state_dir_that_is_a_file_is_reported(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.write_text("")
    main = write(tmp_path / "portwatchd.toml", f"state_dir = '{state}'\n")
    config = load_config(main, {"socket_path": f"{tmp_path}/c.sock"})
    assert [str(error) for error in environment_errors(config)] == [
        f"{main}:1: state_dir: {state} is not a directory, so {state} cannot be one"
    ]


def test_an_unwritable_parent_is_reported_for_a_plain_user() -> None:
    # Root may create a directory anywhere: as root, ask as "nobody". The
    # top directory is open to all (pytest's tmp_path is private to root).
    with tempfile.TemporaryDirectory(prefix="pwenv-") as directory:
        os.chmod(directory, 0o755)
        locked = Path(directory) / "locked"
        locked.mkdir(mode=0o555)
        os.chmod(locked, 0o555)
        program = (
            "from portwatchd.config import Config, SocketConfig\n"
            "from portwatchd.config_env import environment_errors\n"
            f"config = Config(state_dir={directory!r}, "
            f"socket=SocketConfig(path={str(locked / 'run' / 'c.sock')!r}))\n"
            "print([error.message for error in environment_errors(config)])\n"
        )
        if os.geteuid() == 0:
            if shutil.which("setpriv") is None:
                pytest.skip("needs setpriv(1) to drop root")
            nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
            # A tree under root's 0700 home is out of nobody's reach: python_as
            # runs a readable copy of the package.
            result = python_as(nobody, "-c", program, timeout=60)
        else:
            result = subprocess.run(
                [sys.executable, "-c", program],
                cwd=REPO, capture_output=True, text=True, check=False, timeout=60,
            )  # fmt: skip
    expected = [f"{locked}/run does not exist and cannot be created: {locked} is not writable"]
    assert result.stdout.strip() == repr(expected), result.stderr
