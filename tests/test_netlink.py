"""The sock_diag dump decoder, on recorded dumps and on damaged or hostile bytes.

The fixtures were recorded by tests/fixtures/netlink_record.py (x86-64,
little-endian) from the sockets listed in tests/fixtures/netlink_ss_antue.txt.
Sockets that run against the live kernel are in test_scan_real.py.
"""

from __future__ import annotations

import errno
import socket
import struct
import sys
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from portwatchd.model import Endpoint
from portwatchd.sources.base import ParseError, ScanError, SourceUnavailable
from portwatchd.sources.netlink_parse import parse_dump

FIXTURES = Path(__file__).parent / "fixtures"

pytestmark = pytest.mark.skipif(
    sys.byteorder != "little", reason="netlink fixtures were recorded on a little-endian host"
)


def lo_only(index: int) -> str:
    """Interface names as they were where the fixtures were recorded: lo is 1."""
    return {0: "", 1: "lo"}[index]


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def by_inode(endpoints: list[Endpoint]) -> list[Endpoint]:
    return sorted(endpoints, key=lambda e: e.inode)


# The cookies are the "sk:" column of netlink_ss_antue.txt, which ss prints
# from the same two idiag_cookie words.
EXPECTED = {
    "tcp4": [
        Endpoint("tcp", "ipv4", "0.0.0.0", 22, "", None, 139732, 0, cookie=0x1BE19),
        Endpoint("tcp", "ipv4", "127.0.0.1", 8080, "", None, 139733, 65534, cookie=0x1BE1A),
    ],
    "tcp6": [
        Endpoint("tcp", "ipv6", "::", 22, "", True, 139734, 0, cookie=0x1BE1F),
        Endpoint("tcp", "ipv6", "::", 80, "", False, 139735, 0, cookie=0x1BE20),
        Endpoint("tcp", "ipv6", "::ffff:127.0.0.1", 8443, "", False, 139736, 0, cookie=0x1BE1E),
    ],
    "udp4": [
        Endpoint("udp", "ipv4", "0.0.0.0", 5353, "", None, 139740, 0, cookie=0x1BE21),
        Endpoint("udp", "ipv4", "127.0.0.53", 53, "lo", None, 139741, 0, cookie=0x1BE24),
        # Two SO_REUSEPORT sockets: one key, two inodes.
        Endpoint("udp", "ipv4", "127.0.0.1", 6000, "", None, 139744, 0, cookie=0x1BE23),
        Endpoint("udp", "ipv4", "127.0.0.1", 6000, "", None, 139745, 0, cookie=0x1BE22),
        # Auto-bound by sendto(2), never bind(2): unconnected, so listed (as by ss -lnu).
        Endpoint("udp", "ipv4", "0.0.0.0", 33160, "", None, 139747, 0, cookie=0x1BE25),
    ],
    "udp6": [
        Endpoint("udp", "ipv6", "::", 546, "", True, 139742, 0, cookie=0x1BE28),
        Endpoint("udp", "ipv6", "::ffff:127.0.0.1", 5300, "", False, 139743, 0, cookie=0x1BE27),
    ],
}


@pytest.mark.parametrize("dump", sorted(EXPECTED))
def test_recorded_dump_decodes_to_the_listening_sockets(dump: str) -> None:
    endpoints, done = parse_dump(fixture(f"netlink_{dump}.bin"), dump[:3], interface_name=lo_only)  # type: ignore[arg-type]
    assert done
    assert by_inode(endpoints) == EXPECTED[dump]


@pytest.mark.parametrize("dump", sorted(EXPECTED))
def test_dump_of_all_states_keeps_only_listening_and_unconnected(dump: str) -> None:
    # Recorded with idiag_states = all: holds established TCP connections
    # (127.0.0.1:8080 <-> :50320) and a connected UDP socket (:6001 -> :9),
    # which are not listening and must be dropped by the decoder too.
    data = fixture(f"netlink_{dump}_allstates.bin")
    endpoints, done = parse_dump(data, dump[:3], interface_name=lo_only)  # type: ignore[arg-type]
    assert done
    assert by_inode(endpoints) == EXPECTED[dump]
    if dump in ("tcp4", "udp4"):
        assert len(data) > len(fixture(f"netlink_{dump}.bin")), "fixture lost its non-listeners"


def test_sequence_number_is_checked() -> None:
    data = fixture("netlink_tcp4.bin")
    assert parse_dump(data, "tcp", expected_seq=1, interface_name=lo_only)[1]
    with pytest.raises(ParseError, match="sequence number 1, expected 2") as caught:
        parse_dump(data, "tcp", expected_seq=2, interface_name=lo_only)
    assert caught.value.source == "netlink"
    assert caught.value.offset == 0


