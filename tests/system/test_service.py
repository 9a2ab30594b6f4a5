"""portwatchd under a real systemd, used the way an operator uses it.

Every test runs commands inside one booted sandbox (see sandbox.py) in
which `make install`'s script installed the package, the units and the
catalog. Ports are opened by small listener services started with
systemd-run, so an event's owner fields can be checked against a unit
whose PID systemd knows. Each test uses its own port numbers.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import pytest

from tests.system.sandbox import Sandbox

pytestmark = pytest.mark.system

UNIT = "portwatchd.service"
CONFIG = "/etc/portwatchd/portwatchd.toml"
MESSAGE_ID_OPENED = "bc5aa3412226442ea87addfff74cb425"
MESSAGE_ID_CLOSED = "6a63009634414d579ea098597164285c"
MESSAGE_ID_RELOAD_REFUSED = "e8fa0f95b4d54ab0a5fd1fcda24f1e0f"
STATUS_PATTERN = re.compile(
    r"watching \d+ ports? every [0-9.]+s; \d+ events? in the last hour"
    # This sandbox runs in a PID namespace of its own, where exec events never come.
    r"(; polling only for new programs)?"
)

T = TypeVar("T")

# Binds every (proto, address, port) given as "proto:address:port" and waits
# to be stopped. Listening sockets are made first and all at once, so a
# burst lands in one scan.
LISTENER = r"""
import socket, sys, time
held = []
for spec in sys.argv[1:]:
    proto, address, port = spec.rsplit(":", 2)
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    sock = socket.socket(socket.AF_INET, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address, int(port)))
    if proto == "tcp":
        sock.listen()
    held.append(sock)
time.sleep(1e9)
"""


# -- helpers -----------------------------------------------------------------


def wait_for(check: Callable[[], T | None], what: str, timeout: float = 20.0) -> T:
    """Poll `check` until it returns something truthy; fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def show(box: Sandbox, unit: str, *props: str) -> dict[str, str]:
    out = box.run("systemctl", "show", unit, *(f"--property={p}" for p in props)).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def main_pid(box: Sandbox, unit: str = UNIT) -> int:
    return int(show(box, unit, "MainPID")["MainPID"])


def journal(box: Sandbox, *matches: str, unit: str = UNIT) -> list[dict[str, Any]]:
    """Journal entries of `unit` matching FIELD=value `matches`, oldest first."""
    out = box.run("journalctl", "--no-pager", "-o", "json", "-u", unit, *matches).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def wait_for_entry(box: Sandbox, *matches: str, timeout: float = 20.0) -> dict[str, Any]:
    entries = wait_for(
        lambda: journal(box, *matches), f"a journal entry {' '.join(matches)}", timeout
    )
    assert len(entries) == 1, f"expected one entry for {matches}, got {len(entries)}"
    return entries[0]


def ctl(box: Sandbox, *args: str, user: str | None = None, check: bool = True) -> Any:
    """`portwatchctl ARGS --json`, decoded (events: a list, one per line)."""
    result = box.run("portwatchctl", *args, "--json", user=user, check=check)
    if args[0] == "events":
        return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    return json.loads(result.stdout)


def wait_active_with_new_pid(box: Sandbox, old_pid: int, timeout: float = 30.0) -> int:
    def restarted() -> int | None:
        props = show(box, UNIT, "ActiveState", "MainPID")
        pid = int(props["MainPID"])
        return pid if props["ActiveState"] == "active" and pid not in (0, old_pid) else None

    return wait_for(restarted, "portwatchd to be restarted and active again", timeout)


