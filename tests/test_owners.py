"""Socket owners: real listeners in real processes, and the pure parsers.

Sockets are opened inside the `netns` fixture so that no host listener
leaks into an assertion; processes are still visible in /proc, which is
exactly what the resolver walks.
"""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portwatchd.model import UNKNOWN_OWNER
from portwatchd.sources.owners import OwnerResolver
from portwatchd.sources.procinfo import (
    CMDLINE_MAX_CHARS,
    ProcessInfo,
    ProcStat,
    main_process,
    owner_of,
    parse_cmdline,
    parse_stat,
    parse_status_uid,
    socket_inode,
    unit_from_cgroup,
)

MARKER = "portwatchd-owners-test"

# A child that listens, reports its socket's inode, and lives until its
# stdin closes. Extra fds (argv[1]) push the listener far down the fd table.
LISTENER = """
import os, socket, sys
extra = [os.open("/dev/null", os.O_RDONLY) for _ in range(int(sys.argv[1]))]
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen()
print(os.fstat(listener.fileno()).st_ino, flush=True)
sys.stdin.read()
"""

# A child that only holds what it inherited, until its stdin closes.
HOLDER = "import sys; print('ready', flush=True); sys.stdin.read()"


class FakeClock:
    def __init__(self, tick: float = 0.0) -> None:
        self.now = 1000.0
        self.tick = tick  # added at every reading: makes any budget run out

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def socket_inode_of(sock: socket.socket) -> int:
    return os.fstat(sock.fileno()).st_ino


