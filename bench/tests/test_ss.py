"""The `ss -lntu` baseline: its parser against real ss output and against junk."""

from __future__ import annotations

import contextlib
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.ss import SsParseError, parse_ss_output, ss_scan


def _listen(
    family: socket.AddressFamily, address: str, *, v6only: bool | None = None
) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    if v6only is not None:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
    sock.bind((address, 0))
    sock.listen()
    return sock


def test_ss_scan_sees_every_kind_of_listener_we_open(netns: None) -> None:
    v4 = _listen(socket.AF_INET, "127.0.0.1")
    v6 = _listen(socket.AF_INET6, "::1")
    dual = _listen(socket.AF_INET6, "::", v6only=False)
    only6 = _listen(socket.AF_INET6, "::", v6only=True)
    on_lo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    on_lo.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"lo")
    on_lo.bind(("127.0.0.1", 0))
    # A connected UDP socket is not listening: ss -l leaves it out.
    connected = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    connected.connect(("127.0.0.1", 9))
    try:
        found = {(e.key, e.family, e.v6only) for e in ss_scan()}
        assert found == {
            (f"tcp:127.0.0.1:{v4.getsockname()[1]}", "ipv4", None),
            (f"tcp:[::1]:{v6.getsockname()[1]}", "ipv6", None),
            (f"tcp:[::]:{dual.getsockname()[1]}", "ipv6", False),
            (f"tcp:[::]:{only6.getsockname()[1]}", "ipv6", True),
            (f"udp:127.0.0.1%lo:{on_lo.getsockname()[1]}", "ipv4", None),
        }
    finally:
        for sock in (v4, v6, dual, only6, on_lo, connected):
            sock.close()


def test_header_and_blank_lines_are_skipped() -> None:
    text = (
        "Netid State  Recv-Q Send-Q Local Address:Port  Peer Address:PortProcess\n"
        "\n"
        "udp   UNCONN 0      0            0.0.0.0:5353       0.0.0.0:*\n"
    )
    [endpoint] = parse_ss_output(text)
    assert (endpoint.proto, endpoint.address, endpoint.port) == ("udp", "0.0.0.0", 5353)


@pytest.mark.parametrize(
    ("line", "complaint"),
    [
        ("tcp LISTEN 0 128 127.0.0.1:22", "expected 6 columns"),
        ("raw UNCONN 0 0 0.0.0.0:1 0.0.0.0:*", "unknown netid 'raw'"),
        ("tcp LISTEN 0 128 127.0.0.1 0.0.0.0:*", "no port"),
        ("tcp LISTEN 0 128 []:22 0.0.0.0:*", "no address"),
    ],
)
def test_malformed_lines_are_named(line: str, complaint: str) -> None:
    with pytest.raises(SsParseError, match=f"line 1: .*{complaint}"):
        parse_ss_output(line)


@given(st.text())
def test_any_text_parses_or_raises_ss_parse_error(text: str) -> None:
    with contextlib.suppress(SsParseError):
        parse_ss_output(text)