@contextmanager
def listening(
    box: Sandbox,
    *specs: str,
    nofile: int = 1024,
    user: str = "root",
    inside: Sequence[str] = (),
) -> Iterator[str]:
    """Hold "proto:address:port" sockets in a transient service; yield its unit name.
    `inside` runs the listener under a command first ("ip netns exec NAME")."""
    unit = f"pw-listener-{uuid.uuid4().hex[:8]}.service"
    box.run(
        "systemd-run",
        f"--unit={unit}",
        f"--property=LimitNOFILE={nofile}",
        f"--property=User={user}",
        "--quiet",
        *inside,
        "/usr/bin/python3",
        "-c",
        LISTENER,
        *specs,
    )
    try:
        yield unit
    finally:
        box.run("systemctl", "stop", unit, check=False)


@contextmanager
def config_file(box: Sandbox, text: str) -> Iterator[None]:
    """Replace the config file; put the original back (and reload) afterwards."""
    path = box.path(CONFIG)
    try:
        with open(path, encoding="utf-8") as handle:
            original: str | None = handle.read()
    except FileNotFoundError:
        original = None
    box.write_file(CONFIG, text)
    try:
        yield
    finally:
        if original is None:
            box.run("rm", "-f", CONFIG)
        else:
            box.write_file(CONFIG, original)
        box.run("systemctl", "reload", UNIT, check=False)


def systemctl(box: Sandbox, verb: str) -> None:
    """`systemctl VERB portwatchd`; on failure, fail with the daemon's last words."""
    result = box.run("systemctl", verb, UNIT, timeout=60, check=False)
    if result.returncode != 0:
        log = box.run("journalctl", "--no-pager", "-n", "15", "-u", UNIT, check=False).stdout
        pytest.fail(f"systemctl {verb} {UNIT} failed: {result.stderr.strip()}\n{log}")


def ensure_running(box: Sandbox) -> None:
    systemctl(box, "start")


# -- the tests ----------------------------------------------------------------


def test_start_returns_once_ready_and_status_reads_well(box: Sandbox) -> None:
    systemctl(box, "stop")
    with listening(box, "tcp:0.0.0.0:18079"):
        wait_for(
            lambda: "18079" in box.run("ss", "-Hltn", "sport = :18079").stdout,
            "the listener to listen",
        )
        systemctl(box, "start")

        # With Type=notify the unit is "activating" until READY=1: active
        # now means start returned after the daemon said it was ready.
        props = show(box, UNIT, "ActiveState", "SubState", "StatusText", "Type", "MainPID")
        assert (props["ActiveState"], props["SubState"], props["Type"]) == (
            "active",
            "running",
            "notify",
        )
        assert STATUS_PATTERN.fullmatch(props["StatusText"]), props["StatusText"]
        # READY=1 comes after the first scan: the status and the port list
        # already know the port that was open before the start.
        status = ctl(box, "status")
        assert status["pid"] == int(props["MainPID"])
        watched = status["ports_watched"]
        assert props["StatusText"].startswith(
            f"watching {watched} port{'' if watched == 1 else 's'} every"
        )
        assert status["ports_watched"] >= 1
        assert "tcp:0.0.0.0:18079" in {record["key"] for record in ctl(box, "ports")}