def _nlmsg(msg_type: int, payload: bytes, seq: int = 7) -> bytes:
    header = struct.pack("=IHHII", 16 + len(payload), msg_type, 2, seq, 0)
    return header + payload + b"\0" * (-len(payload) % 4)


def _listener_v4(
    address: str,
    port: int,
    ifindex: int,
    uid: int,
    inode: int,
    *,
    state: int = 10,
    dport: int = 0,
    cookie: int = 0,
) -> bytes:
    body = struct.pack("=BBBB", socket.AF_INET, state, 0, 0)
    body += struct.pack(">HH", port, dport)  # network byte order
    body += socket.inet_aton(address) + b"\0" * 12 + b"\0" * 16
    body += struct.pack("=III", ifindex, cookie & 0xFFFFFFFF, cookie >> 32)
    body += struct.pack("=IIIII", 0, 0, 0, uid, inode)
    return _nlmsg(20, body)


def test_worked_example_from_the_docstring() -> None:
    data = _listener_v4("127.0.0.1", 8080, 1, 1000, 12345, cookie=298)
    data += _nlmsg(3, struct.pack("=i", 0))
    assert data[20:24] == bytes.fromhex("1f900000"), "sport 8080 goes big-endian on the wire"
    assert data[60:68] == bytes.fromhex("2a01000000000000"), "cookie[0], cookie[1] in host order"
    endpoints, done = parse_dump(data, "tcp", expected_seq=7, interface_name=lo_only)
    assert done
    assert endpoints == [
        Endpoint("tcp", "ipv4", "127.0.0.1", 8080, "lo", None, 12345, 1000, cookie=298)
    ]
    assert endpoints[0].key == "tcp:127.0.0.1%lo:8080"


def test_udp_counts_only_unconnected_in_close() -> None:
    close_unconnected = _listener_v4("0.0.0.0", 53, 0, 0, 1, state=7)
    close_with_peer = _listener_v4("0.0.0.0", 54, 0, 0, 2, state=7, dport=9)
    established = _listener_v4("127.0.0.1", 55, 0, 0, 3, state=1, dport=9)
    data = close_unconnected + close_with_peer + established
    assert [e.port for e in parse_dump(data, "udp")[0]] == [53]
    # The same states mean nothing for TCP: only LISTEN counts there.
    assert parse_dump(data, "tcp")[0] == []


def test_datagram_without_done_says_the_dump_goes_on() -> None:
    endpoints, done = parse_dump(_listener_v4("10.0.0.1", 22, 0, 0, 5), "tcp")
    assert not done
    assert [e.key for e in endpoints] == ["tcp:10.0.0.1:22"]


@pytest.mark.parametrize(
    ("code", "unavailable"),
    [(errno.EINVAL, False), (errno.EPERM, True), (errno.ENOENT, True), (errno.ENOMEM, False)],
)
def test_nlmsg_error_raises_scan_error_with_the_errno(code: int, unavailable: bool) -> None:
    # struct nlmsgerr: int error (negative errno), then the offending request's header.
    data = _nlmsg(2, struct.pack("=i", -code) + struct.pack("=IHHII", 72, 20, 0x301, 7, 0))
    with pytest.raises(ScanError) as caught:
        parse_dump(data, "udp")
    assert caught.value.errno == code
    assert isinstance(caught.value, SourceUnavailable) == unavailable
    assert str(code) in str(caught.value)


def test_failed_done_raises_scan_error() -> None:
    data = _listener_v4("10.0.0.1", 22, 0, 0, 5) + _nlmsg(3, struct.pack("=i", -errno.EINTR))
    with pytest.raises(ScanError) as caught:
        parse_dump(data, "tcp")
    assert caught.value.errno == errno.EINTR


def test_acknowledgement_is_not_an_error() -> None:
    assert parse_dump(_nlmsg(2, struct.pack("=i", 0) + b"\0" * 16), "tcp") == ([], False)


def test_every_truncation_of_a_recorded_dump_is_caught() -> None:
    data = fixture("netlink_tcp6.bin")
    boundaries = set()
    offset = 0
    while offset < len(data):
        boundaries.add(offset)
        offset += struct.unpack_from("=I", data, offset)[0]
    for cut in range(1, len(data)):
        if cut in boundaries:
            # Whole messages: a shorter, valid datagram, not yet done.
            endpoints, done = parse_dump(data[:cut], "tcp", interface_name=lo_only)
            assert not done
            assert len(endpoints) == len(boundaries & set(range(1, cut + 1)))
        else:
            with pytest.raises(ParseError) as caught:
                parse_dump(data[:cut], "tcp", interface_name=lo_only)
            assert caught.value.offset is not None
            assert "netlink" in str(caught.value)


