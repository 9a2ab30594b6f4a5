"""Listening sockets from the kernel's sock_diag netlink interface (the fast source).

One NETLINK_SOCK_DIAG socket stays open; each scan sends four
SOCK_DIAG_BY_FAMILY dump requests (TCP and UDP, IPv4 and IPv6) and decodes
the `struct inet_diag_msg` replies with `netlink_parse.parse_dump`, a pure
function of the received bytes (the kernel facts it relies on, and a reply
decoded byte by byte, are in that module's docstring).

sock_diag answers for the network namespace the socket was made in. A
scanner for another namespace takes a factory that makes its socket
there (nsopen.socket_factory), the namespace's inode to stamp on every
endpoint (`netns`), and that namespace's interface names
(nsaddr.InterfaceNames): if_indextoname() would answer for ours.
"""

from __future__ import annotations

import errno as errno_codes
import socket
import struct
from collections.abc import Callable
from dataclasses import replace
from typing import Final, NamedTuple, Protocol

from portwatchd.model import Endpoint, Proto
from portwatchd.sources.base import UNAVAILABLE_ERRNOS, ParseError, ScanError, SourceUnavailable
from portwatchd.sources.netlink_parse import (
    ERRNO,
    FAMILY_NAMES,
    NLMSG_DONE,
    NLMSGHDR,
    NLMSGHDR_SIZE,
    SOCK_DIAG_BY_FAMILY,
    SOURCE,
    TCP_CLOSE,
    TCP_LISTEN,
    ReuseKey,
    interface_name,
    parse_dump,
)

NETLINK_SOCK_DIAG: Final = 4
NLM_F_REQUEST: Final = 0x1
NLM_F_DUMP: Final = 0x300  # NLM_F_ROOT | NLM_F_MATCH

# Which sockets each dump asks for, by the state the kernel keeps them in.
STATES_BY_PROTO: Final[dict[str, int]] = {"tcp": 1 << TCP_LISTEN, "udp": 1 << TCP_CLOSE}
IPPROTO_BY_PROTO: Final[dict[str, int]] = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}
DUMPS: Final[tuple[tuple[Proto, int], ...]] = (
    ("tcp", socket.AF_INET),
    ("tcp", socket.AF_INET6),
    ("udp", socket.AF_INET),
    ("udp", socket.AF_INET6),
)

# Host byte order, as netlink_parse.NLMSGHDR.
# struct inet_diag_req_v2 { u8 family, protocol, ext, pad; u32 states; struct inet_diag_sockid id; }
INET_DIAG_REQ_V2: Final = struct.Struct("=BBBxI48x")
REQUEST: Final = struct.Struct(NLMSGHDR.format + INET_DIAG_REQ_V2.format[1:])

RECEIVE_BUFFER_BYTES: Final = 1 << 16  # above the kernel's 32 KiB cap per dump datagram
SOCKET_RCVBUF_BYTES: Final = 1 << 20
REPLY_TIMEOUT_S: Final = 5
ENOBUFS_RETRIES: Final = 3
REUSE_SLACK: Final = 1024


class InterfaceLookup(Protocol):
    """Index -> name in the scanned namespace; `forget` starts a new scan."""

    def __call__(self, index: int) -> str: ...

    def forget(self) -> None: ...


def new_receive_buffer() -> bytearray:
    return bytearray(RECEIVE_BUFFER_BYTES)


def _open_diag_socket() -> socket.socket:
    return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)


class _Datagram(NamedTuple):
    """One datagram of the previous scan and what it decoded to."""

    data: bytes
    endpoints: list[Endpoint]
    done: bool