def test_open_and_close_are_journaled_with_every_field(box: Sandbox) -> None:
    ensure_running(box)
    port = "tcp:0.0.0.0:18080"
    python_exe = box.run("readlink", "-f", "/usr/bin/python3").stdout.strip()
    with listening(box, port) as listener:
        opened = wait_for_entry(box, "PORT_EVENT=opened", f"PORT={port}")
        listener_pid = main_pid(box, listener)
        ss = box.run("ss", "-Htlne", "sport = :18080").stdout
        inode = re.search(r"ino:(\d+)", ss)
        assert inode, ss

    expected = {
        "MESSAGE_ID": MESSAGE_ID_OPENED,
        "SYSLOG_IDENTIFIER": "portwatchd",
        "_SYSTEMD_UNIT": UNIT,
        "PORT_EVENT": "opened",
        "PORT": port,
        "PORT_PROTO": "tcp",
        "PORT_FAMILY": "ipv4",
        "PORT_ADDRESS": "0.0.0.0",
        "PORT_NUMBER": "18080",
        "PORT_PID": str(listener_pid),
        "PORT_COMM": "python3",
        "PORT_EXE": python_exe,
        "PORT_UID": "0",
        "PORT_UNIT": listener,
        "PORT_INODE": inode.group(1),
        "PORT_DETECTED": "scan",
    }
    assert {key: opened.get(key) for key in expected} == expected
    assert opened["PRIORITY"].isdigit()
    assert "PORT_INTERFACE" in opened  # empty: not bound to a device
    assert int(opened["PORT_EVENT_SEQ"]) > 0
    uuid.UUID(opened["PORT_EVENT_ID"])
    assert "Port opened" in opened["MESSAGE"] and "18080" in opened["MESSAGE"]

    closed = wait_for_entry(box, "PORT_EVENT=closed", f"PORT={port}")
    assert closed["MESSAGE_ID"] == MESSAGE_ID_CLOSED
    assert (closed["PORT_PID"], closed["PORT_INODE"]) == (opened["PORT_PID"], opened["PORT_INODE"])
    assert int(closed["PORT_EVENT_SEQ"]) > int(opened["PORT_EVENT_SEQ"])
    assert closed["PORT_EVENT_ID"] != opened["PORT_EVENT_ID"]


def test_sockets_of_other_users_are_attributed_to_their_process(box: Sandbox) -> None:
    # What CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH are in the unit for: under
    # ProtectProc=invisible and without them, another user's /proc/PID/fd
    # could not be read and the owner fields would be missing.
    ensure_running(box)
    with listening(box, "tcp:0.0.0.0:18083", user="nobody") as listener:
        opened = wait_for_entry(box, "PORT_EVENT=opened", "PORT=tcp:0.0.0.0:18083")
        expected = {
            "PORT_PID": str(main_pid(box, listener)),
            "PORT_UID": "65534",
            "PORT_COMM": "python3",
            "PORT_UNIT": listener,
        }
    assert {key: opened.get(key) for key in expected} == expected


def test_portwatchctl_shows_the_same_events_and_ports(box: Sandbox) -> None:
    ensure_running(box)
    keys = ("tcp:0.0.0.0:18081", "udp:127.0.0.1:18082")
    with listening(box, *keys) as listener:
        journaled = {key: wait_for_entry(box, "PORT_EVENT=opened", f"PORT={key}") for key in keys}
        ports = {record["key"]: record for record in ctl(box, "ports")}
        for key in keys:
            assert key in ports, sorted(ports)
            assert ports[key]["pid"] == main_pid(box, listener)
            assert ports[key]["unit"] == listener
    for key in keys:
        journaled_closed = wait_for_entry(box, "PORT_EVENT=closed", f"PORT={key}")
        events = {event["id"]: event for event in ctl(box, "events")}
        for entry in (journaled[key], journaled_closed):
            event = events[entry["PORT_EVENT_ID"]]
            assert (event["key"], event["type"], str(event["seq"])) == (
                key,
                entry["PORT_EVENT"],
                entry["PORT_EVENT_SEQ"],
            )
    assert not set(keys) & {record["key"] for record in ctl(box, "ports")}


def test_reload_applies_a_new_interval(box: Sandbox) -> None:
    ensure_running(box)
    pid = main_pid(box)
    with config_file(box, "interval = 0.5\n"):
        box.run("systemctl", "reload", UNIT)
        wait_for(
            lambda: "every 0.5s" in show(box, UNIT, "StatusText")["StatusText"],
            "StatusText to show the new interval",
        )
        assert ctl(box, "status")["interval_s"] == 0.5
        assert main_pid(box) == pid  # reloaded, not restarted
    wait_for(lambda: ctl(box, "status")["interval_s"] == 1.0, "the interval to return to 1s")


