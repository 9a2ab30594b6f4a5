"""Listening sockets from the kernel's sock_diag netlink interface (the fast source).

One NETLINK_SOCK_DIAG socket stays open; each scan sends four
SOCK_DIAG_BY_FAMILY dump requests (TCP and UDP, IPv4 and IPv6) and decodes
the `struct inet_diag_msg` replies with `parse_dump`, a pure function of the
received bytes, so recorded dumps can be replayed in tests.

Kernel facts this module relies on (include/uapi/linux/inet_diag.h,
net/ipv4/inet_diag.c, net/ipv4/udp_diag.c):
- the kernel filters by `idiag_states`: TCP listeners are in TCP_LISTEN (10);
  a bound UDP socket that is not connected is in TCP_CLOSE (7), a connected
  one in TCP_ESTABLISHED (1); `ss -lnu` shows exactly the TCP_CLOSE ones,
  including a socket that was auto-bound by sendto(2) without bind(2);
- INET_DIAG_SKV6ONLY is not requested through `idiag_ext` (it is attribute
  11, beyond the 8 bits of `idiag_ext`): inet_diag_msg_attrs_fill() adds it
  to every AF_INET6 socket in LISTEN or CLOSE, which is every socket we ask for;
- the trailing NLMSG_DONE carries an int: 0, or -errno if the dump failed.
"""

from __future__ import annotations

import errno as errno_codes
import os
import socket
import struct
from collections.abc import Callable
from typing import Final, NamedTuple

from portwatchd.model import Endpoint, Family, Proto, printable_name
from portwatchd.sources.base import UNAVAILABLE_ERRNOS, ParseError, ScanError, SourceUnavailable

SOURCE: Final = "netlink"

NETLINK_SOCK_DIAG: Final = 4
SOCK_DIAG_BY_FAMILY: Final = 20
NLMSG_NOOP: Final = 1
NLMSG_ERROR: Final = 2
NLMSG_DONE: Final = 3
NLMSG_OVERRUN: Final = 4
NLM_F_REQUEST: Final = 0x1
NLM_F_DUMP: Final = 0x300  # NLM_F_ROOT | NLM_F_MATCH
TCP_ESTABLISHED: Final = 1
TCP_CLOSE: Final = 7
TCP_LISTEN: Final = 10
INET_DIAG_SKV6ONLY: Final = 11

# Which sockets each dump asks for, by the state the kernel keeps them in.
STATES_BY_PROTO: Final[dict[str, int]] = {"tcp": 1 << TCP_LISTEN, "udp": 1 << TCP_CLOSE}
IPPROTO_BY_PROTO: Final[dict[str, int]] = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}
DUMPS: Final[tuple[tuple[Proto, int], ...]] = (
    ("tcp", socket.AF_INET),
    ("tcp", socket.AF_INET6),
    ("udp", socket.AF_INET),
    ("udp", socket.AF_INET6),
)

# Netlink headers and sock_diag structs are in host byte order ("="), except
# the ports and addresses inside `struct inet_diag_sockid`, which are in
# network byte order (big-endian), as the socket layer keeps them.
#
# struct nlmsghdr { u32 len; u16 type; u16 flags; u32 seq; u32 pid; }
NLMSGHDR: Final = struct.Struct("=IHHII")
# struct inet_diag_msg {
#   u8 family, state, timer, retrans;
#   struct inet_diag_sockid { be16 sport, dport; be32 src[4], dst[4]; u32 if; u32 cookie[2]; };
#   u32 expires, rqueue, wqueue, uid, inode; }
# Ports are read here as native u16 and turned around with ntohs(); the
# addresses stay raw bytes for inet_ntop().
INET_DIAG_MSG: Final = struct.Struct("=BBxx HH 16s 16x I 8x 12x II")
# struct inet_diag_req_v2 { u8 family, protocol, ext, pad; u32 states; struct inet_diag_sockid id; }
INET_DIAG_REQ_V2: Final = struct.Struct("=BBBxI48x")
REQUEST: Final = struct.Struct(NLMSGHDR.format + INET_DIAG_REQ_V2.format[1:])
RTATTR: Final = struct.Struct("=HH")
ERRNO: Final = struct.Struct("=i")

NLMSGHDR_SIZE: Final = NLMSGHDR.size  # 16
INET_DIAG_MSG_SIZE: Final = INET_DIAG_MSG.size  # 72
AF_INET: Final = int(socket.AF_INET)
AF_INET6: Final = int(socket.AF_INET6)
ADDRESS_BYTES: Final = {AF_INET: 4, AF_INET6: 16}
FAMILY_NAMES: Final[dict[int, Family]] = {AF_INET: "ipv4", AF_INET6: "ipv6"}