class NetlinkScanner:
    """Scans through one persistent NETLINK_SOCK_DIAG socket.

    Not thread-safe: one scan at a time. A failed dump leaves replies of an
    unknown state in the socket, so after any error the socket is replaced
    before the next request.

    Each of the four dumps uses the same sequence number in every scan
    (1 to 4). Replies to an earlier scan cannot still be queued (every dump
    is read up to NLMSG_DONE, and the socket is replaced after an error),
    and fixed numbers make the datagrams of an unchanged dump byte-identical
    from scan to scan: such a datagram is compared with the previous one
    (a memcmp) instead of decoded again.
    """

    name = "netlink"
    # A dump that misses a stable socket (a concurrent removal in its hash
    # bucket between two chunks) was not seen to miss it twice running.
    rereads_independent = True
    # One namespace: none of it is ever gone while it is scanned.
    gone_namespaces: frozenset[int] = frozenset()

    def __init__(
        self,
        socket_factory: Callable[[], socket.socket] | None = None,
        *,
        netns: int = 0,
        interface_names: InterfaceLookup | None = None,
        receive_buffer: bytearray | None = None,
    ) -> None:
        """`receive_buffer` (RECEIVE_BUFFER_BYTES) may be shared by scanners
        that never scan at the same time: one per namespace, scanned in turn,
        need not hold 64 KiB each."""
        self._socket_factory = socket_factory or _open_diag_socket
        self.netns = netns
        self._lookup_interface = interface_names
        # id(unstamped) -> (unstamped, stamped): the unstamped endpoint is
        # held, so its id cannot be reused while the entry lives.
        self._stamped: dict[int, tuple[Endpoint, Endpoint]] = {}
        self._buffer = receive_buffer if receive_buffer is not None else new_receive_buffer()
        self._view = memoryview(self._buffer)
        self._request = bytearray(REQUEST.size)
        self._interface_names: dict[int, str] = {}
        self._reuse: dict[ReuseKey, Endpoint] = {}
        self._previous: list[list[_Datagram]] = [[] for _ in DUMPS]
        self._sock: socket.socket | None = self._open()

    def _open(self) -> socket.socket:
        try:
            sock = self._socket_factory()
        except OSError as exc:
            raise self._os_error(exc, "cannot open a NETLINK_SOCK_DIAG socket") from exc
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_RCVBUF_BYTES)
            # A kernel-side timeout, not settimeout(): that would add a poll()
            # before every recv.
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("@ll", REPLY_TIMEOUT_S, 0)
            )
            sock.bind((0, 0))
        except OSError as exc:
            sock.close()
            raise self._os_error(exc, "cannot set up the NETLINK_SOCK_DIAG socket") from exc
        return sock

    @staticmethod
    def _os_error(exc: OSError, what: str) -> ScanError:
        message = f"{what}: {exc.strerror or exc}"
        if exc.errno in UNAVAILABLE_ERRNOS:
            return SourceUnavailable(message, source=SOURCE, errno=exc.errno)
        return ScanError(message, source=SOURCE, errno=exc.errno)

    def _socket(self) -> socket.socket:
        if self._sock is None:
            self._sock = self._open()
        return self._sock

    def _discard_socket(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _send_request(self, sock: socket.socket, dump: int) -> int:
        """Ask for dump number `dump` of DUMPS; its sequence number."""
        proto, family = DUMPS[dump]
        seq = dump + 1
        REQUEST.pack_into(
            self._request,
            0,
            REQUEST.size,
            SOCK_DIAG_BY_FAMILY,
            NLM_F_REQUEST | NLM_F_DUMP,
            seq,
            0,
            family,
            IPPROTO_BY_PROTO[proto],
            0,  # idiag_ext: nothing extra; SKV6ONLY comes unasked (see module doc)
            STATES_BY_PROTO[proto],
        )
        sock.sendto(self._request, (0, 0))
        return seq

    def _receive(self, sock: socket.socket) -> int:
        """One datagram into the buffer; its length."""
        try:
            # MSG_TRUNC makes the kernel return the datagram's full length,
            # so a reply larger than the buffer is seen, not silently cut.
            size = sock.recv_into(self._buffer, 0, socket.MSG_TRUNC)
        except BlockingIOError as exc:  # SO_RCVTIMEO expired: EAGAIN
            raise ScanError(
                f"the kernel did not answer a sock_diag dump within {REPLY_TIMEOUT_S} s",
                source=SOURCE,
                errno=exc.errno,
            ) from exc
        # EINTR needs no handling: Python retries the call (PEP 475).
        if size == 0:
            raise ParseError("empty netlink datagram", source=SOURCE)
        if size > len(self._buffer):
            raise ParseError(
                f"netlink datagram of {size} bytes exceeds the {len(self._buffer)}-byte buffer",
                source=SOURCE,
            )
        return size

    def _receive_dump(self, sock: socket.socket, dump: int) -> list[Endpoint]:
        proto = DUMPS[dump][0]
        seq = self._send_request(sock, dump)
        previous = self._previous[dump]
        current: list[_Datagram] = []
        endpoints: list[Endpoint] = []
        done = False
        while not done:
            size = self._receive(sock)
            part = len(current)
            if (
                part < len(previous)
                and len(previous[part].data) == size
                and self._buffer.startswith(previous[part].data)
            ):
                datagram = previous[part]
            else:
                found, finished = parse_dump(
                    self._view[:size],
                    proto,
                    expected_seq=seq,
                    interface_name=self._interface_name,
                    reuse=self._reuse,
                )
                if self.netns:
                    found = [self._stamp(endpoint) for endpoint in found]
                # Not kept if an interface name is in it: those are looked up anew.
                kept = b"" if any(e.interface for e in found) else bytes(self._view[:size])
                datagram = _Datagram(kept, found, finished)
            current.append(datagram)
            endpoints += datagram.endpoints
            done = datagram.done
        self._previous[dump] = current
        return endpoints

    def _dump(self, dump: int) -> list[Endpoint]:
        """One dump, redone from scratch if the socket overflowed (ENOBUFS)."""
        for attempt in range(ENOBUFS_RETRIES + 1):
            sock = self._socket()
            try:
                return self._receive_dump(sock, dump)
            except OSError as exc:
                self._discard_socket()
                if exc.errno == errno_codes.ENOBUFS and attempt < ENOBUFS_RETRIES:
                    continue
                proto, family = DUMPS[dump]
                raise self._os_error(
                    exc, f"sock_diag dump of {FAMILY_NAMES[family]} {proto} sockets failed"
                ) from exc
            except BaseException:
                self._discard_socket()
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _stamp(self, endpoint: Endpoint) -> Endpoint:
        """The endpoint with this scanner's namespace; built once per reused endpoint."""
        entry = self._stamped.get(id(endpoint))
        if entry is not None and entry[0] is endpoint:
            return entry[1]
        stamped = replace(endpoint, netns=self.netns)
        if not endpoint.interface:  # only those are kept in the reuse map
            self._stamped[id(endpoint)] = (endpoint, stamped)
        return stamped

    def _interface_name(self, index: int) -> str:
        name = self._interface_names.get(index)
        if name is None:
            lookup = self._lookup_interface or interface_name
            name = self._interface_names[index] = lookup(index)
        return name

    def scan(self) -> list[Endpoint]:
        # Interfaces can be renamed between scans: names are cached for one scan.
        self._interface_names.clear()
        if self._lookup_interface is not None:
            self._lookup_interface.forget()
        endpoints: list[Endpoint] = []
        for dump in range(len(DUMPS)):
            endpoints += self._dump(dump)
        if len(self._reuse) > 2 * len(endpoints) + REUSE_SLACK:
            self._reuse.clear()  # mostly sockets long closed: start afresh
            self._stamped.clear()
        return endpoints

    def receive_raw(self) -> int:
        """The four dumps received but not decoded: the bytes received.

        The floor a scan cannot beat, for benchmarks. The end of a dump is
        found without walking the messages: the kernel appends NLMSG_DONE
        as the last 20 bytes of the last datagram.
        """
        sock = self._socket()
        received = 0
        done_size = NLMSGHDR_SIZE + ERRNO.size
        try:
            for dump in range(len(DUMPS)):
                seq = self._send_request(sock, dump)
                while True:
                    size = self._receive(sock)
                    received += size
                    if size >= done_size:
                        msg_len, msg_type, _flags, msg_seq, _pid = NLMSGHDR.unpack_from(
                            self._buffer, size - done_size
                        )
                        if (msg_len, msg_type, msg_seq) == (done_size, NLMSG_DONE, seq):
                            break
        except BaseException:
            self._discard_socket()
            raise
        return received

    def close(self) -> None:
        self._discard_socket()

    def __enter__(self) -> NetlinkScanner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
