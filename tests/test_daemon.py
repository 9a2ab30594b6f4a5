"""The daemon as a user runs it: a subprocess in a private network
namespace, a real NOTIFY_SOCKET, real listening sockets."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.daemon_harness import Daemon, ListenerProcess, listen_tcp, tcp_key


@pytest.fixture
def daemon(netns: None) -> Iterator[Daemon]:
    d = Daemon()
    yield d
    d.close()


def run_portwatchd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "portwatchd.daemon", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_ready_after_first_scan_with_readable_status(daemon: Daemon) -> None:
    with listen_tcp():
        daemon.start()
        message = daemon.wait_ready()
    assert "STATUS=watching 1 port every 0.1s; 0 events in the last hour" in message
    baseline = daemon.wait_line(lambda r: "baseline" in r.get("message", ""))
    assert "watching 1 listening port;" in baseline["message"]
    # A control socket that answers is part of "ready".
    assert os.path.exists(daemon.socket_path)


def test_first_scan_is_a_baseline_and_changes_become_events(daemon: Daemon) -> None:
    existing = listen_tcp()
    daemon.start().wait_ready()
    server = ListenerProcess("::1")
    opened = daemon.wait_event("opened", server.key)
    assert opened["proto"] == "tcp"
    assert opened["family"] == "ipv6"
    assert opened["address"] == "::1"
    assert opened["port"] == server.port
    assert opened["owner"]["pid"] == server.pid
    assert opened["owner"]["comm"].startswith("python")
    assert opened["detected"] == "scan"
    assert opened["time"].endswith("Z") and "." in opened["time"]
    server.close()
    closed = daemon.wait_event("closed", server.key)
    assert closed["owner"]["pid"] == server.pid
    assert closed["seq"] == opened["seq"] + 1
    assert closed["id"] != opened["id"]
    # The listener that was there before the daemon never became an event.
    seen = [e["key"] for e in daemon.drain_events()]
    assert tcp_key(existing) not in seen
    existing.close()


def test_udp_and_reopen_by_another_socket(daemon: Daemon) -> None:
    daemon.start().wait_ready()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    port = udp.getsockname()[1]
    opened = daemon.wait_event("opened", f"udp:127.0.0.1:{port}")
    assert opened["proto"] == "udp"
    udp.close()
    daemon.wait_event("closed", f"udp:127.0.0.1:{port}")


def reuseport_listener(port: int = 0) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


def test_a_shared_port_opens_with_its_first_socket_and_closes_with_its_last(
    daemon: Daemon,
) -> None:
    daemon.start().wait_ready()
    first = reuseport_listener()
    key = tcp_key(first)
    daemon.wait_event("opened", key)
    second = reuseport_listener(first.getsockname()[1])
    time.sleep(0.5)  # several scans see both
    first.close()  # the socket the port opened with leaves; the port stays
    time.sleep(0.5)
    third = reuseport_listener(second.getsockname()[1])
    time.sleep(0.5)
    second.close()
    time.sleep(0.5)
    assert [e for e in daemon.drain_events() if e["key"] == key] == []
    third.close()
    closed = daemon.wait_event("closed", key)
    assert closed["key"] == key


def test_watchdog_pings_come_from_the_loop_at_a_quarter_of_watchdog_usec(netns: None) -> None:
    # A long scan interval: pings must not wait for scans.
    d = Daemon(interval=30, watchdog_usec=400_000)
    try:
        d.start().wait_ready()
        stamps = [d.wait_notify(lambda m: m == "WATCHDOG=1", timeout=5)[0] for _ in range(8)]
    finally:
        d.close()
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    # A quarter of 0.4 s is 0.1 s: never two pings at once, never a gap of
    # half the timeout (0.2 s), which is what leaves room for a long turn.
    assert all(0.05 < gap < 0.2 for gap in gaps), gaps


def test_sighup_reload_notifies_and_new_interval_takes_effect_now(netns: None) -> None:
    d = Daemon(interval=None, config="interval = 60\n")
    try:
        d.start().wait_ready()
        sock = listen_tcp()
        d.write_config("interval = 0.1\n")
        d.signal(signal.SIGHUP)
        _, reloading = d.wait_notify(lambda m: m.startswith("RELOADING=1"))
        assert "MONOTONIC_USEC=" in reloading
        ready = d.wait_ready()
        assert "every 0.1s" in ready
        # Without rescheduling, this would wait out the old 60 s interval.
        d.wait_event("opened", tcp_key(sock), timeout=10)
        sock.close()
    finally:
        d.close()


def test_sighup_with_broken_config_keeps_old_config_and_says_why(daemon: Daemon) -> None:
    daemon.start().wait_ready()
    daemon.write_config("interval = 0.1\nbogus_key = 1\n")
    daemon.signal(signal.SIGHUP)
    ready = daemon.wait_ready()
    assert "reload refused" in ready
    assert "bogus_key" in ready
    error = daemon.wait_line(lambda r: "reload refused" in r.get("message", ""))
    assert error["priority"] == "error"
    assert f"{daemon.config_path}:3" in error["message"]
    # Still up, still scanning with the old configuration.
    with listen_tcp() as sock:
        daemon.wait_event("opened", tcp_key(sock))
    assert daemon.proc is not None and daemon.proc.poll() is None


def test_reload_whose_socket_cannot_be_set_up_keeps_the_old_one(daemon: Daemon) -> None:
    daemon.start().wait_ready()
    daemon.write_config('history_size = 7\n[socket]\ngroup = "no-such-group-here"\n')
    daemon.signal(signal.SIGHUP)
    ready = daemon.wait_ready()
    # The history size applied, the socket did not: "partial", not "refused".
    assert "reload partial" in ready and "no-such-group-here" in ready
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(5)
        client.connect(daemon.socket_path)
        client.sendall(b'{"v": 1, "req": "status"}\n')
        reply = json.loads(client.makefile().readline())
    assert reply["ok"] is True
    last_reload = reply["status"]["last_reload"]
    assert (last_reload["ok"], last_reload["outcome"]) == (False, "partial")
    assert [item.split(":")[0] for item in last_reload["not_applied"]] == ["[socket]"]
    assert reply["status"]["history_capacity"] == 7


def test_sighup_storm_is_coalesced_and_daemon_survives(daemon: Daemon) -> None:
    daemon.start().wait_ready()
    for _ in range(50):
        daemon.signal(signal.SIGHUP)
    time.sleep(1)
    assert daemon.proc is not None and daemon.proc.poll() is None
    reloads = 0
    while not daemon.notifications.empty():
        if daemon.notifications.get()[1].startswith("RELOADING=1"):
            reloads += 1
    assert 1 <= reloads < 50


def test_sigterm_says_stopping_and_exits_zero(daemon: Daemon) -> None:
    daemon.start().wait_ready()
    daemon.signal(signal.SIGTERM)
    daemon.wait_notify(lambda m: m.startswith("STOPPING=1"))
    assert daemon.wait_exit() == 0
    assert not os.path.exists(daemon.socket_path)


def test_changes_while_killed_are_reported_at_restart(daemon: Daemon) -> None:
    before = listen_tcp()
    daemon.start().wait_ready()
    early = listen_tcp()
    first = daemon.wait_event("opened", tcp_key(early))
    daemon.kill9()

    before_key = tcp_key(before)
    before.close()
    during = ListenerProcess()
    daemon.start()
    daemon.wait_ready()
    events = {(e["type"], e["key"]): e for e in daemon.drain_events(settle=1.5)}
    closed = events[("closed", before_key)]
    opened = events[("opened", during.key)]
    for event in (closed, opened):
        assert event["detected"] == "startup"
        assert event["down_since"] is not None
        assert event["seq"] > first["seq"]
    assert opened["owner"]["pid"] == during.pid
    early.close()
    during.close()


def test_corrupt_state_file_is_moved_aside_not_fatal(daemon: Daemon) -> None:
    os.makedirs(daemon.state_dir)
    with open(os.path.join(daemon.state_dir, "state.json"), "w") as f:
        f.write("{not json")
    daemon.start().wait_ready()
    warning = daemon.wait_line(lambda r: "corrupt" in r.get("message", ""))
    assert warning["priority"] == "warning"
    aside = [n for n in os.listdir(daemon.state_dir) if "corrupt" in n]
    assert len(aside) == 1
    assert os.path.join(daemon.state_dir, aside[0]) in warning["message"]
    with open(os.path.join(daemon.state_dir, aside[0])) as f:
        assert f.read() == "{not json"


def test_thousands_of_sockets_in_one_scan_are_all_reported(netns: None) -> None:
    count = 3000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < count + 200:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is too low")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, count + 200), hard))
    d = Daemon(interval=0.5)
    socks: list[socket.socket] = []
    try:
        d.start().wait_ready()
        socks = [listen_tcp() for _ in range(count)]
        keys = {tcp_key(s) for s in socks}
        seen: dict[str, int] = {}
        deadline = time.monotonic() + 60
        while len(seen) < count and time.monotonic() < deadline:
            for event in d.drain_events(settle=1.0):
                if event["type"] == "opened":
                    seen[event["key"]] = event["seq"]
        assert set(seen) == keys
        seqs = sorted(seen.values())
        assert seqs == list(range(seqs[0], seqs[0] + count))
    finally:
        for s in socks:
            s.close()
        d.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_notify_socket_nobody_reads_does_not_stall_the_loop(netns: None) -> None:
    # systemd always reads; a test harness or a stuck manager may not. The
    # daemon keeps sending STATUS= as events come, far more than fit.
    # Rounds of new servers may get the ports of the round before: these
    # are new listeners, not restarts.
    d = Daemon(read_notify=False, config="restart_grace = 0\n")
    try:
        d.start().wait_line(lambda r: " ready: " in r.get("message", ""))
        for _ in range(3):
            servers = [ListenerProcess() for _ in range(40)]
            keys = {server.key for server in servers}
            d.wait_events("opened", keys)
            for server in servers:
                server.close()
            d.wait_events("closed", keys)
    finally:
        d.close()


def test_check_config_accepts_good_and_rejects_bad_with_file_and_line(tmp_path: object) -> None:
    good = os.path.join(str(tmp_path), "good.toml")
    bad = os.path.join(str(tmp_path), "bad.toml")
    with open(good, "w") as f:
        f.write("interval = 2\n")
    with open(bad, "w") as f:
        f.write("\ninterval = 0\n")
    ok = run_portwatchd("--config", good, "--check-config")
    assert ok.returncode == 0, ok.stderr
    refused = run_portwatchd("--config", bad, "--check-config")
    assert refused.returncode == 78
    assert f"{bad}:2" in refused.stderr and "interval" in refused.stderr


def test_missing_explicit_config_is_a_config_error() -> None:
    result = run_portwatchd("--config", "/nonexistent/portwatchd.toml", "--check-config")
    assert result.returncode == 78
    assert "/nonexistent/portwatchd.toml" in result.stderr


def test_version() -> None:
    result = run_portwatchd("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("portwatchd ")


def test_status_json_over_the_control_socket(daemon: Daemon) -> None:
    daemon.start().wait_ready()
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(5)
        client.connect(daemon.socket_path)
        client.sendall(b'{"v": 1, "req": "status"}\n')
        reply = json.loads(client.makefile().readline())
    assert reply["ok"] is True
    status = reply["status"]
    assert status["interval_s"] == 0.1
    assert status["backend"] == "netlink"


def test_bad_clients_do_not_stop_scanning_pings_or_good_clients(netns: None) -> None:
    """Issue's list of bad input, all at once, against the real daemon."""
    d = Daemon(watchdog_usec=1_000_000)
    bad: list[socket.socket] = []
    try:
        d.start().wait_ready()

        def connect() -> socket.socket:
            sock = socket.socket(socket.AF_UNIX)
            sock.settimeout(5)
            sock.connect(d.socket_path)
            bad.append(sock)
            return sock

        connect()  # connects and sends nothing
        connect().sendall(b'{"v": 1, "req": "sta')  # half a line, then stalls
        connect().sendall(b"\x00\xff garbage \xfe\n")
        connect().sendall(b'{"v": 1, "req": "events", "limit": "many"}\n')
        connect().sendall(b'{"v": 1, "req": "reboot"}\n')
        huge = connect()
        with contextlib.suppress(OSError):  # the daemon may close it mid-send
            huge.sendall(b"x" * (10 * 1024 * 1024))
        follower = connect()  # follows and never reads
        follower.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        follower.sendall(b'{"v": 1, "req": "follow"}\n')
        for _ in range(500):  # far past max_clients
            with contextlib.suppress(OSError):
                connect()

        # Meanwhile: scanning goes on, and so do the watchdog pings.
        servers = [ListenerProcess() for _ in range(30)]
        d.wait_events("opened", {server.key for server in servers})
        for server in servers:
            server.close()
        pings = [d.wait_notify(lambda m: m == "WATCHDOG=1", timeout=3)[0] for _ in range(3)]
        assert pings == sorted(pings)

        # The next well-behaved client is answered.
        for sock in bad:
            sock.close()
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(5)
            client.connect(d.socket_path)
            client.sendall(b'{"v": 1, "req": "status"}\n')
            reply = json.loads(client.makefile().readline())
        assert reply["ok"] is True
        assert d.proc is not None and d.proc.poll() is None
    finally:
        for sock in bad:
            sock.close()
        d.close()