def test_broken_config_on_reload_keeps_the_daemon_running(box: Sandbox) -> None:
    ensure_running(box)
    pid = main_pid(box)
    with config_file(box, "# set by a test, broken on purpose\n\ninterval = 0\n"):
        # ExecReload= waits for the daemon's outcome: a refused reload fails.
        reload = box.run("systemctl", "reload", UNIT, check=False, timeout=60)
        assert reload.returncode != 0
        refused = wait_for_entry(box, f"MESSAGE_ID={MESSAGE_ID_RELOAD_REFUSED}")
        assert f"{CONFIG}:3" in refused["MESSAGE"] and "interval" in refused["MESSAGE"]

        def refused_status() -> str | None:
            text = show(box, UNIT, "StatusText")["StatusText"]
            return text if "refused" in text else None

        status = wait_for(refused_status, "StatusText to show the refused reload")
        assert f"{CONFIG}:3" in status
        props = show(box, UNIT, "ActiveState", "MainPID")
        assert (props["ActiveState"], int(props["MainPID"])) == ("active", pid)
        assert ctl(box, "status")["interval_s"] == 1.0  # still the old config
    # The original file is back and reloaded: the error leaves the status.
    wait_for(
        lambda: "refused" not in show(box, UNIT, "StatusText")["StatusText"],
        "StatusText to drop the error after a good reload",
    )


WATCHDOG_DROP_IN = "/etc/systemd/system/portwatchd.service.d/50-test-watchdog.conf"


def test_watchdog_restarts_a_hung_daemon_which_reports_what_it_missed(box: Sandbox) -> None:
    # The production 30s would make this test slow; 3s exercises the same
    # path (the daemon pings at half the interval from its main loop) and
    # leaves the test over 1.5s after SIGSTOP to change ports before the
    # watchdog fires.
    box.write_file(WATCHDOG_DROP_IN, "[Service]\nWatchdogSec=3s\n")
    try:
        box.run("systemctl", "daemon-reload")
        systemctl(box, "restart")
        assert show(box, UNIT, "WatchdogUSec")["WatchdogUSec"] == "3s"
        restarts = int(show(box, UNIT, "NRestarts")["NRestarts"])
        with listening(box, "tcp:0.0.0.0:18090") as closes_while_hung:
            wait_for_entry(box, "PORT_EVENT=opened", "PORT=tcp:0.0.0.0:18090")
            hung = main_pid(box)
            box.run("kill", "-STOP", str(hung))
            box.run("systemctl", "stop", closes_while_hung)
            with listening(box, "tcp:0.0.0.0:18091"):
                wait_active_with_new_pid(box, hung)
                watchdog = journal(box, "UNIT_RESULT=watchdog")
                assert watchdog, "systemd logged no failure with result 'watchdog'"
                assert int(show(box, UNIT, "NRestarts")["NRestarts"]) == restarts + 1
                opened = wait_for_entry(box, "PORT_EVENT=opened", "PORT=tcp:0.0.0.0:18091")
                closed = wait_for_entry(box, "PORT_EVENT=closed", "PORT=tcp:0.0.0.0:18090")
                assert opened["PORT_DETECTED"] == closed["PORT_DETECTED"] == "startup"
    finally:
        box.run("rm", "-f", WATCHDOG_DROP_IN)
        box.run("systemctl", "daemon-reload")
        box.run("systemctl", "restart", UNIT, timeout=60)


def test_kill_9_restarts_it_and_nothing_is_lost(box: Sandbox) -> None:
    ensure_running(box)
    before = ctl(box, "events")
    pid = main_pid(box)
    box.run("kill", "-KILL", str(pid))
    with listening(box, "udp:0.0.0.0:18095"):
        wait_active_with_new_pid(box, pid)
        # Opened while down (startup) or seen by the new process (scan): reported once either way.
        wait_for_entry(box, "PORT_EVENT=opened", "PORT=udp:0.0.0.0:18095")
        assert journal(box, "UNIT_RESULT=signal"), "systemd logged no failure with result 'signal'"
    wait_for_entry(box, "PORT_EVENT=closed", "PORT=udp:0.0.0.0:18095")

    after = ctl(box, "events")
    after_ids = {event["id"] for event in after}
    assert {event["id"] for event in before} <= after_ids, "events from before the crash were lost"
    seqs = [event["seq"] for event in after]
    assert seqs == sorted(set(seqs)), "sequence numbers repeat or go backwards across the restart"


