"""reload, metrics, and the exit codes of a busy daemon or a broken configuration.

Against the stand-in daemon of tests/fake_daemon.py on a real Unix socket;
`reload` also as a subprocess, the way systemd's ExecReload= runs it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from portwatchd import __version__, ctl
from tests.fake_daemon import FakeDaemon

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def fake() -> Iterator[FakeDaemon]:
    directory = tempfile.mkdtemp(prefix="pwctl-", dir="/tmp")
    daemon = FakeDaemon(os.path.join(directory, "d.sock")).start()
    yield daemon
    daemon.stop()
    os.rmdir(directory)


def run(capsys: pytest.CaptureFixture[str], fake: FakeDaemon, *args: str) -> tuple[int, str, str]:
    code = ctl.main(["--socket", fake.path, *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_reload_applied_exits_0_quietly(fake: FakeDaemon) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "portwatchd.ctl", "--socket", fake.path, "reload"],
        capture_output=True, text=True, cwd=REPO, check=False, timeout=60,
    )  # fmt: skip
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert fake.requests == [{"v": 1, "req": "reload"}]


def test_refused_reload_exits_5_with_the_reason(
    fake: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.reload = {
        "outcome": "refused",
        "error": "/etc/portwatchd/portwatchd.toml:7: socket.group: no group 'wheel'",
        "not_applied": [],
    }
    code, out, err = run(capsys, fake, "reload")
    assert (code, out) == (ctl.EXIT_CONFIG_ERROR, "")
    assert err == (
        "portwatchctl: portwatchd refused the reload: /etc/portwatchd/portwatchd.toml:7: "
        "socket.group: no group 'wheel'; it runs on with its previous configuration\n"
    )


def test_partial_reload_exits_1_naming_what_did_not_apply(
    fake: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.reload = {
        "outcome": "partial",
        "error": "cannot bind /run/portwatchd/new.sock: Permission denied",
        "not_applied": ["socket.path"],
    }
    code, _, err = run(capsys, fake, "reload")
    assert code == ctl.EXIT_DAEMON_ERROR
    assert err == (
        "portwatchctl: portwatchd applied the reload only in part: cannot bind "
        "/run/portwatchd/new.sock: Permission denied (not applied: socket.path)\n"
    )


def test_reload_by_a_member_is_denied_with_exit_4(
    fake: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.error = ("permission_denied", "only root may ask")
    code, _, err = run(capsys, fake, "reload")
    assert code == ctl.EXIT_DENIED
    assert err == "portwatchctl: portwatchd: only root may ask (permission_denied)\n"


def test_an_older_daemon_without_reload_is_named(
    fake: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.error = ("unknown_request", "unknown request 'reload'")
    code, _, err = run(capsys, fake, "reload")
    assert code == ctl.EXIT_DAEMON_ERROR
    assert "unknown request 'reload'; this portwatchd is older than portwatchctl" in err


def test_metrics_prints_the_text_as_it_came(
    fake: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.metrics = '# TYPE portwatchd_ports gauge\nportwatchd_ports{proto="tcp"} 3\n'
    code, out, err = run(capsys, fake, "metrics")
    assert (code, out, err) == (0, fake.metrics, "")
    assert fake.requests == [{"v": 1, "req": "metrics"}]


def test_busy_daemon_exits_3_with_its_reason(fake: FakeDaemon) -> None:
    # The daemon refuses before reading the request: the client's send may
    # fail (EPIPE), and the reason must still be read and shown.
    fake.busy = "too many connections from uid 1000 (8 of 64)"
    for command in ("status", "events", "reload"):
        result = subprocess.run(
            [sys.executable, "-m", "portwatchd.ctl", "--socket", fake.path, command],
            capture_output=True, text=True, cwd=REPO, check=False, timeout=60,
        )  # fmt: skip
        assert result.returncode == ctl.EXIT_UNREACHABLE, result
        assert result.stderr == (
            "portwatchctl: portwatchd is busy: too many connections from uid 1000 "
            "(8 of 64); try again\n"
        )


def test_broken_configuration_exits_5_with_file_line_and_key(
    fake: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    message = "/etc/portwatchd/portwatchd.d/10-local.toml:3: interval: must be > 0, got -1"
    fake.error = ("config_error", message)
    for command in ("status", "events", "ports", "metrics"):
        code, out, err = run(capsys, fake, command)
        assert (code, out) == (ctl.EXIT_CONFIG_ERROR, ""), command
        assert err == f"portwatchctl: portwatchd runs with a broken configuration: {message}\n"


def test_status_shows_times_with_their_zone_and_failures(
    fake: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.status = {
        "version": "0.2.0",
        "last_scan_time": "2026-11-30T10:00:01.500000Z",
        "store_error": "/var/lib/portwatchd/events.db: disk I/O error",
        "last_reload": {
            "time": "2026-11-30T09:00:00.000000Z",
            "outcome": "partial",
            "error": "[socket]: cannot listen on /x.sock: no such group",
            "not_applied": ["[socket]: cannot listen on /x.sock: no such group"],
        },
    }
    code, out, _ = run(capsys, fake, "status")
    assert code == 0
    lines = {line.split(": ", 1)[0].strip(): line.split(": ", 1)[1] for line in out.splitlines()}
    assert lines["Last scan"] == "2026-11-30 10:00:01 UTC"
    assert lines["Store FAILING"] == "/var/lib/portwatchd/events.db: disk I/O error"
    assert lines["Last reload"] == (
        "2026-11-30 09:00:00 UTC, PARTIAL: not applied: [socket]: cannot listen on /x.sock:"
        " no such group"
    )


def test_version_needs_no_package_metadata() -> None:
    code = (
        "import sys; from portwatchd.ctl import main\n"
        "try:\n    main(['--version'])\nexcept SystemExit:\n    pass\n"
        "print('METADATA', 'importlib.metadata' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert result.stdout.splitlines() == [
        f"portwatchctl {__version__} (protocol 1)",
        "METADATA False",
    ]


def test_status_imports_nothing_it_does_not_need(fake: FakeDaemon) -> None:
    code = (
        f"import sys; sys.path.insert(0, {str(REPO)!r}); from portwatchd.ctl import main; "
        f"rc = main(['--socket', {fake.path!r}, 'status']); "
        "heavy = sorted(m for m in ('asyncio', 'dataclasses', 'datetime', 'socket', 'shutil', "
        "'importlib.metadata', 'portwatchd.model', 'portwatchd.ctl_events', 'argparse', "
        "'gettext', 'locale', 'portwatchd.ctl_parser', "
        "'portwatchd.ctl_time') if m in sys.modules); "
        "print('HEAVY', rc, heavy)"
    )
    result = subprocess.run(
        [sys.executable, "-I", "-c", code],
        capture_output=True, text=True, check=True, cwd="/",
    )  # fmt: skip
    assert "HEAVY 0 []" in result.stdout, result