def _portwatchctl(socket_path: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "portwatchd.ctl", "--socket", socket_path, *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_a_broken_configuration_under_socket_activation_stays_up_until_fixed(
    netns: None, tmp_path: object
) -> None:
    """Started by systemd's socket with a broken file: up, answering status
    with the error and pinging the watchdog; a reload with the file fixed
    starts it over in the same process, on the same socket."""
    directory = str(tmp_path)
    config = os.path.join(directory, "portwatchd.toml")
    sock_path = os.path.join(directory, "ctl.sock")
    notify_path = os.path.join(directory, "notify")
    with open(config, "w") as f:
        f.write("\ninterval = 0\n")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(10)
    # systemd-socket-activate passes on only the variables named with -E.
    env = dict(os.environ, NOTIFY_SOCKET=notify_path, WATCHDOG_USEC="400000",
               PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # fmt: skip
    daemon = subprocess.Popen(
        ["systemd-socket-activate", "-l", sock_path, "-E", "NOTIFY_SOCKET", "-E", "WATCHDOG_USEC",
         "-E", "PYTHONPATH", sys.executable, "-m", "portwatchd.daemon",
         "--config", config, "--state-dir", os.path.join(directory, "state"),
         "--log-target", "stderr"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(sock_path):
            assert time.monotonic() < deadline, "systemd-socket-activate made no socket"
            time.sleep(0.05)
        broken = _portwatchctl(sock_path, "status")  # the first client starts the daemon
        assert broken.returncode == 5, broken
        assert f"{config}:2" in broken.stderr and "interval" in broken.stderr
        messages = [notify.recv(4096).decode() for _ in range(4)]
        assert any(m.startswith("READY=1") for m in messages), messages
        assert "WATCHDOG=1" in messages, messages
        refused = _portwatchctl(sock_path, "reload")
        assert refused.returncode == 5 and f"{config}:2" in refused.stderr, refused
        with open(config, "w") as f:
            f.write("interval = 0.5\n")
        fixed = _portwatchctl(sock_path, "reload")
        assert fixed.returncode == 0, fixed
        deadline = time.monotonic() + 15
        while (status := _portwatchctl(sock_path, "status", "--json")).returncode != 0:
            assert time.monotonic() < deadline, status
            time.sleep(0.2)
        answer = json.loads(status.stdout)
        assert answer["interval_s"] == 0.5 and "config_error" not in answer
        # Started over in place: the process systemd-socket-activate exec'd.
        assert answer["pid"] == daemon.pid
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=10)
        notify.close()