def test_proc_backend_works_under_the_hardened_unit(box: Sandbox) -> None:
    # ProcSubset=pid hides /proc/net (a symlink to /proc/self/net): the
    # /proc fallback must read the tables through /proc/self.
    with config_file(box, 'backend = "proc"\n'):
        systemctl(box, "restart")
        assert ctl(box, "status")["backend"] == "proc"
        with listening(box, "tcp:0.0.0.0:18097"):
            opened = wait_for_entry(box, "PORT_EVENT=opened", "PORT=tcp:0.0.0.0:18097")
        assert opened["PORT_COMM"] == "python3"
    systemctl(box, "restart")
    assert ctl(box, "status")["backend"] == "netlink"


def test_journalctl_x_explains_events_with_the_catalog(box: Sandbox) -> None:
    ensure_running(box)
    with listening(box, "tcp:127.0.0.1:18096"):
        wait_for_entry(box, "PORT_EVENT=opened", "PORT=tcp:127.0.0.1:18096")
    wait_for_entry(box, "PORT_EVENT=closed", "PORT=tcp:127.0.0.1:18096")
    for event, subject in (
        ("opened", "Listening port opened"),
        ("closed", "Listening port closed"),
    ):
        text = box.run(
            "journalctl",
            "--no-pager",
            "-x",
            "-u",
            UNIT,
            f"PORT_EVENT={event}",
            "PORT=tcp:127.0.0.1:18096",
        ).stdout
        # The catalog's fields are filled in from the entry (@PORT@, @PORT_NUMBER@).
        assert f"{subject}: tcp:127.0.0.1:18096" in text, text
        assert "portwatchctl ports" in text and ":18096" in text, text


def test_socket_group_decides_who_may_query(box: Sandbox) -> None:
    ensure_running(box)
    for user, groups in (("pwoutsider", ()), ("pwmember", ("portwatchd",))):
        if box.run("id", user, check=False).returncode != 0:
            box.run("useradd", "--no-create-home", *(["-G", *groups] if groups else []), user)
    socket_stat = box.run("stat", "-c", "%a %U %G", "/run/portwatchd/control.sock").stdout.split()
    assert socket_stat == ["660", "root", "portwatchd"]

    denied = box.run("portwatchctl", "events", user="pwoutsider", check=False)
    assert denied.returncode == 4, denied
    assert "portwatchd" in denied.stderr and "usermod -aG portwatchd" in denied.stderr, (
        denied.stderr
    )

    allowed = box.run("portwatchctl", "events", "--json", user="pwmember", check=False)
    assert allowed.returncode == 0, allowed.stderr
    assert all(json.loads(line)["seq"] for line in allowed.stdout.splitlines())


def test_unit_is_hardened_and_verifies_clean(box: Sandbox) -> None:
    verify = box.run("systemd-analyze", "verify", UNIT, "portwatchd.socket", check=False)
    # Parse warnings exit 0: any output at all is a failure.
    assert (verify.returncode, verify.stdout, verify.stderr) == (0, "", "")

    security = box.run("systemd-analyze", "security", "--no-pager", UNIT, check=False).stdout
    level = re.search(r"Overall exposure level for portwatchd\.service: (\d+\.\d+)", security)
    assert level, security
    assert float(level.group(1)) <= 2.0, security
    # Network namespaces may be entered (setns for every namespace's
    # sock_diag socket); every other kind of namespace stays forbidden.
    assert re.search(r"✗ RestrictNamespaces=~net\b", security), security
    assert not re.search(r"✗ RestrictNamespaces=~(?!net\b)", security), security


