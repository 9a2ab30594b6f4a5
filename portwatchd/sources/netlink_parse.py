"""The pure decoder of sock_diag dump replies: `parse_dump`, and the wire format.

`parse_dump` is a function of the received bytes alone, so recorded dumps
can be replayed in tests; `netlink.py` owns the socket that receives them.

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
    2a 01 00 00  cookie[0] = 0x12a (host order), the low half of the
    00 00 00 00  cookie[1] = 0       socket's u64 cookie: 0x12a = 298
    ...          expires, rqueue, wqueue
    e8 03 00 00  uid   = 1000 (host order)
    39 30 00 00  inode = 12345 (host order)
    then attributes (struct rtattr: u16 len, u16 type, host order),
    each padded to 4 bytes; we read INET_DIAG_SKV6ONLY (u8) for IPv6.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Callable, Iterator
from typing import Any, Final

from portwatchd.model import Endpoint, Family, Proto
from portwatchd.sources.base import UNAVAILABLE_ERRNOS, ParseError, ScanError, SourceUnavailable
from portwatchd.text import printable_name

SOURCE: Final = "netlink"

SOCK_DIAG_BY_FAMILY: Final = 20
NLMSG_NOOP: Final = 1
NLMSG_ERROR: Final = 2
NLMSG_DONE: Final = 3
NLMSG_OVERRUN: Final = 4
TCP_ESTABLISHED: Final = 1
TCP_CLOSE: Final = 7
TCP_LISTEN: Final = 10
INET_DIAG_SKV6ONLY: Final = 11

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
INET_DIAG_MSG: Final = struct.Struct("=BBxx HH 16s 16s I II 12x II")
RTATTR: Final = struct.Struct("=HH")
ERRNO: Final = struct.Struct("=i")

NLMSGHDR_SIZE: Final = NLMSGHDR.size  # 16
INET_DIAG_MSG_SIZE: Final = INET_DIAG_MSG.size  # 72
AF_INET: Final = int(socket.AF_INET)
AF_INET6: Final = int(socket.AF_INET6)
ADDRESS_BYTES: Final = {AF_INET: 4, AF_INET6: 16}
FAMILY_NAMES: Final[dict[int, Family]] = {AF_INET: "ipv4", AF_INET6: "ipv6"}


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


# The fields an endpoint is made of: is TCP, family, sport, src, uid, inode,
# v6only, cookie (and interface "": device-bound sockets are never reused).
ReuseKey = tuple[bool, int, int, bytes, int, int, bool | None, int]


def socket_cookie(low: int, high: int) -> int:
    """The u64 cookie from `idiag_cookie[0]` and `[1]`, as the kernel split it.

    sock_diag_save_cookie() (net/core/sock_diag.c) stores the low 32 bits
    in cookie[0] and the high 32 bits in cookie[1], each a host-order u32;
    the whole is the value getsockopt(SO_COOKIE) returns and `ss -e` prints
    as "sk:<hex>". Two u32 read in host order, not one u64, so that the
    result is right on big-endian hosts too.

    >>> hex(socket_cookie(0x1BE19, 0)), hex(socket_cookie(0x2, 0x1))
    ('0x1be19', '0x100000002')
    """
    return low | (high << 32)


def parse_dump(
    data: bytes | bytearray | memoryview,
    proto: Proto,
    *,
    expected_seq: int | None = None,
    interface_name: Callable[[int], str] = interface_name,
    reuse: dict[ReuseKey, Endpoint] | None = None,
) -> tuple[list[Endpoint], bool]:
    """Decode one received datagram of a sock_diag dump: (endpoints, saw NLMSG_DONE).

    `data` holds whole netlink messages, as one recv() returns them (the
    module docstring walks through one, byte by byte). Only TCP sockets in
    LISTEN and unconnected UDP sockets in CLOSE become endpoints. Raises
    ParseError for bytes that are not a well-formed dump, ScanError
    (SourceUnavailable for refusals) when the kernel answers NLMSG_ERROR
    or a failed NLMSG_DONE.

    `reuse` maps the raw fields of a socket to the Endpoint built from them;
    it is read and filled. Most listeners outlive many scans, and building
    an Endpoint (a frozen dataclass), inet_ntop() and ntohs() cost several
    times a dict lookup. The key holds every field the Endpoint is made of,
    so a hit is always right and the result is the same with or without it.
    Sockets bound to a device are left out: a device can be renamed while
    its index stays.
    """
    known: dict[ReuseKey, Endpoint] = {} if reuse is None else reuse
    endpoints: list[Endpoint] = []
    view = data if isinstance(data, bytes) else memoryview(data).cast("B")
    for offset, msg_type, body, end in messages(view, expected_seq):
        if msg_type == SOCK_DIAG_BY_FAMILY:
            endpoint = _listening_endpoint(
                view, offset, end, proto=proto, interface_name=interface_name, known=known
            )
            if endpoint is not None:
                endpoints.append(endpoint)
        elif _control_message(view, msg_type, offset, body, end):
            return endpoints, True
    return endpoints, False


def messages(
    view: bytes | memoryview, expected_seq: int | None
) -> Iterator[tuple[int, int, int, int]]:
    """Walk the netlink headers: (offset, type, body offset, end) of each message.

    A header is checked only when the walk reaches it, after the messages
    before it were handled, so the first fault in the datagram is the one
    reported.
    """
    total = len(view)
    offset = 0
    while offset < total:
        if total - offset < NLMSGHDR_SIZE:
            raise ParseError(
                f"truncated netlink header: {total - offset} of {NLMSGHDR_SIZE} bytes",
                source=SOURCE,
                offset=offset,
            )
        msg_len, msg_type, _flags, seq, _pid = NLMSGHDR.unpack_from(view, offset)
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
        end = offset + msg_len
        yield offset, msg_type, offset + NLMSGHDR_SIZE, end
        offset = (end + 3) & ~3  # NLMSG_ALIGN: messages start on 4-byte boundaries


def diag_msg_fields(view: bytes | memoryview, offset: int, body: int, end: int) -> tuple[Any, ...]:
    """The fields of the inet_diag_msg at `body` (in the message at `offset`,
    which ends at `end`): family, state, sport, dport, src, dst, if, cookie
    low and high, uid, inode. ParseError when it is too short or of an
    address family sock_diag does not dump for us."""
    if end - body < INET_DIAG_MSG_SIZE:
        raise ParseError(
            f"inet_diag_msg of {end - body} bytes, expected at least {INET_DIAG_MSG_SIZE}",
            source=SOURCE,
            offset=offset,
        )
    found = INET_DIAG_MSG.unpack_from(view, body)
    if found[0] not in (AF_INET, AF_INET6):
        raise ParseError(
            f"inet_diag_msg of unknown address family {found[0]}", source=SOURCE, offset=offset
        )
    return found


def _listening_endpoint(
    view: bytes | memoryview,
    offset: int,
    end: int,
    *,
    proto: Proto,
    interface_name: Callable[[int], str],
    known: dict[ReuseKey, Endpoint],
) -> Endpoint | None:
    """The endpoint of the inet_diag_msg at `offset`; None if it is not listening."""
    body = offset + NLMSGHDR_SIZE
    family, state, sport, dport, src, _dst, ifindex, low, high, uid, inode = diag_msg_fields(
        view, offset, body, end
    )
    cookie = socket_cookie(low, high)
    v6only = _v6only(view, body + INET_DIAG_MSG_SIZE, end) if family == AF_INET6 else None
    is_tcp = proto == "tcp"
    # A UDP socket with a peer (dport) is connected: not listening.
    if state != (TCP_LISTEN if is_tcp else TCP_CLOSE) or not (is_tcp or dport == 0):
        return None
    if ifindex != 0:
        return make_endpoint(
            proto,
            family,
            src,
            sport,
            interface=interface_name(ifindex),
            v6only=v6only,
            inode=inode,
            uid=uid,
            cookie=cookie,
        )
    key = (is_tcp, family, sport, src, uid, inode, v6only, cookie)
    endpoint = known.get(key)
    if endpoint is None:
        endpoint = known[key] = make_endpoint(
            proto,
            family,
            src,
            sport,
            interface="",
            v6only=v6only,
            inode=inode,
            uid=uid,
            cookie=cookie,
        )
    return endpoint


def make_endpoint(
    proto: Proto,
    family: int,
    src: bytes,
    sport: int,
    *,
    interface: str,
    v6only: bool | None,
    inode: int,
    uid: int,
    cookie: int,
    netns: int = 0,
) -> Endpoint:
    address = socket.inet_ntop(family, src[: ADDRESS_BYTES[family]])
    return Endpoint(
        proto,
        FAMILY_NAMES[family],
        address,
        socket.ntohs(sport),
        interface,
        v6only,
        inode,
        uid,
        netns=netns,
        cookie=cookie,
    )


def _control_message(
    view: bytes | memoryview, msg_type: int, offset: int, body: int, end: int
) -> bool:
    """Handle a message that is not an inet_diag_msg: True when the dump is done."""
    msg_len = end - offset
    if msg_type == NLMSG_DONE:
        if msg_len >= NLMSGHDR_SIZE + ERRNO.size:
            (error,) = ERRNO.unpack_from(view, body)
            if error < 0:
                raise _kernel_error(-error, "dump failed")
        return True
    if msg_type == NLMSG_ERROR:
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
    return False


def _v6only(view: bytes | memoryview, offset: int, end: int) -> bool | None:
    """INET_DIAG_SKV6ONLY from the attributes in view[offset:end], None if absent."""
    value = attribute_u8(view, offset, end, INET_DIAG_SKV6ONLY)
    return None if value is None else bool(value)


def attribute_u8(view: bytes | memoryview, offset: int, end: int, wanted: int) -> int | None:
    """The u8 value of attribute `wanted` in view[offset:end], None if absent."""
    while end - offset >= RTATTR.size:
        attr_len, attr_type = RTATTR.unpack_from(view, offset)
        if attr_len < RTATTR.size or attr_len > end - offset:
            raise ParseError(
                f"attribute length {attr_len} does not fit the {end - offset} bytes left",
                source=SOURCE,
                offset=offset,
            )
        if attr_type == wanted and attr_len > RTATTR.size:
            return view[offset + RTATTR.size]
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