RECEIVE_BUFFER_BYTES: Final = 1 << 16  # above the kernel's 32 KiB cap per dump datagram
SOCKET_RCVBUF_BYTES: Final = 1 << 20
REPLY_TIMEOUT_S: Final = 5
ENOBUFS_RETRIES: Final = 3
REUSE_SLACK: Final = 1024


def interface_name(index: int) -> str:
    """The name of interface `index` in this network namespace; "" for 0.

    A socket can stay bound to an index whose device is gone; then the
    number itself stands in, as in a scoped address ("fe80::1%7").
    """
    if index == 0:
        return ""
    try:
        return printable_name(socket.if_indextoname(index))
    except OSError:
        return str(index)


# The fields an endpoint is made of: is TCP, family, sport, src, uid, inode, v6only
# (and interface "": device-bound sockets are never reused).
ReuseKey = tuple[bool, int, int, bytes, int, int, bool | None]


def parse_dump(
    data: bytes | bytearray | memoryview,
    proto: Proto,
    *,
    expected_seq: int | None = None,
    interface_name: Callable[[int], str] = interface_name,
    reuse: dict[ReuseKey, Endpoint] | None = None,
) -> tuple[list[Endpoint], bool]:
    """Decode one received datagram of a sock_diag dump: (endpoints, saw NLMSG_DONE).

    `data` holds whole netlink messages, as one recv() returns them. Only
    TCP sockets in LISTEN and unconnected UDP sockets in CLOSE become
    endpoints. Raises ParseError for bytes that are not a well-formed
    dump, ScanError (SourceUnavailable for refusals) when the kernel
    answers NLMSG_ERROR or a failed NLMSG_DONE.

    `reuse` maps the raw fields of a socket to the Endpoint built from them;
    it is read and filled. Most listeners outlive many scans, and building
    an Endpoint (a frozen dataclass), inet_ntop() and ntohs() cost several
    times a dict lookup. The key holds every field the Endpoint is made of,
    so a hit is always right and the result is the same with or without it.
    Sockets bound to a device are left out: a device can be renamed while
    its index stays.

    Worked example, one IPv4 TCP listener on 127.0.0.1:8080 on x86-64
    (little-endian), at the start of the datagram:

        58 00 00 00  nlmsg_len   = 0x58 = 88 (host order)
        14 00        nlmsg_type  = 20, SOCK_DIAG_BY_FAMILY
        02 00        nlmsg_flags = NLM_F_MULTI
        ...          seq, pid (host order)
        02 0a 00 00  family AF_INET, state 10 = TCP_LISTEN, timer, retrans
        1f 90        sport: network order, 0x1f90 = 8080; read as a
                     native u16 it is 0x901f, and ntohs(0x901f) = 8080
        00 00        dport 0
        7f 00 00 01  src[0]: network order, the address bytes 127.0.0.1
                     as inet_ntop(AF_INET, ...) wants them (IPv6 uses all 16)
        ...          src[1..3] (0 for IPv4), dst[4]
        01 00 00 00  if = 1 (host order) -> "lo" via if_indextoname
        ...          cookie[2], expires, rqueue, wqueue
        e8 03 00 00  uid   = 1000 (host order)
        39 30 00 00  inode = 12345 (host order)
        then attributes (struct rtattr: u16 len, u16 type, host order),
        each padded to 4 bytes; we read INET_DIAG_SKV6ONLY (u8) for IPv6.
    """
    # The loop runs once per socket: names it uses are bound locally.
    unpack_header = NLMSGHDR.unpack_from
    unpack_message = INET_DIAG_MSG.unpack_from
    ntop = socket.inet_ntop
    ntohs = socket.ntohs
    known: dict[ReuseKey, Endpoint] = {} if reuse is None else reuse
    endpoints: list[Endpoint] = []
    append = endpoints.append
    view = data if isinstance(data, bytes) else memoryview(data).cast("B")
    total = len(view)
    is_tcp = proto == "tcp"
    want_state = TCP_LISTEN if is_tcp else TCP_CLOSE
    offset = 0
    while offset < total:
        if total - offset < NLMSGHDR_SIZE:
            raise ParseError(
                f"truncated netlink header: {total - offset} of {NLMSGHDR_SIZE} bytes",
                source=SOURCE,
                offset=offset,
            )
        msg_len, msg_type, _flags, seq, _pid = unpack_header(view, offset)
        if msg_len < NLMSGHDR_SIZE or msg_len > total - offset:
            raise ParseError(
                f"netlink message length {msg_len} does not fit the {total - offset} bytes left",
                source=SOURCE,
                offset=offset,
            )
        if expected_seq is not None and seq != expected_seq:
            raise ParseError(
                f"reply with sequence number {seq}, expected {expected_seq}",
                source=SOURCE,
                offset=offset,
            )
        body = offset + NLMSGHDR_SIZE
        end = offset + msg_len

        if msg_type == SOCK_DIAG_BY_FAMILY:
            if msg_len < NLMSGHDR_SIZE + INET_DIAG_MSG_SIZE:
                raise ParseError(
                    f"inet_diag_msg of {msg_len - NLMSGHDR_SIZE} bytes,"
                    f" expected at least {INET_DIAG_MSG_SIZE}",
                    source=SOURCE,
                    offset=offset,
                )
            family, state, sport, dport, src, ifindex, uid, inode = unpack_message(view, body)
            if family == AF_INET6:
                v6only = _v6only(view, body + INET_DIAG_MSG_SIZE, end)
            elif family == AF_INET:
                v6only = None
            else:
                raise ParseError(
                    f"inet_diag_msg of unknown address family {family}",
                    source=SOURCE,
                    offset=offset,
                )
            # A UDP socket with a peer (dport) is connected: not listening.
            listening = state == want_state and (is_tcp or dport == 0)
            if listening and ifindex == 0:
                key = (is_tcp, family, sport, src, uid, inode, v6only)
                endpoint = known.get(key)
                if endpoint is None:
                    endpoint = Endpoint(
                        proto,
                        FAMILY_NAMES[family],
                        ntop(family, src[: ADDRESS_BYTES[family]]),
                        ntohs(sport),
                        "",
                        v6only,
                        inode,
                        uid,
                    )
                    known[key] = endpoint
                append(endpoint)
            elif listening:
                append(
                    Endpoint(
                        proto,
                        FAMILY_NAMES[family],
                        ntop(family, src[: ADDRESS_BYTES[family]]),
                        ntohs(sport),
                        interface_name(ifindex),
                        v6only,
                        inode,
                        uid,
                    )
                )
        elif msg_type == NLMSG_DONE:
            if msg_len >= NLMSGHDR_SIZE + ERRNO.size:
                (error,) = ERRNO.unpack_from(view, body)
                if error < 0:
                    raise _kernel_error(-error, "dump failed")
            return endpoints, True
        elif msg_type == NLMSG_ERROR:
            if msg_len < NLMSGHDR_SIZE + ERRNO.size:
                raise ParseError("truncated NLMSG_ERROR", source=SOURCE, offset=offset)
            (error,) = ERRNO.unpack_from(view, body)
            if error != 0:
                raise _kernel_error(-error, "request refused")
            # error 0 is an acknowledgement; dumps do not ask for one.
        elif msg_type == NLMSG_OVERRUN:
            raise ScanError("netlink reported a data overrun", source=SOURCE)
        elif msg_type != NLMSG_NOOP:
            raise ParseError(
                f"unexpected netlink message type {msg_type}", source=SOURCE, offset=offset
            )
        offset = (end + 3) & ~3  # NLMSG_ALIGN: messages start on 4-byte boundaries
    return endpoints, False


