"""portwatchctl against a real ControlServer on a real Unix socket.

Exit codes and permissions run portwatchctl as a subprocess (as a user
would, and as another user where it matters); formatting runs main()
in-process.
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import io
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portwatchd import ctl, ctl_parser, protocol
from portwatchd.ctl_format import Style
from portwatchd.model import EVENT_TYPES, Endpoint, Owner
from tests.control_fixtures import MemoryBackend, ServerThread, backend, serve
from tests.other_user import python_as

__all__ = ["backend", "serve"]  # fixtures shared with the control tests

REPO = Path(__file__).resolve().parent.parent


def run_ctl(
    *args: str, user: list[str] | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    if user:
        return python_as(user, "-m", "portwatchd.ctl", *args, env=env, timeout=60, check=False)
    command = [sys.executable, "-m", "portwatchd.ctl", *args]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        check=False,
    )


def as_nobody(*groups: int) -> list[str]:
    group_args = ["--groups", ",".join(map(str, groups))] if groups else ["--clear-groups"]
    return ["setpriv", "--reuid", "nobody", "--regid", "nogroup", *group_args]


def main_output(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = ctl.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --- exit codes -------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["launch"],
        ["events", "--type", "moved"],
        ["events", "--port", "70000"],
        ["events", "--limit", "0"],
        ["events", "--since", "yesterday-ish"],
        ["scan", "--backend", "ebpf"],
    ],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    result = run_ctl(*args)
    assert result.returncode == ctl.EXIT_USAGE, result
    assert "usage: portwatchctl" in result.stderr
    assert "Traceback" not in result.stderr


def test_no_daemon_exits_3_naming_the_socket(sockdir: str) -> None:
    path = os.path.join(sockdir, "absent.sock")
    result = run_ctl("--socket", path, "status")
    assert result.returncode == ctl.EXIT_UNREACHABLE
    assert result.stderr.strip() == (
        f"portwatchctl: Cannot connect to {path}: No such file or directory. "
        "Is portwatchd running? (systemctl status portwatchd)"
    )
    # The environment names the socket as well; a stale file is "refused".
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()
    result = run_ctl("status", env={"PORTWATCHD_SOCKET": path})
    assert result.returncode == ctl.EXIT_UNREACHABLE
    assert f"Cannot connect to {path}: Connection refused" in result.stderr


def test_daemon_error_exits_1(serve: Any, backend: MemoryBackend) -> None:
    server = serve()
    backend.fail_status = True
    result = run_ctl("--socket", server.path, "status")
    assert result.returncode == ctl.EXIT_DAEMON_ERROR
    assert "status exploded (internal)" in result.stderr
    assert "Traceback" not in result.stderr


def test_socket_option_after_the_command(serve: Any) -> None:
    server = serve()
    result = run_ctl("status", "--socket", server.path)
    assert result.returncode == 0, result.stderr


def test_version_mismatch_is_refused_clearly(sockdir: str, capsys: Any) -> None:
    path = os.path.join(sockdir, "v2.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen()

    def future_daemon() -> None:
        connection, _ = listener.accept()
        with connection, connection.makefile("rb") as stream:
            stream.readline()
            reply = {"v": 2, "ok": True, "status": {"version": "9.0"}}
            connection.sendall(json.dumps(reply).encode() + b"\n")

    thread = threading.Thread(target=future_daemon, daemon=True)
    thread.start()
    try:
        code, out, err = main_output(capsys, "--socket", path, "status")
    finally:
        thread.join(timeout=10)
        listener.close()
    assert code == ctl.EXIT_DAEMON_ERROR
    assert out == ""
    assert err == "portwatchctl: portwatchd speaks protocol 2, this portwatchctl speaks 1\n"


# --- permissions ------------------------------------------------------------


def _needs_root_and_setpriv() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run portwatchctl as another user")
    if subprocess.run(["setpriv", "--version"], capture_output=True, check=False).returncode:
        pytest.skip("setpriv is not available")


def test_outsider_gets_exit_4_naming_the_group(sockdir: str, backend: MemoryBackend) -> None:
    _needs_root_and_setpriv()
    server = ServerThread(backend, os.path.join(sockdir, "c.sock"), group="adm").start()
    try:
        result = run_ctl("--socket", server.path, "status", user=as_nobody())
        assert result.returncode == ctl.EXIT_DENIED, result
        assert result.stderr.strip() == (
            f"portwatchctl: Permission denied on {server.path}: members of group 'adm' may "
            "query; ask an administrator to add you (usermod -aG adm USER)"
        )
        member = as_nobody(grp.getgrnam("adm").gr_gid)
        result = run_ctl("--socket", server.path, "status", "--json", user=member)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["events_total"] == 0
        # A member may query, but not make the daemon act.
        result = run_ctl("--socket", server.path, "rescan", user=member)
        assert result.returncode == ctl.EXIT_DENIED
        assert "only root may ask (permission_denied)" in result.stderr
        assert backend.rescans == 0
    finally:
        server.stop()


def test_root_may_rescan(serve: Any, backend: MemoryBackend) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    server = serve()
    result = run_ctl("--socket", server.path, "rescan")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert backend.rescans == 1


# --- output -----------------------------------------------------------------


def test_events_json_one_object_per_line_with_filters(
    serve: Any, backend: MemoryBackend, capsys: Any
) -> None:
    backend.add(4, type="opened", proto="tcp", port=22)
    backend.add(4, type="closed", proto="udp", port=53)
    server = serve()
    code, out, _ = main_output(capsys, "--socket", server.path, "events", "--json")
    assert code == 0
    lines = out.splitlines()
    assert [json.loads(line)["seq"] for line in lines] == list(range(1, 9))

    def seqs(*filters: str) -> list[int]:
        code, out, _ = main_output(capsys, "--socket", server.path, "events", "--json", *filters)
        assert code == 0
        return [json.loads(line)["seq"] for line in out.splitlines()]

    assert seqs("--type", "closed") == [5, 6, 7, 8]
    assert seqs("--proto", "tcp") == [1, 2, 3, 4]
    assert seqs("--port", "53", "--limit", "2") == [7, 8]
    assert seqs("--after-seq", "2", "--limit", "2") == [3, 4]
    assert seqs("--since", "2026-11-25T14:00:06Z") == [6, 7, 8]
    assert seqs("--since", "2026-11-25T14:00:07+00:00") == [7, 8]


def test_since_accepts_durations_and_iso_times(monkeypatch: pytest.MonkeyPatch) -> None:
    now = 1_795_615_200.0  # 2026-11-25T14:00:00Z
    parse = ctl_parser.parse_time_argument
    assert parse("10m", now=now) == "2026-11-25T13:50:00.000000Z"
    assert parse("2h", now=now) == "2026-11-25T12:00:00.000000Z"
    assert parse("1d", now=now) == "2026-11-24T14:00:00.000000Z"
    assert parse("30s", now=now) == "2026-11-25T13:59:30.000000Z"
    assert parse("2026-11-25T15:00:00+01:00") == "2026-11-25T14:00:00.000000Z"
    monkeypatch.setenv("TZ", "Europe/Berlin")  # a time without zone is local time
    time.tzset()
    try:
        assert parse("2026-11-25 15:00") == "2026-11-25T14:00:00.000000Z"
    finally:
        monkeypatch.undo()
        time.tzset()
    with pytest.raises(argparse.ArgumentTypeError, match="neither a duration"):
        parse("soon")


def test_events_human_table(serve: Any, backend: MemoryBackend, capsys: Any) -> None:
    backend.add(2, port=22)
    server = serve()
    code, out, _ = main_output(capsys, "--socket", server.path, "events")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == [
        "SEQ", "TIME", "TYPE", "PROTO", "ADDRESS", "PORT", "WHERE", "PID", "PROCESS", "UNIT",
    ]  # fmt: skip
    assert "\033[" not in out  # not a terminal: no colour
    first = lines[1].split()
    assert first[0] == "1" and first[3] == "UTC" and first[4:] == [
        "opened", "tcp", "127.0.0.1", "22", "host", "101", "sshd", "ssh.service",
    ]  # fmt: skip
    # Columns line up: every row has its TYPE where the header has it.
    column = lines[0].index("TYPE")
    assert all(line[column:].startswith("opened") for line in lines[1:])
    code, out, err = main_output(capsys, "--socket", server.path, "events", "--port", "9")
    assert (code, out, err) == (0, "", "No events.\n")


def test_colour_only_on_a_terminal_without_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal:
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    assert Style(Terminal()).event_type("opened") == "\033[32mopened\033[0m"  # type: ignore[arg-type]
    monkeypatch.setenv("NO_COLOR", "1")
    assert Style(Terminal()).event_type("opened") == "opened"  # type: ignore[arg-type]


def test_ports_table_and_json(serve: Any, backend: MemoryBackend, capsys: Any) -> None:
    backend.ports = [
        (
            Endpoint(proto="tcp", family="ipv4", address="0.0.0.0", port=22, inode=11, uid=0),
            Owner(pid=700, pids=(700,), comm="sshd", exe="/usr/sbin/sshd", unit="ssh.service"),
        ),
        (
            Endpoint(proto="udp", family="ipv6", address="fe80::1", port=546, interface="eth0"),
            Owner(),
        ),
    ]
    server = serve()
    code, out, _ = main_output(capsys, "--socket", server.path, "ports", "--json")
    assert code == 0
    records = json.loads(out)
    assert records[0] == {
        "key": "tcp:0.0.0.0:22", "proto": "tcp", "family": "ipv4", "address": "0.0.0.0",
        "port": 22, "interface": "", "v6only": None, "inode": 11, "uid": 0,
        "pid": 700, "comm": "sshd", "exe": "/usr/sbin/sshd", "unit": "ssh.service",
        "netns": 0, "netns_inode": 0, "netns_name": None, "scope": "host", "container": None,
        "container_runtime": None, "exposure": None, "expected": None,
        "pids": [700], "cmdline": None, "user": None, "cgroup": None,
    }  # fmt: skip
    assert records[1]["key"] == "udp:[fe80::1%eth0]:546" and records[1]["pid"] is None
    code, out, _ = main_output(capsys, "--socket", server.path, "ports")
    lines = out.splitlines()
    assert lines[0].split() == [
        "PROTO", "ADDRESS", "PORT", "EXPOSURE", "WHERE", "PID", "PROCESS", "UNIT",
    ]  # fmt: skip
    assert lines[1].split() == ["tcp", "0.0.0.0", "22", "-", "host", "700", "sshd", "ssh.service"]
    assert lines[2].split() == ["udp", "fe80::1%eth0", "546", "-", "host", "-", "-", "-"]


def test_status_human_and_json(serve: Any, backend: MemoryBackend, capsys: Any) -> None:
    backend.add(3)
    server = serve()
    code, out, _ = main_output(capsys, "--socket", server.path, "status", "--json")
    assert code == 0
    status = json.loads(out)
    assert status["events_total"] == 3 and status["ring_capacity"] == 1000
    code, out, _ = main_output(capsys, "--socket", server.path, "status")
    assert code == 0
    assert "Uptime: 1h 2min 3s" in out
    assert "Ring: 3 of 1000" in out
    assert "Last reload: never" in out


def test_status_client_imports_no_asyncio(serve: Any) -> None:
    server = serve()
    code = (
        "import sys; from portwatchd import ctl; "
        f"rc = ctl.main(['--socket', {server.path!r}, 'status']); "
        "heavy = [m for m in ('asyncio', 'dataclasses', 'socket', 'portwatchd.model') "
        "if m in sys.modules]; "
        "print('HEAVY', rc, heavy)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert "HEAVY 0 []" in result.stdout


# --- follow -----------------------------------------------------------------


class LineReader:
    """Lines from a pipe, with a timeout so that a broken test fails, not hangs."""

    def __init__(self, pipe: Any) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, args=(pipe,), daemon=True).start()

    def _pump(self, pipe: Any) -> None:
        for line in pipe:
            self.lines.put(line)

    def next(self) -> str:
        return self.lines.get(timeout=20)


@pytest.fixture
def follower_process(sockdir: str) -> Iterator[list[subprocess.Popen[str]]]:
    processes: list[subprocess.Popen[str]] = []
    yield processes
    for process in processes:
        process.kill()
        process.wait()


def test_follow_survives_daemon_restart_and_exits_0_on_ctrl_c(
    sockdir: str, follower_process: list[subprocess.Popen[str]]
) -> None:
    path = os.path.join(sockdir, "c.sock")
    first = MemoryBackend()
    first.add(3)
    daemon = ServerThread(first, path).start()
    process = subprocess.Popen(
        [sys.executable, "-m", "portwatchd.ctl", "--socket", path, "events", "--follow", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    follower_process.append(process)
    out = LineReader(process.stdout)
    err = LineReader(process.stderr)
    seqs = [json.loads(out.next())["seq"] for _ in range(3)]  # the backlog
    daemon.add_and_publish(2)
    seqs += [json.loads(out.next())["seq"] for _ in range(2)]  # live
    daemon.stop()

    # The daemon comes back with its persisted history and two events seen
    # while it was down; the follower resumes after the last seq it printed.
    second = MemoryBackend()
    second.ring.extend(first.ring.events())
    second.add(2)
    assert err.next() == "portwatchd restarted; reconnecting...\n"
    daemon = ServerThread(second, path).start()
    try:
        seqs += [json.loads(out.next())["seq"] for _ in range(2)]
        daemon.add_and_publish(1)
        seqs += [json.loads(out.next())["seq"]]
        assert seqs == [1, 2, 3, 4, 5, 6, 7, 8]
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
    finally:
        daemon.stop()
    remaining = ""
    while not err.lines.empty():
        remaining += err.next()
    assert "Traceback" not in remaining


def test_follow_human_output_streams_rows(
    serve: Any, backend: MemoryBackend, follower_process: list[subprocess.Popen[str]]
) -> None:
    backend.add(12)
    server = serve()
    process = subprocess.Popen(
        [sys.executable, "-m", "portwatchd.ctl", "--socket", server.path, "events", "-f"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        env={**os.environ, "TZ": "UTC"},
    )  # fmt: skip
    follower_process.append(process)
    out = LineReader(process.stdout)
    assert out.next().split()[0] == "SEQ"
    # Like journalctl -f: the last ten, then what happens next.
    assert [int(out.next().split()[0]) for _ in range(10)] == list(range(3, 13))
    server.add_and_publish(1, type="closed")
    row = out.next().split()
    assert row[:5] == ["13", "2026-11-25", "14:00:13", "UTC", "closed"]
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=10) == 0


def test_follow_overrun_reconnects_and_resumes(serve: Any, backend: MemoryBackend) -> None:
    server = serve(follow_queue=4)
    process = subprocess.Popen(
        [sys.executable, "-m", "portwatchd.ctl", "--socket", server.path, "events", "-f", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    try:
        out = LineReader(process.stdout)
        err = LineReader(process.stderr)
        for _ in range(200):  # wait until it follows
            if server.run(lambda: server.followers):
                break
            threading.Event().wait(0.02)
        server.add_and_publish(50)  # one batch larger than its queue: cut off
        assert "follow_overrun" in err.next()
        seqs = [json.loads(out.next())["seq"] for _ in range(50)]
        assert seqs == list(range(1, 51))  # the ring filled in what the cut dropped
    finally:
        process.kill()
        process.wait()


# --- scan, without a daemon ---------------------------------------------------


def test_scan_json_shows_our_listener_with_pid(netns: None) -> None:
    pytest.importorskip("portwatchd.sources.owners")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        result = run_ctl("scan", "--json")
        assert result.returncode == 0, result.stderr
        records = json.loads(result.stdout)
        mine = [r for r in records if r["port"] == port and r["proto"] == "tcp"]
        assert len(mine) == 1
        assert mine[0]["pid"] == os.getpid()
        assert mine[0]["address"] == "127.0.0.1"
        assert mine[0]["key"] == f"tcp:127.0.0.1:{port}"
        human = run_ctl("scan", "--backend", "proc")
        assert human.returncode == 0, human.stderr
        assert human.stdout.splitlines()[0].split() == [
            "PROTO", "ADDRESS", "PORT", "PID", "PROCESS", "UNIT",
        ]  # fmt: skip
        assert any(line.split()[:4] == ["tcp", "127.0.0.1", str(port), str(os.getpid())]
                   for line in human.stdout.splitlines())  # fmt: skip


def test_version_option() -> None:
    result = run_ctl("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("portwatchctl ")
    assert f"(protocol {protocol.PROTOCOL_VERSION})" in result.stdout


# --- the man page and the completion know every option ------------------------


def _options_by_command() -> dict[str, set[str]]:
    parser = ctl.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    result = {"": {o for a in parser._actions for o in a.option_strings if o.startswith("--")}}
    for name, sub in commands.choices.items():
        result[name] = {o for a in sub._actions for o in a.option_strings if o.startswith("--")}
    return result


def test_man_page_documents_every_command_and_option() -> None:
    page = (REPO / "man" / "portwatchctl.1").read_text().replace("\\-", "-")
    for command, options in _options_by_command().items():
        if command:
            assert f".B {command}" in page or f"B portwatchctl {command}" in page, command
        for option in options - {"--help"}:
            assert option in page, option
    codes = (ctl.EXIT_DAEMON_ERROR, ctl.EXIT_USAGE, ctl.EXIT_UNREACHABLE, ctl.EXIT_DENIED)
    for code in (*codes, ctl.EXIT_CONFIG_ERROR):
        assert f".B {code}\n" in page
    assert "PORTWATCHD_SOCKET" in page and "NO_COLOR" in page


def test_bash_completion_offers_every_command_and_option() -> None:
    bash_completion = Path("/usr/share/bash-completion/bash_completion")
    if not bash_completion.exists():
        pytest.skip("bash-completion is not installed")
    script = (
        f"source {bash_completion}; source {REPO / 'completion' / 'portwatchctl'}; "
        'COMP_WORDS=("$@"); COMP_CWORD=$((${#COMP_WORDS[@]}-1)); '
        'COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}; _portwatchctl; '
        'echo "${COMPREPLY[*]}"'
    )

    def complete(*words: str) -> set[str]:
        result = subprocess.run(
            ["bash", "-c", script, "bash", "portwatchctl", *words],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        return set(result.stdout.split())

    options = _options_by_command()
    assert complete("") == set(ctl.COMMANDS)
    assert complete("--") == options[""]
    for command in ctl.COMMANDS:
        assert complete(command, "--") == options[command], command
        assert complete("--socket", "/tmp/x", command, "--") == options[command], command
    assert complete("events", "--type", "") == set(EVENT_TYPES)
    assert complete("events", "--proto", "") == {"tcp", "udp"}
    assert complete("scan", "--backend", "") == {"auto", "netlink", "proc"}


def test_status_lines_label_every_field_the_daemon_sends() -> None:
    from portwatchd.ctl_status import status_lines

    status = {
        "version": "0.1.0", "pid": 7, "uptime_s": 65.0, "interval_s": 1.0,
        "backend": "netlink", "owners": True, "ports_watched": 2, "events_total": 3,
        "events_last_hour": 3, "last_seq": 3, "ring_size": 3, "ring_capacity": 1000,
        "last_scan_time": "2026-11-25T15:19:34.425411Z", "last_scan_duration_ms": 0.424,
        "scan_error": None, "journal_error": None, "config_path": None,
        "state_dir": "/var/lib/portwatchd", "last_reload": None, "protocol": 1,
        "clients": 1, "followers": 0,
    }  # fmt: skip
    pairs = dict(status_lines(status))
    assert all(label[0].isupper() for label in pairs), pairs
    assert pairs["Config"] == "built-in defaults"
    assert pairs["Last reload"] == "never"
    assert pairs["Owner lookup"] == "on"
    failing = dict(status_lines({**status, "scan_error": "netlink: EPERM"}))
    assert failing["Scan FAILING"] == "netlink: EPERM"


# --- the fast reading of simple command lines ----------------------------------

_WORDS = [
    *("--socket", "--socket=/s", "/x", "-x", "status", "ports", "reload", "events", "rescan"),
    *("--json", "--local", "--no-legend", "--js", "-h", "--help", "--", "-f", "--since"),
    *("expect", "--suggest", "--host-only", "--unexpected", "--netns", "--container"),
]


def _argparse_reading(words: list[str]) -> dict[str, Any] | None:
    try:
        args = ctl_parser.parse(
            words, ctl._help_texts(), ctl.FLAGS, ctl.EXIT_STATUS_TEXT, ctl.Args()
        )
    except SystemExit:
        return None
    return vars(args)


@given(st.lists(st.sampled_from(_WORDS), max_size=6))
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_fast_reading_agrees_with_argparse(words: list[str]) -> None:
    fast = ctl.fast_parse(words)
    if fast is None:
        return  # argparse reads it
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert vars(fast) == _argparse_reading(words)


def test_fast_reading_takes_the_simple_lines_only() -> None:
    fast = ctl.fast_parse(["--socket", "/s", "status", "--json"])
    assert fast is not None and vars(fast) == {
        "socket": "/s", "command": "status", "json": True, "local": False,
    }  # fmt: skip
    for words in (["status", "--help"], ["status", "--js"], ["events"], ["--socket"], []):
        assert ctl.fast_parse(words) is None, words
