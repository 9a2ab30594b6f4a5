"""The daemon under stress, as issue 9 tried it: a full state directory and
a kill -9, a history of a million events, config files that are not config
files, a storm of SIGHUPs, slow clients of another user, a stalled stderr.

Each runs the real daemon (tests/daemon_harness.py) in a private network
namespace, with a real NOTIFY_SOCKET, and asserts what a user sees: stderr
lines, sd_notify messages, control-socket answers, exit codes.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.daemon_harness import Daemon, listen_tcp, tcp_key
from tests.history_file import build_journaled_history
from tests.mountns import mountns_unavailable_reason
from tests.other_user import BASE_PYTHON

# Linux's default pipe buffer is 64 KiB in 16 pages; lines of ~460 bytes
# fill it at ~59,000 bytes (a line that does not fit a page's rest takes a new page).
PIPE_FULL = 48 * 1024


def ask(path: str, req: str, timeout: float = 5.0, **args: Any) -> dict[str, Any]:
    """One request line over the control socket, one reply line back."""
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(timeout)
        client.connect(path)
        client.sendall(json.dumps({"v": 1, "req": req, **args}).encode() + b"\n")
        reply: dict[str, Any] = json.loads(client.makefile().readline())
    return reply


def timed_status(path: str) -> tuple[float, dict[str, Any]]:
    began = time.monotonic()
    reply = ask(path, "status")
    return time.monotonic() - began, reply


def stderr_records(lines: list[str]) -> list[dict[str, Any]]:
    records = []
    for line in lines:
        with contextlib.suppress(ValueError):
            records.append(json.loads(line))
    return records


@contextlib.contextmanager
def more_open_files(count: int) -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < count + 200:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is too low for {count} sockets")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, count + 200), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# -- 1. a full state directory, kill -9, restart ------------------------------


class MountNamespace:
    """A process holding a private mount namespace; the daemon and the
    commands that fill and free its tmpfs enter it with nsenter.

    Not tests/mountns.py's private_mounts(): unshare(CLONE_NEWNS) refuses a
    multi-threaded process, and the daemon harness leaves reader threads.
    """

    def __init__(self) -> None:
        self.holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sleep", "600"]
        )
        self.prefix = ("nsenter", f"--target={self.holder.pid}", "--mount", "--")
        # The holder has entered its namespace once its mount namespace differs from ours.
        ours = os.readlink("/proc/self/ns/mnt")
        deadline = time.monotonic() + 5
        while os.readlink(f"/proc/{self.holder.pid}/ns/mnt") == ours:
            assert time.monotonic() < deadline, "unshare --mount did not start"
            time.sleep(0.01)

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.prefix, *command], capture_output=True, text=True, check=check, timeout=30
        )

    def close(self) -> None:
        self.holder.kill()
        self.holder.wait()


@pytest.fixture
def mount_namespace(netns: None) -> Iterator[MountNamespace]:
    reason = mountns_unavailable_reason() or (
        None if shutil.which("nsenter") else "needs nsenter(1)"
    )
    if reason:
        pytest.skip(reason)
    namespace = MountNamespace()
    yield namespace
    namespace.close()


def open_and_close_in_bursts(d: Daemon, count: int, burst: int) -> None:
    listeners = []
    for _ in range(0, count, burst):
        batch = [listen_tcp() for _ in range(burst)]
        listeners += batch
        d.wait_events("opened", {tcp_key(s) for s in batch})
    for start in range(0, count, burst):
        batch = listeners[start : start + burst]
        keys = {tcp_key(s) for s in batch}
        for sock in batch:
            sock.close()
        d.wait_events("closed", keys)


def wait_for_store_error(path: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status: dict[str, Any] = ask(path, "status")["status"]
        if status["store_error"] or time.monotonic() > deadline:
            return status
        time.sleep(0.2)


@pytest.mark.parametrize(
    "stored_first",
    [pytest.param(False, id="full-from-the-start"),
     pytest.param(True, id="full-after-one-stored-event")],
)  # fmt: skip
def test_full_state_dir_and_kill9_never_reuse_a_seq_and_announce_the_gap(
    mount_namespace: MountNamespace, stored_first: bool
) -> None:
    d = Daemon(command_prefix=mount_namespace.prefix)
    kept: socket.socket | None = None
    try:
        os.makedirs(d.state_dir)
        mount_namespace.run(
            "mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", d.state_dir
        )
        d.start().wait_ready()
        if stored_first:
            kept = listen_tcp()
            d.wait_event("opened", tcp_key(kept))
            # Stored before it is printed: the store has reserved seqs ahead.
            assert ask(d.socket_path, "status")["status"]["store_error"] is None
        filler = os.path.join(d.state_dir, "filler")
        full = mount_namespace.run("dd", "if=/dev/zero", f"of={filler}", "bs=4096", check=False)
        assert "No space left on device" in full.stderr, full.stderr
        open_and_close_in_bursts(d, 150, burst=50)  # 300 changes
        status = wait_for_store_error(d.socket_path)
        assert status["store_error"], status
        d.kill9()
        time.sleep(0.5)  # the reader thread reaches the end of the killed run's stderr
        first_run = stderr_records(d.stderr_text)

        mount_namespace.run("rm", filler)
        d.start().wait_ready()
        with listen_tcp() as after_restart:
            new = d.wait_event("opened", tcp_key(after_restart))
        losses_reply = ask(d.socket_path, "events")
        ctl = subprocess.run(
            [sys.executable, "-m", "portwatchd.ctl", "--socket", d.socket_path, "events"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        second_run = stderr_records(d.stderr_text)[len(first_run) :]
    finally:
        if kept is not None:
            kept.close()
        d.close()

    first_events = [r["event"] for r in first_run if "event" in r]
    second_events = [r["event"] for r in second_run if "event" in r]
    assert len([e for e in first_events if e["type"] in ("opened", "closed")]) >= 300
    ids_by_seq: dict[int, set[str]] = {}
    for event in first_events + second_events:
        ids_by_seq.setdefault(event["seq"], set()).add(event["id"])
    assert {seq: ids for seq, ids in ids_by_seq.items() if len(ids) > 1} == {}
    first_last = max(e["seq"] for e in first_events)
    assert new["seq"] > first_last
    assert all(e["seq"] > first_last for e in second_events), second_events
    # The gap: the seqs the first run sent but never stored are announced.
    announced = [r["loss"] for r in second_run if "loss" in r]
    assert any(loss["from_seq"] <= first_last <= loss["to_seq"] for loss in announced), announced
    listed = losses_reply.get("losses", [])
    assert any(loss["from_seq"] <= first_last <= loss["to_seq"] for loss in listed), losses_reply
    assert ctl.returncode == 0, ctl.stderr
    assert listed[0]["reason"].rstrip(".") in ctl.stdout + ctl.stderr


# -- 2. a history of a million events ------------------------------------------

HISTORY_EVENTS = 1_000_000


@pytest.fixture
def daemon_with_history(netns: None) -> Iterator[Daemon]:
    """A daemon not started yet, its state dir holding HISTORY_EVENTS events."""
    d = Daemon(config=f"history_size = {HISTORY_EVENTS}\n")
    try:
        build_journaled_history(d.state_dir, HISTORY_EVENTS)
        yield d
    finally:
        d.close()


def test_a_million_events_of_history_start_detect_and_answer_quickly(
    daemon_with_history: Daemon,
) -> None:
    d = daemon_with_history
    began = time.monotonic()
    d.start()
    d.wait_ready(timeout=10)
    ready_s = time.monotonic() - began
    with listen_tcp() as sock:
        opened_at = time.monotonic()
        opened = d.wait_event("opened", tcp_key(sock), timeout=10)
        detected_s = time.monotonic() - opened_at
    status_s, reply = timed_status(d.socket_path)
    newest = ask(d.socket_path, "events", limit=50)["events"]
    assert ready_s <= 2.0, f"READY after {ready_s:.2f} s"
    assert detected_s <= 2.0, f"new port reported after {detected_s:.2f} s"
    assert opened["seq"] > HISTORY_EVENTS
    assert status_s < 1.0, f"status answered after {status_s:.2f} s"
    assert reply["status"]["history_size"] >= HISTORY_EVENTS
    seqs = [event["seq"] for event in newest]
    assert seqs == list(range(seqs[0], seqs[0] + 50)) and opened["seq"] in seqs
    assert newest[0]["owner"]["comm"] == "server"  # from the history built before the start


# -- 3. config files that are not config files ----------------------------------


def not_a_config(kind: str, where: str) -> tuple[str, str]:
    """A path that must be refused, and the words of the reason."""
    if kind == "fifo":
        path = os.path.join(where, "fifo")
        os.mkfifo(path)
        return path, "a FIFO (named pipe), not a regular file"
    if kind == "dev_zero":
        return "/dev/zero", "a character device, not a regular file"
    path = os.path.join(where, "big.toml")
    with open(path, "w") as f:
        f.write("# padding\n" * (2 * 1024 * 1024 // 10 + 1))
    return path, "over the limit of 1,048,576 bytes (1 MiB)"


def point_config_at(d: Daemon, target: str) -> None:
    link = d.config_path + ".new"
    os.symlink(target, link)
    os.replace(link, d.config_path)


@pytest.mark.parametrize("kind", ["fifo", "dev_zero", "two_mib"])
def test_a_config_that_is_not_a_small_file_is_refused_at_start(netns: None, kind: str) -> None:
    d = Daemon()
    try:
        target, reason = not_a_config(kind, d.dir)
        point_config_at(d, target)
        began = time.monotonic()
        d.start()
        code = d.wait_exit(timeout=10)
        exited_s = time.monotonic() - began
        deadline = time.monotonic() + 2
        while reason not in d.stderr() and time.monotonic() < deadline:
            time.sleep(0.05)  # the reader thread may still be reading
        message = d.stderr()
    finally:
        d.close()
    assert code == 78, message
    assert exited_s <= 2.0, f"exited after {exited_s:.2f} s"
    assert d.config_path in message and reason in message, message


@pytest.mark.parametrize("kind", ["fifo", "dev_zero", "two_mib"])
def test_a_config_that_is_not_a_small_file_is_refused_at_reload(netns: None, kind: str) -> None:
    d = Daemon()
    try:
        d.start().wait_ready()
        if kind == "two_mib":
            d.write_config("# padding\n" * (2 * 1024 * 1024 // 10 + 1))
            reason = "over the limit of 1,048,576 bytes (1 MiB)"
        else:
            target, reason = not_a_config(kind, d.dir)
            point_config_at(d, target)
        began = time.monotonic()
        d.signal(signal.SIGHUP)
        ready = d.wait_ready(timeout=5)
        reloaded_s = time.monotonic() - began
        reply = ask(d.socket_path, "status")
        assert d.proc is not None and d.proc.poll() is None
    finally:
        d.close()
    assert reloaded_s <= 2.0, f"reload took {reloaded_s:.2f} s"
    assert "reload refused" in ready and reason in ready, ready
    last_reload = reply["status"]["last_reload"]
    assert (last_reload["ok"], last_reload["outcome"]) == (False, "refused"), last_reload
    assert d.config_path in last_reload["error"] and reason in last_reload["error"]


# -- 4. a storm of SIGHUPs --------------------------------------------------------


def test_a_thousand_sighups_are_a_few_reloads_and_the_daemon_answers(netns: None) -> None:
    # 1 ms apart, as the burst (1,000 in 1.3 s): sent back to back
    # they would all land before the daemon runs, and the kernel, which
    # keeps one pending SIGHUP, would merge them for it.
    d = Daemon()
    try:
        d.start().wait_ready()
        assert d.proc is not None
        while not d.notifications.empty():
            d.notifications.get()
        began = time.monotonic()
        for _ in range(1000):
            os.kill(d.proc.pid, signal.SIGHUP)
            time.sleep(0.001)
        burst_s = time.monotonic() - began
        time.sleep(1.5)  # the reloads the burst caused are over
        status_s, reply = timed_status(d.socket_path)
        alive = d.proc.poll() is None
        messages = []
        while not d.notifications.empty():
            messages.append(d.notifications.get()[1])
    finally:
        d.close()
    reloads = sum(1 for m in messages if m.startswith("RELOADING=1"))
    assert alive
    assert 1 <= reloads <= 50, f"{reloads} reloads for 1,000 SIGHUPs sent in {burst_s:.2f} s"
    assert status_s < 1.0
    assert reply["status"]["last_reload"]["outcome"] == "ok"


# -- 5. slow clients of another user -------------------------------------------------

# Run as uid 65534: connect `count` clients that each send one byte a second
# (a request that never ends), report which the daemon admitted, then
# connect one more per "more" line on stdin, until stdin closes.
SLOW_CLIENTS = r"""
import json, select, socket, sys, time
path, count = sys.argv[1], int(sys.argv[2])