def _v6only(view: bytes | memoryview, offset: int, end: int) -> bool | None:
    """INET_DIAG_SKV6ONLY from the attributes in view[offset:end], None if absent."""
    while end - offset >= RTATTR.size:
        attr_len, attr_type = RTATTR.unpack_from(view, offset)
        if attr_len < RTATTR.size or attr_len > end - offset:
            raise ParseError(
                f"attribute length {attr_len} does not fit the {end - offset} bytes left",
                source=SOURCE,
                offset=offset,
            )
        if attr_type == INET_DIAG_SKV6ONLY and attr_len > RTATTR.size:
            return bool(view[offset + RTATTR.size])
        offset += (attr_len + 3) & ~3  # RTA_ALIGN
    return None


def _kernel_error(code: int, what: str) -> ScanError:
    try:
        reason = os.strerror(code)
    except (OverflowError, ValueError):  # -INT_MIN: not an errno any kernel sends
        reason = "unknown error"
    message = f"sock_diag {what}: {reason} (errno {code})"
    if code in UNAVAILABLE_ERRNOS:
        return SourceUnavailable(message, source=SOURCE, errno=code)
    return ScanError(message, source=SOURCE, errno=code)


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

    def __init__(self, socket_factory: Callable[[], socket.socket] | None = None) -> None:
        self._socket_factory = socket_factory or _open_diag_socket
        self._buffer = bytearray(RECEIVE_BUFFER_BYTES)
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

    def _interface_name(self, index: int) -> str:
        name = self._interface_names.get(index)
        if name is None:
            name = self._interface_names[index] = interface_name(index)
        return name

    def scan(self) -> list[Endpoint]:
        # Interfaces can be renamed between scans: names are cached for one scan.
        self._interface_names.clear()
        endpoints: list[Endpoint] = []
        for dump in range(len(DUMPS)):
            endpoints += self._dump(dump)
        if len(self._reuse) > 2 * len(endpoints) + REUSE_SLACK:
            self._reuse.clear()  # mostly sockets long closed: start afresh
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