class Child:
    """A python child process, stopped by closing its stdin."""

    def __init__(self, code: str, *args: str, pass_fds: tuple[int, ...] = ()) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", f"# {MARKER}\n{code.strip()}", MARKER, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            pass_fds=pass_fds,
        )
        assert self.process.stdout is not None
        self.first_line = self.process.stdout.readline().strip()

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            self.process.wait(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture
def children() -> Iterator[list[Child]]:
    started: list[Child] = []
    yield started
    for child in started:
        child.stop()


def start_listener(children: list[Child], extra_fds: int = 0) -> tuple[Child, int]:
    # The marker takes argv[1]; the extra fd count comes after it.
    code = LISTENER.replace("sys.argv[1]", "sys.argv[2]")
    child = Child(code, str(extra_fds))
    children.append(child)
    return child, int(child.first_line)


def closed_socket_inode() -> int:
    """The inode of a socket that no process holds any more."""
    with socket.socket() as sock:
        return socket_inode_of(sock)


# --- real processes -------------------------------------------------------------


def test_listener_in_child_process_is_resolved(netns: None, children: list[Child]) -> None:
    resolver = OwnerResolver()
    child, inode = start_listener(children)

    owner = resolver.resolve([inode])[inode]

    assert owner.pid == child.pid
    assert owner.pids == (child.pid,)
    assert owner.comm == Path(sys.executable).name[:15]
    assert owner.exe == os.path.realpath(sys.executable)
    assert owner.cmdline is not None
    # One line: NULs between arguments and the newlines of -c code become spaces.
    assert owner.cmdline.startswith(f"{sys.executable} -c # {MARKER} import os")
    assert len(owner.cmdline) <= CMDLINE_MAX_CHARS
    assert owner.uid == os.geteuid()
    assert owner.user == pwd.getpwuid(os.geteuid()).pw_name
    assert owner.unit == unit_from_cgroup(Path(f"/proc/{child.pid}/cgroup").read_text())


def test_resolve_new_finds_a_new_process_without_a_full_walk(
    netns: None, children: list[Child]
) -> None:
    resolver = OwnerResolver()
    child, inode = start_listener(children)

    found = resolver.resolve_new([inode])

    assert found[inode].pid == child.pid
    assert resolver.stats.full_walks == 0
    # Only the new processes were read, not the whole host.
    assert resolver.stats.processes_scanned < len([p for p in os.listdir("/proc") if p.isdigit()])


def test_old_process_opening_a_listener_is_found_only_by_the_walk(netns: None) -> None:
    resolver = OwnerResolver(clock=FakeClock())
    # This test process existed before the resolver: a reload, not a new server.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        inode = socket_inode_of(listener)

        assert resolver.resolve_new([inode]) == {}
        assert resolver.stats.full_walks == 0

        owner = resolver.resolve_walk([inode])[inode]
        assert owner.pid == os.getpid()
        assert resolver.stats.full_walks == 1


@pytest.mark.parametrize("resolver_first", [True, False], ids=["child-is-new", "both-old"])
def test_socket_shared_by_two_processes_names_the_oldest(
    netns: None, children: list[Child], resolver_first: bool
) -> None:
    resolver = OwnerResolver() if resolver_first else None
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        inode = socket_inode_of(listener)
        child = Child(HOLDER, pass_fds=(listener.fileno(),))
        children.append(child)
        resolver = resolver or OwnerResolver()

        owner = resolver.resolve([inode])[inode]

        assert owner.pids == tuple(sorted((os.getpid(), child.pid)))
        assert owner.pid == os.getpid()  # the parent is older than its child
        assert owner.exe == os.path.realpath(sys.executable)


def test_cached_owner_is_corrected_by_the_next_full_walk(
    netns: None, children: list[Child]
) -> None:
    clock = FakeClock()
    resolver = OwnerResolver(clock=clock, min_walk_interval_s=5.0)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        inode = socket_inode_of(listener)
        assert resolver.resolve([inode])[inode].pids == (os.getpid(),)

        # A worker inherits the socket after it was resolved: the cache does
        # not know yet, and asking again costs nothing.
        child = Child(HOLDER, pass_fds=(listener.fileno(),))
        children.append(child)
        assert resolver.resolve([inode])[inode].pids == (os.getpid(),)

        # The next full walk (here for some other, unknown socket) sees both.
        clock.now += 5.0
        resolver.resolve([closed_socket_inode()])
        assert resolver.resolve([inode])[inode].pids == tuple(sorted((os.getpid(), child.pid)))


def test_exited_process_and_unheld_inode_are_unknown(netns: None, children: list[Child]) -> None:
    resolver = OwnerResolver(clock=FakeClock())
    child, inode = start_listener(children)
    assert resolver.resolve([inode])[inode].pid == child.pid

    child.stop()
    resolver.forget([inode])

    assert resolver.resolve([inode]) == {inode: UNKNOWN_OWNER}
    gone = closed_socket_inode()
    assert resolver.resolve([gone]) == {gone: UNKNOWN_OWNER}


def test_process_that_exits_before_resolution_is_unknown(
    netns: None, children: list[Child]
) -> None:
    resolver = OwnerResolver(clock=FakeClock())
    child, inode = start_listener(children)
    child.stop()

    assert resolver.resolve([inode]) == {inode: UNKNOWN_OWNER}


def test_full_walk_is_rate_limited_and_backs_off(netns: None) -> None:
    clock = FakeClock()
    resolver = OwnerResolver(clock=clock, min_walk_interval_s=5.0)
    gone = closed_socket_inode()

    assert resolver.resolve_walk([gone]) == {}
    assert resolver.stats.full_walks == 1
    assert resolver.stats.walks_completed == 1

    clock.now += 4.0  # inside the interval: no walk
    assert resolver.resolve_walk([gone]) == {}
    assert resolver.stats.full_walks == 1
    assert resolver.stats.walks_deferred == 1

    clock.now += 1.0  # interval over: the unknown inode is retried
    assert resolver.resolve_walk([gone]) == {}
    assert resolver.stats.full_walks == 2

    clock.now += 5.0  # missed twice: next retry only after 2 intervals
    resolver.resolve_walk([gone])
    assert resolver.stats.full_walks == 2
    clock.now += 5.0
    resolver.resolve_walk([gone])
    assert resolver.stats.full_walks == 3


def test_unknown_inode_found_later_once_a_process_holds_it(netns: None) -> None:
    clock = FakeClock()
    resolver = OwnerResolver(clock=clock, min_walk_interval_s=5.0)
    with socket.socket() as sock:
        inode = socket_inode_of(sock)
        with socket.socket() as other:
            # A walk for another inode first: the resolver does not cache "unknown".
            assert resolver.resolve_walk([socket_inode_of(other) + 10**9]) == {}
        clock.now += 5.0
        assert resolver.resolve_walk([inode])[inode].pid == os.getpid()


def test_sockets_found_on_the_way_cost_nothing_later(netns: None) -> None:
    resolver = OwnerResolver(clock=FakeClock())
    with socket.socket() as first, socket.socket() as second:
        first_inode, second_inode = socket_inode_of(first), socket_inode_of(second)
        assert resolver.resolve_walk([first_inode])[first_inode].pid == os.getpid()
        scanned = resolver.stats.processes_scanned

        # Inside the rate limit, yet resolved: the walk already saw it.
        assert resolver.resolve_walk([second_inode])[second_inode].pid == os.getpid()
        assert resolver.resolve_new([second_inode])[second_inode].pid == os.getpid()
        assert resolver.stats.processes_scanned == scanned
        assert resolver.stats.walks_deferred == 0


def test_walk_cut_by_budget_resumes_where_it_stopped(netns: None, children: list[Child]) -> None:
    # Every clock reading advances 1 s, so every piece overruns its budget:
    # each call reads one process (or one chunk of a long fd table).
    resolver = OwnerResolver(clock=FakeClock(tick=1.0), walk_budget_s=0.5, min_walk_interval_s=0.0)
    child, inode = start_listener(children, extra_fds=2000)

    found = {}
    for _ in range(10_000):
        found = resolver.resolve_walk([inode])
        if found:
            break

    assert found[inode].pid == child.pid
    assert resolver.stats.full_walks == 1  # resumed, never restarted
    assert resolver.stats.walks_cut_by_budget >= 1
    assert resolver.stats.walk_pieces > 1


def test_methods_refuse_to_run_twice_at_once() -> None:
    resolver = OwnerResolver(clock=FakeClock())
    with resolver._exclusive(), pytest.raises(RuntimeError, match="two threads"):
        resolver.resolve([1])


# --- a fake proc tree: what real processes cannot show on demand -----------------


def write_process(root: Path, pid: int, start_time: int, sockets: list[int]) -> None:
    base = root / str(pid)
    (base / "fd").mkdir(parents=True, exist_ok=True)
    fields = ["S", "1", *["0"] * 17, str(start_time), "0"]
    (base / "stat").write_bytes(f"{pid} (fake{pid}) {' '.join(fields)}\n".encode())
    (base / "cmdline").write_bytes(f"fake{pid}\0--serve\0".encode())
    (base / "status").write_text("Name:\tfake\nUid:\t0\t1000\t0\t0\n")
    (base / "cgroup").write_text("0::/system.slice/fake.service\n")
    for old_link in (base / "fd").iterdir():
        old_link.unlink()
    for fd, inode in enumerate(sockets, start=3):
        (base / "fd" / str(fd)).symlink_to(f"socket:[{inode}]")
    (base / "fd" / "0").symlink_to("/dev/null")


def test_fake_tree_tie_on_start_time_picks_lowest_pid(tmp_path: Path) -> None:
    write_process(tmp_path, 300, start_time=500, sockets=[77])
    write_process(tmp_path, 200, start_time=500, sockets=[77])
    write_process(tmp_path, 100, start_time=900, sockets=[77, 78])

    owner = OwnerResolver(str(tmp_path), clock=FakeClock()).resolve([77])[77]

    assert owner.pid == 200
    assert owner.pids == (100, 200, 300)
    assert owner.comm == "fake200"
    assert owner.cmdline == "fake200 --serve"
    assert owner.uid == 1000  # the effective uid
    assert owner.unit == "fake.service"
    assert owner.exe is None  # no exe link in the tree: unseen, not guessed


def test_fake_tree_reused_pid_does_not_inherit_sockets(tmp_path: Path) -> None:
    write_process(tmp_path, 100, start_time=500, sockets=[77, 78])
    resolver = OwnerResolver(str(tmp_path), clock=FakeClock())
    assert resolver.resolve_walk([77])[77].pid == 100  # 78 seen on the way

    # Process 100 exits and the kernel hands its pid to a newer process.
    write_process(tmp_path, 100, start_time=9000, sockets=[])

    assert resolver.resolve([78]) == {78: UNKNOWN_OWNER}


def test_fake_tree_new_process_found_by_resolve_new(tmp_path: Path) -> None:
    write_process(tmp_path, 100, start_time=500, sockets=[1])
    resolver = OwnerResolver(str(tmp_path), clock=FakeClock())
    write_process(tmp_path, 4000, start_time=9000, sockets=[55])

    assert resolver.resolve_new([55])[55].pid == 4000
    assert resolver.resolve_new([1]) == {}  # an old process: left to the walk
    assert resolver.stats.full_walks == 0


# --- pure parts -----------------------------------------------------------------

# Recorded from real hosts (Debian 12 cgroup v2, Ubuntu 20.04 hybrid, docker).
CGROUPS = [
    ("0::/system.slice/nginx.service\n", "nginx.service"),
    (
        "0::/user.slice/user-1000.slice/user@1000.service/app.slice/foo.service\n",
        "foo.service",
    ),
    ("0::/user.slice/user-1000.slice/session-3.scope\n", "session-3.scope"),
    ("0::/init.scope\n", "init.scope"),
    ("0::/user.slice/user-1000.slice/user@1000.service/init.scope\n", "init.scope"),
    ("0::/system.slice/docker-0123abcd.scope\n", "docker-0123abcd.scope"),
    ("0::/system.slice/containerd.service/payload\n", "containerd.service"),
    ("0::/system.slice/getty@tty1.service\n", "getty@tty1.service"),
    ("0::/system.slice/gone.service (deleted)\n", "gone.service"),
    ("0::/\n", None),
    ("0::/user.slice\n", None),
    ("", None),
    (
        "12:pids:/system.slice/ssh.service\n1:name=systemd:/system.slice/ssh.service\n0::/\n",
        "ssh.service",
    ),
    (
        "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/4de68024532d\n0::/\n",
        None,
    ),
]


@pytest.mark.parametrize(("text", "unit"), CGROUPS)
def test_unit_from_cgroup(text: str, unit: str | None) -> None:
    assert unit_from_cgroup(text) == unit


@given(st.text())
def test_unit_from_cgroup_never_crashes(text: str) -> None:
    unit = unit_from_cgroup(text)
    assert unit is None or "/" not in unit


def test_parse_stat_recorded_line_with_awkward_comm() -> None:
    line = (
        b"1234 (tmux: server) S 1 1234 1234 0 -1 4194624 2189 0 0 0 57 26 0 0 20 0"
        b" 1 0 26862 9998336 1079 18446744073709551615 1 1 0 0 0 0 0 3674113 1002 0 0 0 17"
    )
    stat = parse_stat(line)
    assert (stat.comm, stat.ppid, stat.start_time) == ("tmux: server", 1, 26862)
    assert (
        parse_stat(b"5 ((sd-pam)) S 4 5 5 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 77 0").comm == "(sd-pam)"
    )


@given(st.binary())
def test_parse_stat_any_bytes_parse_or_raise_value_error(data: bytes) -> None:
    try:
        stat = parse_stat(data)
    except ValueError:
        return
    assert isinstance(stat.comm, str)
    assert isinstance(stat.start_time, int)


def test_parse_cmdline() -> None:
    assert parse_cmdline(b"/usr/sbin/nginx\0-g\0daemon off;\0") == "/usr/sbin/nginx -g daemon off;"
    assert parse_cmdline(b"") == ""
    assert parse_cmdline(b"x" * 1000) == "x" * CMDLINE_MAX_CHARS
    assert parse_cmdline(b"caf\xe9\0") == "caf\\xe9"
    assert parse_cmdline(b"sh\0-c\0a\nb\tc\0") == "sh -c a b c"


def test_parse_status_uid() -> None:
    status = (
        "Name:\tsshd\nUmask:\t0022\nState:\tS (sleeping)\nUid:\t0\t33\t33\t33\nGid:\t0\t0\t0\t0\n"
    )
    assert parse_status_uid(status) == 33
    assert parse_status_uid("Name:\tx\n") is None


def test_socket_inode() -> None:
    assert socket_inode("socket:[123456]") == 123456
    assert socket_inode("pipe:[123456]") is None
    assert socket_inode("anon_inode:[eventfd]") is None
    assert socket_inode("/tmp/socket:[1]") is None


def stat(start_time: int) -> ProcStat:
    return ProcStat(comm="x", ppid=1, start_time=start_time)


def test_main_process_is_the_oldest_then_the_lowest_pid() -> None:
    assert main_process([(30, stat(5)), (10, stat(9)), (20, stat(5))]) == 20
    assert main_process([(10, stat(9))]) == 10


def test_owner_of_lists_every_pid_and_describes_the_main_one() -> None:
    main = ProcessInfo(20, 5, "nginx", "/usr/sbin/nginx", "nginx: master", 0, "nginx.service")
    owner = owner_of(main, [30, 10, 20], user_of=lambda uid: "root")
    assert owner.pids == (10, 20, 30)
    assert (owner.pid, owner.comm, owner.user, owner.unit) == (20, "nginx", "root", "nginx.service")
    assert owner.describe() == "nginx[20] (nginx.service)"