def test_short_inet_diag_msg_is_a_parse_error() -> None:
    with pytest.raises(ParseError, match="inet_diag_msg of 40 bytes"):
        parse_dump(_nlmsg(20, b"\x02\x0a" + b"\0" * 38), "tcp")


def test_unknown_address_family_is_a_parse_error() -> None:
    data = bytearray(_listener_v4("10.0.0.1", 22, 0, 0, 5))
    data[16] = 99
    with pytest.raises(ParseError, match="unknown address family 99"):
        parse_dump(bytes(data), "tcp")


def test_bad_attribute_length_is_a_parse_error() -> None:
    data = fixture("netlink_udp6.bin")
    first_length = struct.unpack_from("=I", data, 0)[0]
    damaged = bytearray(data)
    struct.pack_into("=H", damaged, 16 + 72, first_length)  # first rtattr longer than its message
    with pytest.raises(ParseError, match="attribute length"):
        parse_dump(bytes(damaged), "udp", interface_name=lo_only)


def _any_interface(index: int) -> str:
    return f"if{index}" if index else ""


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
@example(struct.pack("=IHHIIi", 20, 2, 0, 0, 0, -(2**31)))  # NLMSG_ERROR with INT_MIN
def test_any_bytes_decode_or_raise_scan_error(data: bytes) -> None:
    try:
        endpoints, done = parse_dump(data, "tcp", interface_name=_any_interface)
    except ScanError:
        return
    assert isinstance(done, bool)
    assert all(isinstance(e, Endpoint) for e in endpoints)


RECORDED = [fixture(f"netlink_{name}_allstates.bin") for name in sorted(EXPECTED)]


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(RECORDED),
    st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), max_size=8),
    st.sampled_from(["tcp", "udp"]),
)
def test_damaged_recordings_decode_or_raise_scan_error(
    data: bytes, damage: list[tuple[int, int]], proto: str
) -> None:
    damaged = bytearray(data)
    for position, value in damage:
        damaged[position % len(damaged)] = value
    try:
        endpoints, _done = parse_dump(bytes(damaged), proto, interface_name=_any_interface)  # type: ignore[arg-type]
    except ScanError:
        return
    for endpoint in endpoints:
        assert 0 <= endpoint.port <= 65535
        socket.inet_pton(
            socket.AF_INET if endpoint.family == "ipv4" else socket.AF_INET6, endpoint.address
        )


def test_reuse_hands_out_the_same_endpoints_and_the_same_result() -> None:
    data = fixture("netlink_udp4.bin")
    reuse: dict[object, Endpoint] = {}
    first, _ = parse_dump(data, "udp", interface_name=lo_only, reuse=reuse)  # type: ignore[arg-type]
    second, _ = parse_dump(data, "udp", interface_name=lo_only, reuse=reuse)  # type: ignore[arg-type]
    assert first == second == parse_dump(data, "udp", interface_name=lo_only)[0]
    bound_to_device = [i for i, e in enumerate(first) if e.interface]
    assert len(bound_to_device) == 1
    for index, (a, b) in enumerate(zip(first, second, strict=True)):
        # Device-bound sockets are built anew: the device may have been renamed.
        assert (a is b) == (index not in bound_to_device)
    assert len(reuse) == len(first) - 1


def test_reused_endpoint_is_not_handed_out_for_changed_fields() -> None:
    reuse: dict[object, Endpoint] = {}
    before = parse_dump(_listener_v4("10.0.0.1", 22, 0, 0, 5), "tcp", reuse=reuse)[0]  # type: ignore[arg-type]
    after = parse_dump(_listener_v4("10.0.0.2", 22, 0, 0, 5), "tcp", reuse=reuse)[0]  # type: ignore[arg-type]
    assert [e.address for e in before + after] == ["10.0.0.1", "10.0.0.2"]


def test_cookie_halves_make_one_u64_low_word_first() -> None:
    big = 0x1_2345_6789
    endpoint = parse_dump(_listener_v4("10.0.0.1", 22, 0, 0, 5, cookie=big), "tcp")[0][0]
    assert endpoint.cookie == big


def test_reused_endpoint_is_not_handed_out_for_another_cookie() -> None:
    # Same fields but another socket (an inode number reused after a close).
    reuse: dict[object, Endpoint] = {}
    before = parse_dump(_listener_v4("10.0.0.1", 22, 0, 0, 5, cookie=1), "tcp", reuse=reuse)[0]  # type: ignore[arg-type]
    after = parse_dump(_listener_v4("10.0.0.1", 22, 0, 0, 5, cookie=2), "tcp", reuse=reuse)[0]  # type: ignore[arg-type]
    assert [e.cookie for e in before + after] == [1, 2]
