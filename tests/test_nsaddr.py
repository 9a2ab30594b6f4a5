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
    parse_fib_trie,
    parse_if_inet6,
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


FIB_TRIE = """\
Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
     +-- 192.0.2.0/24 2 0 2
        +-- 192.0.2.0/30 2 0 2
           |-- 192.0.2.0
              /24 link UNICAST
           |-- 192.0.2.2
              /32 host LOCAL
        |-- 192.0.2.255
           /32 link BROADCAST
Local:
  +-- 0.0.0.0/0 3 0 5
           |-- 127.0.0.1
              /32 host LOCAL
           |-- 192.0.2.2
              /32 host LOCAL
"""
IF_INET6 = """\
00000000000000000000000000000001 01 80 10 80       lo
fe8000000000000000fc00fffe000001 04 40 20 80     eth0
fd000000000000000000000000000002 04 40 00 82     eth0
"""


def test_proc_files_of_a_recorded_namespace() -> None:
    assert parse_fib_trie(FIB_TRIE) == ["127.0.0.1", "192.0.2.2"]
    assert parse_if_inet6(IF_INET6) == [
        ("lo", "::1"),
        ("eth0", "fe80::fc:ff:fe00:1"),
        ("eth0", "fd00::2"),
    ]


@given(st.text(max_size=300))
def test_any_proc_text_gives_addresses_or_nothing(text: str) -> None:
    for address in parse_fib_trie(text):
        assert isinstance(address, str)
    assert all(len(pair) == 2 for pair in parse_if_inet6(text))
