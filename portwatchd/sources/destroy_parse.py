"""The pure decoder of sock_diag destroy messages, and the BPF filter that thins them.

A socket subscribed to the SKNLGRP_INET*_DESTROY groups receives one
`inet_diag_msg` each time a TCP or UDP socket's last reference drops
(sock_diag_broadcast_destroy() in net/core/sock_diag.c). Kernel facts:
- the message is built by inet_diag_handler_get_info() (net/ipv4/inet_diag.c):
  the same `inet_diag_msg` as a dump reply, `idiag_state` is the state at
  destruction (TCP_CLOSE), and `idiag_inode` and `idiag_uid` are 0 (the
  socket has no file any more), so the cookie is what names the socket;
- the protocol is not in the header: an INET_DIAG_PROTOCOL (u8) attribute
  carries it;
- nlmsg_seq and nlmsg_pid are 0 (nobody asked), which is what the filter
  tells a multicast message from a dump reply by.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from typing import Final

from portwatchd.model import Endpoint, Proto
from portwatchd.sources.netlink_parse import (
    AF_INET,
    INET_DIAG_MSG_SIZE,
    INET_DIAG_SKV6ONLY,
    SOCK_DIAG_BY_FAMILY,
    attribute_u8,
    diag_msg_fields,
    interface_name,
    make_endpoint,
    messages,
    socket_cookie,
)

INET_DIAG_PROTOCOL: Final = 10
PROTO_BY_NUMBER: Final[dict[int, Proto]] = {
    socket.IPPROTO_TCP: "tcp",
    socket.IPPROTO_UDP: "udp",
}
ZERO_ADDRESS: Final = bytes(16)

# The classic BPF program run on every message before it is queued
# (SO_ATTACH_FILTER on the netlink socket; offsets count from the netlink
# header). It keeps what can be a listener's close and drops connection
# churn in the kernel, at no cost to us:
#   ld [8]  (nlmsg_seq): non-zero -> accept (a dump reply, not a multicast)
#   ldh [20] (sport):     zero     -> drop   (never bound)
#   ldh [22] (dport):     non-zero -> drop   (a connection)
#   ld [40], [44], [48], [52] (dst): any non-zero -> drop (a peer)
#   accept
# As (code, jt, jf, k): BPF_LD|W|ABS = 0x20, BPF_LD|H|ABS = 0x28,
# BPF_JMP|JEQ|K = 0x15, BPF_RET|K = 0x06.
DESTROY_FILTER: Final[tuple[tuple[int, int, int, int], ...]] = (
    (0x20, 0, 0, 8),
    (0x15, 0, 12, 0),
    (0x28, 0, 0, 20),
    (0x15, 11, 0, 0),
    (0x28, 0, 0, 22),
    (0x15, 0, 9, 0),
    (0x20, 0, 0, 40),
    (0x15, 0, 7, 0),
    (0x20, 0, 0, 44),
    (0x15, 0, 5, 0),
    (0x20, 0, 0, 48),
    (0x15, 0, 3, 0),
    (0x20, 0, 0, 52),
    (0x15, 0, 1, 0),
    (0x06, 0, 0, 0xFFFFFFFF),
    (0x06, 0, 0, 0),
)
_SOCK_FILTER: Final = struct.Struct("=HBBI")


def filter_program(rows: tuple[tuple[int, int, int, int], ...] = DESTROY_FILTER) -> bytes:
    """The rows as an array of `struct sock_filter` (u16 code, u8 jt, u8 jf, u32 k)."""
    return b"".join(_SOCK_FILTER.pack(*row) for row in rows)


def parse_destroyed(
    data: bytes | bytearray | memoryview,
    *,
    netns: int = 0,
    interface_name: Callable[[int], str] = interface_name,
) -> list[Endpoint]:
    """The bound, peerless TCP and UDP sockets whose destruction `data` announces.

    `data` is what one recv() returned. A socket with a peer (a connection,
    a connected UDP socket) or without a local port is left out, as the
    filter does in the kernel: the decoder does not rely on the filter.
    The endpoints carry `cookie` and `netns`; inode 0 and uid -1 (unknown).
    """
    view = data if isinstance(data, bytes) else memoryview(data).cast("B")
    closed: list[Endpoint] = []
    for offset, msg_type, body, end in messages(view, None):
        if msg_type != SOCK_DIAG_BY_FAMILY:
            continue  # a destroy group carries nothing else
        family, _state, sport, dport, src, dst, ifindex, low, high, _uid, _inode = diag_msg_fields(
            view, offset, body, end
        )
        attributes = body + INET_DIAG_MSG_SIZE
        proto = PROTO_BY_NUMBER.get(attribute_u8(view, attributes, end, INET_DIAG_PROTOCOL) or 0)
        if proto is None or sport == 0 or dport != 0 or dst != ZERO_ADDRESS:
            continue
        v6only = attribute_u8(view, attributes, end, INET_DIAG_SKV6ONLY)
        closed.append(
            make_endpoint(
                proto,
                family,
                src,
                sport,
                interface=interface_name(ifindex),
                v6only=None if v6only is None or family == AF_INET else bool(v6only),
                inode=0,
                uid=-1,
                cookie=socket_cookie(low, high),
                netns=netns,
            )
        )
    return closed
