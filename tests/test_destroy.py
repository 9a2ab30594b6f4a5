"""Closes announced by the kernel: DestroyWatch on real sockets in a private network namespace.

Joining the destroy groups needs no capability, but the namespace does
(the `netns` fixture skips without root), so that no host socket's close
leaks into an assertion.
"""

from __future__ import annotations

import doctest
import os
import select
import shutil
import socket
import struct
import threading
import time
from collections.abc import Iterator
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portwatchd import transient
from portwatchd.model import Endpoint
from portwatchd.sources import netlink_parse
from portwatchd.sources.base import ScanError
from portwatchd.sources.destroy import DestroyWatch, ephemeral_range
from portwatchd.sources.destroy_parse import parse_destroyed
from portwatchd.sources.netlink import NetlinkScanner
from portwatchd.transient import is_listening_shaped, split_destroyed
from tests.netns import private_netns
from tests.other_user import python_as

SO_COOKIE = 57  # <asm-generic/socket.h>; Python 3.11's socket module lacks it
NETLINK_SOCK_DIAG = 4


def so_cookie(sock: socket.socket) -> int:
    """The socket's cookie as the socket layer itself reports it."""
    value: int = struct.unpack("=Q", sock.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8))[0]
    return value


def this_netns() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


def listener(address: str = "127.0.0.1", family: int = socket.AF_INET) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind((address, 0))
    sock.listen()
    return sock


def wait_readable(watch: DestroyWatch, timeout: float = 2.0) -> bool:
    return bool(select.select([watch], [], [], timeout)[0])


@pytest.fixture
def watch(netns: None) -> Iterator[DestroyWatch]:
    with DestroyWatch(netns=this_netns()) as opened:
        yield opened


def test_close_of_a_listener_arrives_with_the_cookie_of_the_dump(watch: DestroyWatch) -> None:
    server = listener()
    port = server.getsockname()[1]
    with NetlinkScanner() as scanner:
        dumped = [e for e in scanner.scan() if e.port == port]
    assert len(dumped) == 1
    assert dumped[0].cookie == so_cookie(server) != 0
    server.close()
    assert wait_readable(watch)
    batch = watch.read()
    assert not batch.overrun
    assert batch.sockets == [
        Endpoint(
            "tcp",
            "ipv4",
            "127.0.0.1",
            port,
            inode=0,
            uid=-1,
            netns=this_netns(),
            cookie=dumped[0].cookie,
        )
    ]
    assert batch.sockets[0].key == f"net:{this_netns()}/tcp:127.0.0.1:{port}"


def test_ipv6_and_udp_closes_say_their_protocol(watch: DestroyWatch) -> None:
    tcp6 = listener("::1", socket.AF_INET6)
    udp6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    udp6.bind(("::1", 0))
    expected = {("tcp", tcp6.getsockname()[1], so_cookie(tcp6))}
    expected.add(("udp", udp6.getsockname()[1], so_cookie(udp6)))
    tcp6.close()
    udp6.close()
    seen: list[Endpoint] = []
    while len(seen) < 2 and wait_readable(watch):
        seen += watch.read().sockets
    assert {(e.proto, e.port, e.cookie) for e in seen} == expected
    assert {(e.family, e.address) for e in seen} == {("ipv6", "::1")}


def test_connection_churn_never_wakes_the_watch(watch: DestroyWatch) -> None:
    # 500 TCP connections (both ends closed) and 100 connected UDP sockets:
    # all have a peer, and the BPF filter drops them in the kernel.
    server = listener()
    address = server.getsockname()
    for _ in range(500):
        client = socket.create_connection(address)
        accepted, _ = server.accept()
        client.close()
        accepted.close()
    for _ in range(100):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.connect(("127.0.0.1", 9))
        udp.close()
    assert not wait_readable(watch, 0.3), "a connection's close reached the socket"
    server.close()
    assert wait_readable(watch)
    assert [e.port for e in watch.read().sockets] == [address[1]]


def test_unaccepted_connections_of_a_closing_listener_are_left_out(watch: DestroyWatch) -> None:
    # The kernel announces a listener's queued children too, with the
    # listener's port, dport 0 and the peer as destination: not listeners.
    for family, address in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        server = listener(address, family)
        clients = [socket.create_connection(server.getsockname()[:2]) for _ in range(3)]
        port = server.getsockname()[1]
        server.close()
        assert wait_readable(watch)
        time.sleep(0.1)  # the children's messages, if any passed, come right after
        assert [(e.address, e.port) for e in watch.read().sockets] == [(address, port)]
        for client in clients:
            client.close()


def test_a_refused_connection_is_left_out(watch: DestroyWatch) -> None:
    # On a failed connect the kernel resets dport to 0 but keeps the peer.
    for family, address in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        client = socket.socket(family, socket.SOCK_STREAM)
        with pytest.raises(ConnectionRefusedError):
            client.connect((address, 1))
        client.close()
    assert not wait_readable(watch, 0.3)


