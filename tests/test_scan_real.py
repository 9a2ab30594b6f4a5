"""Both scanners against real sockets, checked against `ss`, in a private network namespace.

`ss` (iproute2) is the independent witness: its output is parsed here, with
nothing from portwatchd, and both backends must report exactly its sockets.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from portwatchd.model import Endpoint
from portwatchd.sources.base import ScanError, SourceUnavailable
from portwatchd.sources.choose import open_scanner
from portwatchd.sources.netlink import NetlinkScanner
from portwatchd.sources.procnet import ProcScanner

REPO = Path(__file__).resolve().parent.parent
NOBODY = 65534


class Row(NamedTuple):
    proto: str
    family: str
    address: str
    port: int
    interface: str
    v6only: bool | None
    inode: int
    uid: int


def ss_listeners() -> list[Row]:
    """`ss -Hlntue`, parsed independently of portwatchd.

    Local address forms ss prints: 0.0.0.0:22, 127.0.0.53%lo:53,
    [::ffff:127.0.0.1]:53, [::]:22 (IPv6 wildcard, v6only), *:80 (IPv6
    wildcard, dual-stack), *%lo:99, [::1]%lo:99. uid: is left out for root.
    """
    output = subprocess.run(["ss", "-Hlntue"], capture_output=True, text=True, check=True).stdout
    rows = []
    for line in output.splitlines():
        proto, _state, _recv_q, _send_q, local, _peer, *extras = line.split()
        details = dict(item.split(":", 1) for item in extras if ":" in item)
        host, port = local.rsplit(":", 1)
        host, _, interface = host.partition("%")
        address = host.strip("[]")
        if address == "*":
            address = "::"
        family = "ipv6" if ":" in address else "ipv4"
        v6only = None if family == "ipv4" else details["v6only"] == "1"
        rows.append(
            Row(
                proto,
                family,
                address,
                int(port),
                interface,
                v6only,
                int(details["ino"]),
                int(details.get("uid", "0")),
            )
        )
    return sorted(rows)


def rows(endpoints: list[Endpoint]) -> list[Row]:
    return sorted(
        Row(e.proto, e.family, e.address, e.port, e.interface, e.v6only, e.inode, e.uid)
        for e in endpoints
    )


def without_netlink_only_fields(table: list[Row]) -> list[Row]:
    """What /proc can know: neither the bound device nor IPV6_V6ONLY."""
    return sorted(row._replace(interface="", v6only=None) for row in table)


class Sockets:
    """Opens sockets for one test and closes them all afterwards."""

    def __init__(self) -> None:
        self.open: list[socket.socket] = []

    def make(
        self,
        family: int,
        kind: int,
        address: tuple[str, int] | None = None,
        *,
        v6only: bool | None = None,
        reuseport: bool = False,
        device: str = "",
        listen: bool = True,
        uid: int = 0,
    ) -> socket.socket:
        if uid:
            os.seteuid(uid)  # a socket belongs to its creator's fsuid
        try:
            sock = socket.socket(family, kind)
        finally:
            if uid:
                os.seteuid(0)
        self.open.append(sock)
        if v6only is not None:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if device:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
        if address is not None:
            sock.bind(address)
        if kind == socket.SOCK_STREAM and listen:
            sock.listen()
        return sock

    def close(self) -> None:
        for sock in self.open:
            sock.close()


@pytest.fixture
def sockets(netns: None) -> Iterator[Sockets]:
    made = Sockets()
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def netlink(netns: None) -> Iterator[NetlinkScanner]:
    scanner = NetlinkScanner()  # opened inside the namespace: it dumps that namespace
    try:
        yield scanner
    finally:
        scanner.close()


V4, V6 = socket.AF_INET, socket.AF_INET6
TCP, UDP = socket.SOCK_STREAM, socket.SOCK_DGRAM


def open_zoo(sockets: Sockets) -> dict[str, socket.socket]:
    """One of every case the scanners must get right, by name."""
    s = sockets.make
    named = {
        "tcp4_any": s(V4, TCP, ("0.0.0.0", 22)),
        "tcp6_any_v6only": s(V6, TCP, ("::", 22), v6only=True),
        "tcp6_any_dual": s(V6, TCP, ("::", 80), v6only=False),
        "tcp6_mapped": s(V6, TCP, ("::ffff:127.0.0.1", 8443)),
        "tcp6_loopback": s(V6, TCP, ("::1", 8444)),
        "tcp4_nobody": s(V4, TCP, ("127.0.0.1", 8080), uid=NOBODY),
        "tcp4_device": s(V4, TCP, ("0.0.0.0", 99), device="lo"),
        "tcp6_device": s(V6, TCP, ("::1", 99), device="lo"),
        "tcp4_bound_only": s(V4, TCP, ("127.0.0.1", 1234), listen=False),
        "udp4_any": s(V4, UDP, ("0.0.0.0", 5353)),
        "udp4_device": s(V4, UDP, ("127.0.0.53", 53), device="lo"),
        "udp6_any_v6only": s(V6, UDP, ("::", 546), v6only=True),
        "udp6_any_dual": s(V6, UDP, ("::", 547), v6only=False),
        "udp6_mapped": s(V6, UDP, ("::ffff:127.0.0.1", 5300)),
        "udp6_device_dual": s(V6, UDP, ("::", 99), device="lo", v6only=False),
        "udp4_reuse_a": s(V4, UDP, ("127.0.0.1", 6000), reuseport=True),
        "udp4_reuse_b": s(V4, UDP, ("127.0.0.1", 6000), reuseport=True),
        "tcp4_reuse_a": s(V4, TCP, ("127.0.0.1", 6000), reuseport=True),
        "tcp4_reuse_b": s(V4, TCP, ("127.0.0.1", 6000), reuseport=True),
        "udp4_connected": s(V4, UDP, ("127.0.0.1", 6001)),
        "udp4_autobound": s(V4, UDP),
        "udp6_unbound": s(V6, UDP),
    }
    named["udp4_connected"].connect(("127.0.0.1", 9))
    named["udp4_autobound"].sendto(b"x", ("127.0.0.1", 9))
    client = socket.create_connection(("127.0.0.1", 8080))  # an ESTABLISHED pair
    sockets.open += [client, named["tcp4_nobody"].accept()[0]]
    return named


def inode(sock: socket.socket) -> int:
    return os.stat(f"/proc/self/fd/{sock.fileno()}").st_ino


def test_both_backends_report_exactly_what_ss_reports(
    sockets: Sockets, netlink: NetlinkScanner
) -> None:
    open_zoo(sockets)
    expected = ss_listeners()
    assert len(expected) == 19, "the zoo changed or ss disagrees with the test about it"
    assert rows(netlink.scan()) == expected
    assert rows(ProcScanner().scan()) == without_netlink_only_fields(expected)


def test_what_counts_as_listening(sockets: Sockets, netlink: NetlinkScanner) -> None:
    zoo = open_zoo(sockets)
    found = netlink.scan()
    by_inode = {e.inode: e for e in found}
    proc_by_inode = {e.inode: e for e in ProcScanner().scan()}
    for name in ("tcp4_bound_only", "udp4_connected", "udp6_unbound"):
        assert inode(zoo[name]) not in by_inode, name
        assert inode(zoo[name]) not in proc_by_inode, name
    # Only the listener of the established pair on port 8080 counts.
    assert [e.key for e in found if e.port == 8080] == ["tcp:127.0.0.1:8080"]
    # Auto-bound by sendto(2): unconnected and bound, listed by ss -lnu, so by us.
    autobound = by_inode[inode(zoo["udp4_autobound"])]
    assert autobound.key == f"udp:0.0.0.0:{zoo['udp4_autobound'].getsockname()[1]}"
    assert by_inode[inode(zoo["tcp4_nobody"])].uid == NOBODY


def test_netlink_reports_v6only_devices_and_mapped_addresses(
    sockets: Sockets, netlink: NetlinkScanner
) -> None:
    zoo = open_zoo(sockets)
    by_inode = {e.inode: e for e in netlink.scan()}

    def seen(name: str) -> Endpoint:
        return by_inode[inode(zoo[name])]

    assert seen("tcp6_any_v6only").v6only is True
    assert seen("tcp6_any_dual").v6only is False
    assert seen("udp6_any_v6only").v6only is True
    assert seen("udp6_any_dual").v6only is False
    assert seen("tcp4_any").v6only is None
    assert seen("tcp4_any").key == "tcp:0.0.0.0:22"
    assert seen("tcp6_any_v6only").key == "tcp:[::]:22"  # distinct from 0.0.0.0
    assert seen("tcp6_mapped").key == "tcp:[::ffff:127.0.0.1]:8443"
    assert seen("udp6_mapped").address == "::ffff:127.0.0.1"
    assert seen("udp4_device").key == "udp:127.0.0.53%lo:53"
    assert seen("tcp4_device").key == "tcp:0.0.0.0%lo:99"
    assert seen("tcp6_device").key == "tcp:[::1%lo]:99"
    assert seen("udp6_device_dual").key == "udp:[::%lo]:99"


def test_proc_cannot_see_devices_or_v6only(sockets: Sockets) -> None:
    zoo = open_zoo(sockets)
    by_inode = {e.inode: e for e in ProcScanner().scan()}
    assert by_inode[inode(zoo["udp4_device"])].key == "udp:127.0.0.53:53"
    assert {e.interface for e in by_inode.values()} == {""}
    assert {e.v6only for e in by_inode.values()} == {None}


@pytest.mark.parametrize("backend", ["netlink", "proc"])
def test_reuseport_sockets_are_two_endpoints_with_one_key(sockets: Sockets, backend: str) -> None:
    zoo = open_zoo(sockets)
    scanner = open_scanner(backend)
    try:
        found = scanner.scan()
    finally:
        scanner.close()
    for proto in ("tcp", "udp"):
        sharing = [e for e in found if e.key == f"{proto}:127.0.0.1:6000"]
        assert sorted(e.inode for e in sharing) == sorted(
            inode(zoo[f"{proto}4_reuse_{x}"]) for x in "ab"
        )


def test_one_socket_follows_opens_and_closes(sockets: Sockets, netlink: NetlinkScanner) -> None:
    assert netlink.scan() == []
    listener = sockets.make(V6, TCP, ("::", 2222), v6only=False)
    assert [e.key for e in netlink.scan()] == ["tcp:[::]:2222"]
    listener.close()
    assert netlink.scan() == []
    assert rows(netlink.scan()) == ss_listeners() == []


def test_changes_to_a_known_socket_are_seen(sockets: Sockets, netlink: NetlinkScanner) -> None:
    # Unchanged dumps are recognised by their bytes (see NetlinkScanner): any
    # change to a socket must still come through.
    listener = sockets.make(V4, TCP, ("0.0.0.0", 7000))
    receiver = sockets.make(V4, UDP, ("127.0.0.1", 7001))
    assert sorted(e.key for e in netlink.scan()) == ["tcp:0.0.0.0:7000", "udp:127.0.0.1:7001"]
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"lo")
    # Queued data changes the socket's receive queue in the dump, not what it is.
    sender = sockets.make(V4, UDP)
    sender.connect(("127.0.0.1", 7001))  # connected: not listening itself
    sender.send(b"queued")
    assert sorted(e.key for e in netlink.scan()) == ["tcp:0.0.0.0%lo:7000", "udp:127.0.0.1:7001"]
    assert receiver.recv(100) == b"queued"
    assert rows(netlink.scan()) == ss_listeners()


def test_renamed_device_is_reported_by_its_new_name(
    sockets: Sockets, netlink: NetlinkScanner
) -> None:
    created = subprocess.run(
        ["ip", "link", "add", "pwtest0", "type", "bridge"],
        capture_output=True,
        text=True,
        check=False,
    )
    if created.returncode != 0:
        pytest.skip(f"cannot create a bridge device: {created.stderr.strip()}")
    sockets.make(V4, TCP, ("0.0.0.0", 7000), device="pwtest0")
    assert [e.key for e in netlink.scan()] == ["tcp:0.0.0.0%pwtest0:7000"]
    subprocess.run(["ip", "link", "set", "pwtest0", "name", "pwtest1"], check=True)
    assert [e.key for e in netlink.scan()] == ["tcp:0.0.0.0%pwtest1:7000"]
    assert rows(netlink.scan()) == ss_listeners()


class OverflowingOnceSocket(socket.socket):
    """A real sock_diag socket whose first receive reports ENOBUFS, as after an overflow."""

    overflows_left = 1

    def recv_into(self, *args: Any) -> int:
        if OverflowingOnceSocket.overflows_left > 0:
            OverflowingOnceSocket.overflows_left -= 1
            raise OSError(errno.ENOBUFS, "No buffer space available")
        return super().recv_into(*args)


def test_enobufs_redoes_the_dump_on_a_new_socket(sockets: Sockets) -> None:
    sockets.make(V4, TCP, ("127.0.0.1", 7000))
    opened: list[socket.socket] = []

    def factory() -> socket.socket:
        opened.append(OverflowingOnceSocket(socket.AF_NETLINK, socket.SOCK_RAW, 4))
        return opened[-1]

    OverflowingOnceSocket.overflows_left = 1
    with NetlinkScanner(socket_factory=factory) as scanner:
        assert [e.key for e in scanner.scan()] == ["tcp:127.0.0.1:7000"]
        assert len(opened) == 2, "the overflowed socket was not replaced"
        assert opened[0].fileno() == -1, "the overflowed socket was not closed"

        OverflowingOnceSocket.overflows_left = 100
        with pytest.raises(ScanError) as caught:
            scanner.scan()
        assert caught.value.errno == errno.ENOBUFS
        assert "tcp" in str(caught.value)
        OverflowingOnceSocket.overflows_left = 0
        assert [e.key for e in scanner.scan()] == ["tcp:127.0.0.1:7000"]


def test_receive_raw_of_an_empty_namespace_is_four_done_messages(
    netlink: NetlinkScanner,
) -> None:
    # Each dump ends with NLMSG_DONE: a 16-byte header and an int.
    assert netlink.receive_raw() == 4 * 20
    assert netlink.scan() == [], "receive_raw left replies behind"


def test_receive_raw_counts_the_listeners(sockets: Sockets, netlink: NetlinkScanner) -> None:
    empty = netlink.receive_raw()
    sockets.make(V4, TCP, ("127.0.0.1", 2222))
    assert netlink.receive_raw() > empty + 72  # at least one more inet_diag_msg
    assert [e.port for e in netlink.scan()] == [2222]


def test_auto_prefers_netlink_and_logs_nothing(netns: None) -> None:
    logged: list[str] = []
    scanner = open_scanner("auto", log=logged.append)
    try:
        assert scanner.name == "netlink"
        assert scanner.scan() == []
    finally:
        scanner.close()
    assert logged == []


def refused_netlink_socket() -> socket.socket:
    raise PermissionError(errno.EPERM, "Operation not permitted")


class DumpRefusingSocket(socket.socket):
    """A real netlink socket whose dump requests a sandbox rejects."""

    def sendto(self, *args: Any) -> int:
        raise OSError(errno.EACCES, "Permission denied")


def test_auto_falls_back_to_proc_once_when_socket_creation_is_refused(
    sockets: Sockets,
) -> None:
    sockets.make(V4, TCP, ("127.0.0.1", 2222))
    logged: list[str] = []
    scanner = open_scanner("auto", log=logged.append, netlink_socket_factory=refused_netlink_socket)
    assert scanner.name == "proc"
    assert [e.key for e in scanner.scan()] == ["tcp:127.0.0.1:2222"]
    assert [e.key for e in scanner.scan()] == ["tcp:127.0.0.1:2222"]
    assert len(logged) == 1
    assert "falling back to /proc/self/net" in logged[0]
    assert "Operation not permitted" in logged[0]


def test_auto_falls_back_when_the_first_dump_is_refused(netns: None) -> None:
    logged: list[str] = []

    def factory() -> socket.socket:
        return DumpRefusingSocket(socket.AF_NETLINK, socket.SOCK_RAW, 4)

    scanner = open_scanner("auto", log=logged.append, netlink_socket_factory=factory)
    assert scanner.name == "proc"
    assert len(logged) == 1
    assert "Permission denied" in logged[0]


def test_explicit_netlink_reports_refusal_instead_of_falling_back() -> None:
    with pytest.raises(SourceUnavailable) as caught:
        open_scanner("netlink", netlink_socket_factory=refused_netlink_socket)
    assert caught.value.errno == errno.EPERM
    assert caught.value.source == "netlink"


def test_unknown_backend_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown scanner backend 'nl'"):
        open_scanner("nl")


def test_other_netlink_failures_are_not_papered_over(netns: None) -> None:
    class BrokenSocket(socket.socket):
        def sendto(self, *args: Any) -> int:
            raise OSError(errno.EIO, "Input/output error")

    def factory() -> socket.socket:
        return BrokenSocket(socket.AF_NETLINK, socket.SOCK_RAW, 4)

    with pytest.raises(ScanError) as caught:
        open_scanner("auto", log=pytest.fail, netlink_socket_factory=factory)
    assert not isinstance(caught.value, SourceUnavailable)
    assert caught.value.errno == errno.EIO


# A seccomp filter, installed in a child process, that makes socket(AF_NETLINK, ...)
# fail with the given errno, as a sandbox would: EPERM from a seccomp profile,
# EAFNOSUPPORT from systemd's RestrictAddressFamilies=.
SANDBOXED_CHILD = textwrap.dedent(
    """
    import ctypes, json, socket, sys
    from portwatchd.sources.choose import open_scanner

    class SockFilter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8),
                    ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]

    LD_W_ABS, JEQ_K, RET_K = 0x20, 0x15, 0x06
    ALLOW, ERRNO = 0x7FFF0000, 0x00050000
    AUDIT_ARCH_X86_64, NR_SOCKET = 0xC000003E, 41
    program = [
        (LD_W_ABS, 0, 0, 4),                    # seccomp_data.arch
        (JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        (RET_K, 0, 0, ALLOW),
        (LD_W_ABS, 0, 0, 0),                    # seccomp_data.nr
        (JEQ_K, 0, 3, NR_SOCKET),
        (LD_W_ABS, 0, 0, 16),                   # args[0], low word (little-endian)
        (JEQ_K, 0, 1, socket.AF_NETLINK),
        (RET_K, 0, 0, ERRNO | int(sys.argv[1])),
        (RET_K, 0, 0, ALLOW),
    ]
    filters = (SockFilter * len(program))(*[SockFilter(*f) for f in program])
    prog = SockFprog(len(program), filters)
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
    assert libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
    assert libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) == 0

    logged = []
    scanner = open_scanner("auto", log=logged.append)
    print(json.dumps({"name": scanner.name, "logged": logged,
                      "keys": [e.key for e in scanner.scan()]}))
    """
)


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the seccomp filter is for x86-64")
@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (errno.EPERM, "Operation not permitted"),
        (errno.EAFNOSUPPORT, "Address family not supported"),
    ],
)
def test_auto_falls_back_under_a_real_seccomp_sandbox(
    sockets: Sockets, code: int, reason: str
) -> None:
    sockets.make(V6, UDP, ("::", 5353), v6only=True)
    child = subprocess.run(
        [sys.executable, "-c", SANDBOXED_CHILD, str(code)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
        timeout=60,
    )
    assert child.returncode == 0, child.stderr
    result = json.loads(child.stdout)
    assert result["name"] == "proc"
    assert result["keys"] == ["udp:[::]:5353"]
    assert len(result["logged"]) == 1
    assert reason in result["logged"][0]
    assert "falling back to /proc/self/net" in result["logged"][0]