def connect():
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(path)
    try:
        sock.send(b"{")
    except OSError:
        pass  # turned away and closed already: its busy line is still to read
    return sock

def answer(sock):
    try:
        return sock.recv(4096).decode(errors="replace")
    except (BlockingIOError, socket.timeout):
        return ""

clients = [connect() for _ in range(count)]
time.sleep(1)  # a refused client has its busy line by now; an admitted one waits for more
for sock in clients:
    sock.setblocking(False)
answers = [answer(sock) for sock in clients]
held = [sock for sock, text in zip(clients, answers) if not text]
print(json.dumps({"held": len(held), "refused": [text for text in answers if text]}), flush=True)
while True:
    ready, _, _ = select.select([sys.stdin], [], [], 1.0)
    if ready:
        if not sys.stdin.readline():
            break
        one_more = connect()
        one_more.settimeout(5)
        print(json.dumps({"answer": answer(one_more)}), flush=True)
    for sock in held:
        try:
            sock.send(b" ")
        except OSError:
            pass
"""


NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")


def test_slow_clients_of_another_user_do_not_lock_out_root(netns: None) -> None:
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv(1) to drop root")
    d = Daemon(config='[socket]\nmode = "0666"\n')
    nobody: subprocess.Popen[str] | None = None
    try:
        os.chmod(d.dir, 0o755)  # the socket's directory, for uid 65534
        d.start().wait_ready()
        nobody = subprocess.Popen(
            [*NOBODY, BASE_PYTHON, "-c", SLOW_CLIENTS, d.socket_path, "64"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd="/",
        )
        assert nobody.stdin is not None and nobody.stdout is not None
        first = json.loads(nobody.stdout.readline())
        time.sleep(2)  # two bytes from each held client
        status_s, reply = timed_status(d.socket_path)
        nobody.stdin.write("more\n")
        nobody.stdin.flush()
        answer = json.loads(nobody.stdout.readline())["answer"]
    finally:
        if nobody is not None:
            nobody.kill()
            nobody.wait()
        d.close()
    per_uid_limit = 64 // 4  # max_clients // UID_SHARE_DIVISOR
    assert first["held"] == per_uid_limit, first
    assert len(first["refused"]) == 64 - per_uid_limit
    assert all('"code":"busy"' in text.replace(" ", "") for text in first["refused"]), first
    assert status_s < 1.0, f"root's status took {status_s:.2f} s"
    assert reply["ok"] is True
    refusal = json.loads(answer)
    assert refusal["ok"] is False and refusal["error"]["code"] == "busy", refusal
    assert "too many connections from your user (uid 65534" in refusal["error"]["message"]
    assert f"at most {per_uid_limit} of the daemon's 64 per user" in refusal["error"]["message"]


# -- 6. stderr stalls, the watchdog does not ----------------------------------------


def pipe_bytes(fd: int) -> int:
    """Bytes waiting in a pipe (FIONREAD)."""
    held = bytearray(4)
    fcntl.ioctl(fd, termios.FIONREAD, held)
    return int.from_bytes(held, sys.byteorder)


def test_watchdog_pings_go_on_while_stderr_is_a_full_pipe(netns: None) -> None:
    count = 2000
    with more_open_files(count):
        d = Daemon(watchdog_usec=2_000_000)
        socks: list[socket.socket] = []
        try:
            d.start().wait_ready()
            assert d.proc is not None and d.proc.stderr is not None
            d.pause_stderr()
            socks = [listen_tcp() for _ in range(count)]
            deadline = time.monotonic() + 15
            while pipe_bytes(d.proc.stderr.fileno()) < PIPE_FULL:
                assert time.monotonic() < deadline, "stderr never filled"
                time.sleep(0.05)
            while not d.notifications.empty():
                d.notifications.get()
            stall_began = time.monotonic()
            pings = [stall_began]
            while pings[-1] - stall_began < 10:
                pings.append(d.wait_notify(lambda m: m == "WATCHDOG=1", timeout=5)[0])
            still_full = pipe_bytes(d.proc.stderr.fileno())
            d.resume_stderr()
            opened = d.wait_events("opened", {tcp_key(s) for s in socks}, timeout=60)
        finally:
            for sock in socks:
                sock.close()
            d.close()
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert still_full >= PIPE_FULL, "the stall did not last the 10 s"
    assert max(gaps) <= 1.0, f"longest gap between watchdog pings {max(gaps):.2f} s"
    assert len(opened) == count
