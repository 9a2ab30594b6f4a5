"""The /proc/net table parser, on recorded tables, damaged text, and a fake /proc root.

The fixtures were recorded by tests/fixtures/netlink_record.py on x86-64
(little-endian) from the sockets in tests/fixtures/netlink_ss_antue.txt, the
same sockets as the netlink fixtures.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portwatchd.model import Endpoint
from portwatchd.sources.base import ParseError, ScanError, SourceUnavailable
from portwatchd.sources.procnet import ProcScanner, decode_address, parse_proc_net

FIXTURES = Path(__file__).parent / "fixtures"

# /proc cannot know SO_BINDTODEVICE or IPV6_V6ONLY: interface "" and v6only None.
EXPECTED = {
    "tcp": [
        Endpoint("tcp", "ipv4", "0.0.0.0", 22, "", None, 139732, 0),
        Endpoint("tcp", "ipv4", "127.0.0.1", 8080, "", None, 139733, 65534),
    ],
    "tcp6": [
        Endpoint("tcp", "ipv6", "::", 22, "", None, 139734, 0),
        Endpoint("tcp", "ipv6", "::", 80, "", None, 139735, 0),
        Endpoint("tcp", "ipv6", "::ffff:127.0.0.1", 8443, "", None, 139736, 0),
    ],
    "udp": [
        Endpoint("udp", "ipv4", "0.0.0.0", 5353, "", None, 139740, 0),
        Endpoint("udp", "ipv4", "127.0.0.53", 53, "", None, 139741, 0),
        Endpoint("udp", "ipv4", "127.0.0.1", 6000, "", None, 139744, 0),
        Endpoint("udp", "ipv4", "127.0.0.1", 6000, "", None, 139745, 0),
        Endpoint("udp", "ipv4", "0.0.0.0", 33160, "", None, 139747, 0),
    ],
    "udp6": [
        Endpoint("udp", "ipv6", "::", 546, "", None, 139742, 0),
        Endpoint("udp", "ipv6", "::ffff:127.0.0.1", 5300, "", None, 139743, 0),
    ],
}
KINDS = {
    "tcp": ("tcp", "ipv4"),
    "tcp6": ("tcp", "ipv6"),
    "udp": ("udp", "ipv4"),
    "udp6": ("udp", "ipv6"),
}


def table(name: str) -> str:
    return (FIXTURES / f"proc_{name}.txt").read_text()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recorded_table_parses_to_the_listening_sockets(name: str) -> None:
    proto, family = KINDS[name]
    endpoints = parse_proc_net(table(name), proto, family, f"/proc/net/{name}", "little")  # type: ignore[arg-type]
    assert sorted(endpoints, key=lambda e: e.inode) == EXPECTED[name]


def test_recorded_tables_hold_non_listeners_that_are_dropped() -> None:
    # Established TCP (st 01) and connected UDP (st 01, remote port 9) are in the text...
    assert " 01 " in table("tcp")
    assert "0100007F:0009 01 " in table("udp")
    # ...and not in the result (checked exactly above); the counts make it visible.
    assert len(table("tcp").splitlines()) - 1 == 4
    assert len(EXPECTED["tcp"]) == 2


def test_wildcards_stay_distinct() -> None:
    # The old monitor turned both into "*": one socket each on 0.0.0.0:22 and
    # [::]:22 then looked like one, and closing either made phantom events.
    keys = [e.key for e in parse_proc_net(table("tcp"), "tcp", "ipv4", "tcp", "little")]
    keys += [e.key for e in parse_proc_net(table("tcp6"), "tcp", "ipv6", "tcp6", "little")]
    assert "tcp:0.0.0.0:22" in keys
    assert "tcp:[::]:22" in keys


@pytest.mark.parametrize(
    ("text", "family", "byteorder", "address"),
    [
        ("0100007F", "ipv4", "little", "127.0.0.1"),
        ("7F000001", "ipv4", "big", "127.0.0.1"),
        ("3500007F", "ipv4", "little", "127.0.0.53"),
        ("00000000", "ipv4", "little", "0.0.0.0"),
        ("0000000000000000FFFF00000100007F", "ipv6", "little", "::ffff:127.0.0.1"),
        ("00000000000000000000FFFF7F000001", "ipv6", "big", "::ffff:127.0.0.1"),
        ("000080FE000000000000000001000000", "ipv6", "little", "fe80::1"),
        ("00000000000000000000000001000000", "ipv6", "little", "::1"),
        ("00000000000000000000000000000000", "ipv6", "little", "::"),
    ],
)
def test_decode_address_reverses_host_order_words(
    text: str, family: str, byteorder: str, address: str
) -> None:
    assert decode_address(text, family, byteorder) == address  # type: ignore[arg-type]


def test_malformed_line_names_file_and_line() -> None:
    lines = table("udp").splitlines()
    lines[3] = lines[3].replace(":1770", ":17G0")
    with pytest.raises(ParseError) as caught:
        parse_proc_net("\n".join(lines), "udp", "ipv4", "/proc/net/udp")
    assert caught.value.line == 4
    assert caught.value.source == "/proc/net/udp"
    assert str(caught.value).startswith("/proc/net/udp, line 4: not a socket line")


def test_ipv4_table_read_as_ipv6_is_an_error() -> None:
    with pytest.raises(ParseError, match=r"/proc/net/tcp6, line 2"):
        parse_proc_net(table("tcp"), "tcp", "ipv6", "/proc/net/tcp6")


def test_missing_header_is_an_error() -> None:
    with pytest.raises(ParseError, match=r"^x, line 1: expected the header"):
        parse_proc_net("", "tcp", "ipv4", "x")
    body = table("tcp").splitlines()[1:]
    with pytest.raises(ParseError, match=r"line 1"):
        parse_proc_net("\n".join(body), "tcp", "ipv4", "x")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400), st.sampled_from(sorted(KINDS)))
def test_any_text_parses_or_raises_parse_error(text: str, name: str) -> None:
    proto, family = KINDS[name]
    for candidate in (text, table(name).splitlines()[0] + "\n" + text):
        try:
            endpoints = parse_proc_net(candidate, proto, family, "p")  # type: ignore[arg-type]
        except ParseError:
            continue
        assert all(isinstance(e, Endpoint) for e in endpoints)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(sorted(KINDS)),
    st.lists(st.tuples(st.integers(min_value=0), st.characters()), max_size=6),
)
def test_damaged_tables_parse_or_raise_parse_error(
    name: str, damage: list[tuple[int, str]]
) -> None:
    text = list(table(name))
    for position, char in damage:
        text[position % len(text)] = char
    proto, family = KINDS[name]
    try:
        endpoints = parse_proc_net("".join(text), proto, family, "p")  # type: ignore[arg-type]
    except ParseError as exc:
        assert exc.line is not None
        return
    assert all(0 <= e.port <= 65535 for e in endpoints)


def fake_proc(root: Path, tables: list[str]) -> Path:
    (root / "net").mkdir(parents=True)
    for name in tables:
        shutil.copy(FIXTURES / f"proc_{name}.txt", root / "net" / name)
    return root


def test_proc_scanner_reads_all_four_tables_of_its_root(tmp_path: Path) -> None:
    root = fake_proc(tmp_path / "proc", ["tcp", "tcp6", "udp", "udp6"])
    scanner = ProcScanner(root=str(root))
    assert scanner.name == "proc"
    expected = [e for name in EXPECTED for e in EXPECTED[name]]
    assert sorted(scanner.scan(), key=lambda e: e.inode) == sorted(expected, key=lambda e: e.inode)
    scanner.close()


def test_ipv6_disabled_is_no_ipv6_sockets(tmp_path: Path) -> None:
    root = fake_proc(tmp_path / "proc", ["tcp", "udp"])
    endpoints = ProcScanner(root=str(root)).scan()
    assert {e.family for e in endpoints} == {"ipv4"}
    assert len(endpoints) == len(EXPECTED["tcp"]) + len(EXPECTED["udp"])


def test_missing_ipv4_table_is_source_unavailable(tmp_path: Path) -> None:
    root = fake_proc(tmp_path / "proc", ["tcp6", "udp", "udp6"])
    with pytest.raises(SourceUnavailable, match=r"proc/net/tcp does not exist"):
        ProcScanner(root=str(root)).scan()


def test_malformed_file_error_names_its_path(tmp_path: Path) -> None:
    root = fake_proc(tmp_path / "proc", ["tcp", "tcp6", "udp", "udp6"])
    with (root / "net" / "udp6").open("a") as file:
        file.write("garbage\n")
    with pytest.raises(ParseError) as caught:
        ProcScanner(root=str(root)).scan()
    assert caught.value.source == f"{root}/net/udp6"
    assert caught.value.line == len(table("udp6").splitlines()) + 1


def test_non_ascii_file_is_a_parse_error(tmp_path: Path) -> None:
    root = fake_proc(tmp_path / "proc", ["tcp", "tcp6", "udp", "udp6"])
    (root / "net" / "tcp").write_bytes(b"  sl \xff\n")
    with pytest.raises(ScanError, match="not ASCII"):
        ProcScanner(root=str(root)).scan()