def test_the_decoder_drops_connections_too_without_the_filter(netns: None) -> None:
    # The same churn through an unfiltered subscription: the messages do
    # arrive, and parse_destroyed keeps none of them.
    raw = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
    raw.bind((0, 0))
    raw.setsockopt(270, 1, 1)  # SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, SKNLGRP_INET_TCP_DESTROY
    server = listener()
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    client.close()
    accepted.close()
    messages = 0
    while select.select([raw], [], [], 0.3)[0]:
        assert parse_destroyed(raw.recv(65536)) == []
        messages += 1
    raw.close()
    server.close()
    assert messages == 2, "expected one destroy message per end of the connection"


@given(st.binary(max_size=400))
def test_any_bytes_decode_or_raise_scan_error(data: bytes) -> None:
    try:
        closed = parse_destroyed(data, interface_name=str)
    except ScanError:
        return
    assert all(0 < e.port <= 65535 for e in closed)


def test_overrun_is_reported_when_the_buffer_is_too_small(netns: None) -> None:
    # The kernel's floor for a receive buffer (SOCK_MIN_RCVBUF) holds a few
    # messages; 300 closes in one go cannot fit. The kernel sends them from
    # a work queue after close() returned: give it time to try them all
    # before reading (a reader keeping up would leave room for them).
    with DestroyWatch(receive_buffer=1) as small:
        servers = [listener() for _ in range(300)]
        for server in servers:
            server.close()
        time.sleep(0.5)
        batches = []
        while wait_readable(small, 0.3):
            batches.append(small.read())
    assert any(batch.overrun for batch in batches)
    assert 0 < sum(len(batch.sockets) for batch in batches) < 300


def test_a_large_enough_buffer_loses_nothing(watch: DestroyWatch) -> None:
    servers = [listener() for _ in range(300)]
    cookies = {so_cookie(server) for server in servers}
    for server in servers:
        server.close()
    closed: list[Endpoint] = []
    overrun = False
    while len(closed) < 300 and wait_readable(watch):
        batch = watch.read()
        closed += batch.sockets
        overrun |= batch.overrun
    assert not overrun
    assert {e.cookie for e in closed} == cookies


def test_a_socket_opened_in_another_namespace_hears_only_that_one(netns: None) -> None:
    with private_netns():
        inner_id = this_netns()
        inner_sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
        inner_server = listener()
    inner_port = inner_server.getsockname()[1]
    with DestroyWatch(inner_sock, netns=inner_id) as inner:
        outer_server = listener()
        outer_server.close()
        assert not wait_readable(inner, 0.2), "heard a close of another namespace"
        inner_server.close()
        assert wait_readable(inner)
        closed = inner.read().sockets
    assert [(e.port, e.netns) for e in closed] == [(inner_port, inner_id)]


def test_udp_client_sockets_are_not_listening_shaped(watch: DestroyWatch) -> None:
    low, high = ephemeral_range()
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.sendto(b"x", ("127.0.0.1", 9))  # auto-bound to an ephemeral port
    service = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    service.bind(("127.0.0.1", low - 1))  # a fixed port below the range
    client.close()
    service.close()
    closed: list[Endpoint] = []
    while len(closed) < 2 and wait_readable(watch):
        closed += watch.read().sockets
    shaped = {e.port: is_listening_shaped(e, (low, high)) for e in closed}
    assert shaped.pop(low - 1) is True
    assert list(shaped.values()) == [False]


NOBODY_SEES_A_CLOSE = """
import select
from portwatchd.sources.destroy import DestroyWatch
with DestroyWatch() as watch:
    print("ready", flush=True)
    if select.select([watch], [], [], 10)[0]:
        print(*[e.key for e in watch.read().sockets])
"""


def test_an_unprivileged_user_hears_the_close_of_roots_listener(netns: None) -> None:
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv(1) to drop root")
    server = listener()
    key = f"tcp:127.0.0.1:{server.getsockname()[1]}"
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"]
    # The child subscribes within the second; then root closes its listener.
    closer = threading.Timer(1.0, server.close)
    closer.start()
    try:
        result = python_as(nobody, "-c", NOBODY_SEES_A_CLOSE, timeout=60)
    finally:
        closer.cancel()
        server.close()
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ready", key]


@pytest.mark.parametrize("module", [transient, netlink_parse], ids=lambda m: m.__name__)
def test_the_examples_in_the_docstrings(module: ModuleType) -> None:
    failures, tried = doctest.testmod(module)
    assert tried > 0 and failures == 0


def test_a_listener_no_look_saw_is_told_from_one_a_look_saw(watch: DestroyWatch) -> None:
    # The engine's question, on real sockets: a dump saw `seen_server`, no
    # look saw `short_lived` (open 50 ms), and a UDP client came and went.
    seen_server = listener()
    with NetlinkScanner() as scanner:
        seen = {(this_netns(), e.cookie) for e in scanner.scan()}
    short_lived = listener()
    short_port = short_lived.getsockname()[1]
    time.sleep(0.05)
    short_lived.close()
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.sendto(b"x", ("127.0.0.1", 9))
    client.close()
    seen_port = seen_server.getsockname()[1]
    seen_server.close()
    closed: list[Endpoint] = []
    while len(closed) < 3 and wait_readable(watch):
        closed += watch.read().sockets
    known, unseen = split_destroyed(closed, seen, ephemeral_range())
    assert [e.port for e in known] == [seen_port]
    assert [e.port for e in unseen] == [short_port]
