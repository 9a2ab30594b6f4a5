"""The NETLINK_ROUTE decoders: any bytes give a result or a clean error."""

from __future__ import annotations

import contextlib
import socket
import struct

from hypothesis import given
from hypothesis import strategies as st

from portwatchd.sources.base import ScanError
from portwatchd.sources.nsaddr import (
    IFA_ADDRESS,
    IFA_LOCAL,
    IFADDRMSG,
    IFINFOMSG,
    IFLA_IFNAME,
    NLMSG_DONE,
    NLMSGHDR,
    RTM_NEWADDR,
    RTM_NEWLINK,
    parse_addresses,
    parse_links,
)


def attribute(kind: int, payload: bytes) -> bytes:
    data = struct.pack("=HH", 4 + len(payload), kind) + payload
    return data + b"\0" * (-len(data) % 4)


def message(kind: int, body: bytes, seq: int = 7) -> bytes:
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), kind, 2, seq, 0) + body


DONE = message(NLMSG_DONE, struct.pack("=i", 0))


def test_links_and_addresses_of_a_recorded_shape() -> None:
    link = message(
        RTM_NEWLINK, IFINFOMSG.pack(0, 1, 5, 0, 0) + attribute(IFLA_IFNAME, b"eth\xff\0")
    )
    names, done = parse_links(memoryview(link + DONE), 7)
    assert (names, done) == ({5: "eth\\xff"}, True)
    peer = socket.inet_pton(socket.AF_INET, "10.0.0.9")
    own = socket.inet_pton(socket.AF_INET, "10.0.0.1")
    point_to_point = message(
        RTM_NEWADDR,
        IFADDRMSG.pack(socket.AF_INET, 32, 0, 0, 5)
        + attribute(IFA_ADDRESS, peer)
        + attribute(IFA_LOCAL, own),
    )
    stale = message(RTM_NEWADDR, IFADDRMSG.pack(socket.AF_INET, 32, 0, 0, 9), seq=6)
    found, done = parse_addresses(memoryview(stale + point_to_point + DONE), 7)
    assert (found, done) == ([(5, "10.0.0.1", "ipv4")], True)


@given(st.binary(max_size=300))
def test_any_bytes_decode_or_fail_cleanly(data: bytes) -> None:
    for parse in (parse_links, parse_addresses):
        with contextlib.suppress(ScanError):
            parse(memoryview(data), 0)


@given(st.binary(max_size=64), st.sampled_from([socket.AF_INET, socket.AF_INET6]))
def test_any_address_attribute_decodes_or_fails_cleanly(payload: bytes, family: int) -> None:
    body = IFADDRMSG.pack(family, 24, 0, 0, 1) + attribute(IFA_LOCAL, payload)
    with contextlib.suppress(ScanError):
        parse_addresses(memoryview(message(RTM_NEWADDR, body, seq=0)), 0)