def test_a_burst_of_thousands_of_ports_is_journaled_completely(box: Sandbox) -> None:
    ensure_running(box)
    count = 3000
    first = 20000
    specs = [f"tcp:127.0.0.1:{port}" for port in range(first, first + count)]
    # journald's default burst was lowered to 200 per 30s in this sandbox
    # (conftest): without the unit's own limit most of these would be dropped.
    assert show(box, UNIT, "LogRateLimitBurst")["LogRateLimitBurst"] == "100000"

    def numbers(event: str, unit: str) -> set[int]:
        out = box.run(
            "journalctl",
            "--no-pager",
            "-u",
            UNIT,
            f"PORT_EVENT={event}",
            f"PORT_UNIT={unit}",
            "-o",
            "cat",
            "--output-fields=PORT_NUMBER",
        ).stdout
        return {int(line) for line in out.split()}

    with listening(box, *specs, nofile=count + 100) as listener:
        wait_for(
            lambda: len(numbers("opened", listener)) == count,
            f"{count} opened entries in the journal",
            timeout=60,
        )
    wait_for(
        lambda: len(numbers("closed", listener)) == count,
        f"{count} closed entries in the journal",
        timeout=60,
    )
    assert numbers("opened", listener) == set(range(first, first + count))


def test_a_stalled_journald_stops_nothing_and_loses_nothing(box: Sandbox) -> None:
    """journald stopped for 60 s: the loop keeps pinging and scanning (no
    watchdog restart), status says why nothing is journaled, and once
    journald runs again every event is there, under the unit."""
    ensure_running(box)
    restarts = int(show(box, UNIT, "NRestarts")["NRestarts"])
    pid = main_pid(box)
    journald = main_pid(box, "systemd-journald.service")
    # More messages than journald's socket queues (net.unix.max_dgram_qlen,
    # 512 under systemd): the sends then block until journald runs again.
    ports = [f"tcp:0.0.0.0:{port}" for port in range(18300, 19300)]
    box.run("kill", "-STOP", str(journald))
    try:
        with listening(box, *ports, nofile=2048):
            seen = wait_for(
                lambda: {e["key"] for e in ctl(box, "events", "--type", "opened")} >= set(ports),
                "portwatchd to record all 1000 opens while journald is stopped",
                timeout=30,
            )
            assert seen
            time.sleep(60)
            status = ctl(box, "status")
            assert status["journal_error"], status
            assert status["journal_pending"] > 0, status
            assert main_pid(box) == pid
            assert int(show(box, UNIT, "NRestarts")["NRestarts"]) == restarts
    finally:
        box.run("kill", "-CONT", str(journald))
    opened = wait_for(
        lambda: len({e["PORT"] for e in journal(box, "PORT_EVENT=opened")} & set(ports)) == 1000,
        "every open to reach the journal under the unit",
        timeout=60,
    )
    assert opened
    assert main_pid(box) == pid
    wait_for(lambda: ctl(box, "status")["journal_error"] is None, "journal_error to clear")


def test_a_broken_configuration_at_start_never_takes_the_socket_down(box: Sandbox) -> None:
    ensure_running(box)
    with config_file(box, "# set by a test, broken on purpose\n\ninterval = 0\n"):
        # Whether the daemon refuses to start or stays up reporting the
        # error, clients keep coming: each call may trigger a start.
        box.run("systemctl", "restart", UNIT, check=False, timeout=60)
        for _ in range(10):
            answer = box.run("portwatchctl", "status", check=False, timeout=30)
        socket_state = show(box, "portwatchd.socket", "ActiveState", "Result")
        assert socket_state == {"ActiveState": "active", "Result": "success"}, socket_state
        # The daemon stays up to say what is wrong, with file, line and key.
        assert answer.returncode == 5, (answer.stdout, answer.stderr)
        assert f"{CONFIG}:3" in answer.stderr and "interval" in answer.stderr
    # The file is fixed: a restart works at once, with no start limit in the way.
    systemctl(box, "restart")
    assert show(box, UNIT, "ActiveState")["ActiveState"] == "active"
    assert ctl(box, "status")["interval_s"] == 1.0


def test_the_daemon_runs_as_its_own_user_with_four_capabilities(box: Sandbox) -> None:
    ensure_running(box)
    status = box.read_file(f"/proc/{main_pid(box)}/status")
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    uid = box.run("id", "-u", "portwatchd").stdout.strip()
    assert fields["Uid"].split() == [uid] * 4, fields
    journal_gid = box.run("getent", "group", "systemd-journal").stdout.split(":")[2]
    assert journal_gid in fields["Groups"].split(), fields
    # CAP_DAC_READ_SEARCH (2), CAP_NET_ADMIN (12), CAP_SYS_PTRACE (19) and
    # CAP_SYS_ADMIN (21), and nothing else.
    for line in ("CapEff", "CapPrm", "CapAmb", "CapBnd"):
        assert int(fields[line], 16) == (1 << 2) | (1 << 12) | (1 << 19) | (1 << 21), (line, fields)
    owner = box.run("stat", "-c", "%U:%G", "/var/lib/portwatchd").stdout.strip()
    assert owner == "portwatchd:portwatchd"


DROP_IN_DIR = "/etc/portwatchd/portwatchd.d"


def test_drop_ins_apply_in_name_order_and_errors_name_their_file(box: Sandbox) -> None:
    ensure_running(box)
    files = {f"{DROP_IN_DIR}/20-later.toml": "interval = 4\n",
             f"{DROP_IN_DIR}/10-first.toml": "interval = 3\nhistory_size = 500\n"}  # fmt: skip
    try:
        for path, text in files.items():
            box.write_file(path, text)
        systemctl(box, "reload")
        status = ctl(box, "status")
        assert (status["interval_s"], status["history_capacity"]) == (4.0, 500)
        box.write_file(f"{DROP_IN_DIR}/30-broken.toml", "\ninterval = 0\n")
        refused = box.run("systemctl", "reload", UNIT, check=False, timeout=60)
        assert refused.returncode != 0
        entry = wait_for_entry(box, f"MESSAGE_ID={MESSAGE_ID_RELOAD_REFUSED}", "--since=-10s")
        assert f"{DROP_IN_DIR}/30-broken.toml:2" in entry["MESSAGE"]
        assert ctl(box, "status")["interval_s"] == 4.0
    finally:
        box.run("rm", "-f", *files, f"{DROP_IN_DIR}/30-broken.toml")
        box.run("systemctl", "reload", UNIT, check=False, timeout=60)


def test_the_metrics_textfile_and_portwatchctl_metrics_parse_as_prometheus_text(
    box: Sandbox,
) -> None:
    parser = pytest.importorskip("prometheus_client.parser")
    ensure_running(box)
    textfile = "/var/lib/portwatchd/portwatchd.prom"  # the unit may write its state dir
    with (
        config_file(box, f'metrics_textfile = "{textfile}"\n'),
        listening(box, "tcp:0.0.0.0:18700"),
    ):
        systemctl(box, "reload")

        def parsed() -> dict[str, Any] | None:
            try:
                text = box.read_file(textfile)
            except FileNotFoundError:
                return None
            return {family.name: family for family in parser.text_string_to_metric_families(text)}

        families = wait_for(parsed, "the metrics textfile")
        assert {
            "portwatchd_ports_watched",
            "portwatchd_events",
            "portwatchd_last_event_seq",
        } <= set(families), sorted(families)
        served = box.run("portwatchctl", "metrics").stdout
        names = {family.name for family in parser.text_string_to_metric_families(served)}
        assert names == set(families)
        mode = box.run("stat", "-c", "%a %U", textfile).stdout.split()
        assert mode == ["644", "portwatchd"]
