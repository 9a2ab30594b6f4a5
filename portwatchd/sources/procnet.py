"""Listening sockets from /proc/net/{tcp,tcp6,udp,udp6} (the fallback source).

Slower than netlink and blind to two things netlink sees: the device a
socket is bound to (SO_BINDTODEVICE) and IPV6_V6ONLY. Endpoints from here
carry interface "" and v6only None ("cannot tell"), never a guess.
"""

from __future__ import annotations

import re
import socket
import sys
from dataclasses import replace
from typing import Final, Literal

from portwatchd.model import Endpoint, Family, Proto
from portwatchd.sources.base import ParseError, ScanError, SourceUnavailable

ByteOrder = Literal["little", "big"]

TCP_LISTEN_HEX: Final = "0A"
TCP_CLOSE_HEX: Final = "07"  # a bound UDP socket that is not connected

# (file name, protocol, family); the IPv6 files are absent when IPv6 is off.
TABLES: Final[tuple[tuple[str, Proto, Family], ...]] = (
    ("tcp", "tcp", "ipv4"),
    ("tcp6", "tcp", "ipv6"),
    ("udp", "udp", "ipv4"),
    ("udp6", "udp", "ipv6"),
)
OPTIONAL_TABLES: Final = frozenset({"tcp6", "udp6"})

_HEX_DIGITS_BY_FAMILY: Final[dict[Family, int]] = {"ipv4": 8, "ipv6": 32}


def _line_pattern(address_hex_digits: int) -> re.Pattern[str]:
    address = rf"[0-9A-Fa-f]{{{address_hex_digits}}}"
    # sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...
    return re.compile(
        rf"\s*\d+:\s+({address}):([0-9A-Fa-f]{{4}})\s+{address}:([0-9A-Fa-f]{{4}})"
        rf"\s+([0-9A-Fa-f]{{2}})\s+\S+\s+\S+\s+\S+\s+(\d+)\s+\d+\s+(\d+)(?:\s|$)",
        re.ASCII,
    )


_LINE_PATTERNS: Final[dict[Family, re.Pattern[str]]] = {
    family: _line_pattern(digits) for family, digits in _HEX_DIGITS_BY_FAMILY.items()
}


def decode_address(hex_text: str, family: Family, byteorder: ByteOrder = sys.byteorder) -> str:
    """An address as /proc/net prints it -> inet_ntop form.

    The kernel prints the address as 32-bit words with "%08X", each word
    read from the network-order address bytes in *host* byte order. On a
    little-endian host (x86-64, arm64) every word therefore comes out with
    its four bytes reversed:

        127.0.0.1 = bytes 7f 00 00 01 -> u32 0x0100007F -> "0100007F"
        "0100007F" -> 0x0100007F -> to_bytes(4, "little") = 7f 00 00 01

        ::ffff:127.0.0.1 = bytes 00*10 ff ff 7f 00 00 01
            -> "0000000000000000FFFF00000100007F"
               (words 00000000 00000000 FFFF0000 0100007F)

    A big-endian host prints the bytes in order; `byteorder` says which
    host wrote the text.
    """
    raw = b"".join(
        int(hex_text[i : i + 8], 16).to_bytes(4, byteorder) for i in range(0, len(hex_text), 8)
    )
    return socket.inet_ntop(socket.AF_INET if family == "ipv4" else socket.AF_INET6, raw)


def parse_proc_net(
    text: str,
    proto: Proto,
    family: Family,
    path: str,
    byteorder: ByteOrder = sys.byteorder,
) -> list[Endpoint]:
    """The listening endpoints in the text of one /proc/net table.

    TCP: sockets in LISTEN (st 0A). UDP: sockets in CLOSE (st 07) with
    remote port 0, i.e. bound and not connected, as `ss -lnu` lists them.
    Raises ParseError naming `path` and the 1-based line number.
    """
    lines = text.splitlines()
    if not lines or not lines[0].lstrip().startswith("sl"):
        raise ParseError("expected the header line starting with 'sl'", source=path, line=1)
    pattern = _LINE_PATTERNS[family]
    listening_state = TCP_LISTEN_HEX if proto == "tcp" else TCP_CLOSE_HEX
    endpoints: list[Endpoint] = []
    for number, line in enumerate(lines[1:], start=2):
        match = pattern.match(line)
        if match is None:
            if not line.strip():
                continue
            raise ParseError(f"not a socket line: {line.strip()[:120]!r}", source=path, line=number)
        local_hex, port_hex, remote_port_hex, state, uid, inode = match.groups()
        if state.upper() != listening_state:
            continue
        if proto == "udp" and int(remote_port_hex, 16) != 0:
            continue
        endpoints.append(
            Endpoint(
                proto=proto,
                family=family,
                address=decode_address(local_hex, family, byteorder),
                port=int(port_hex, 16),  # printed after ntohs(): a plain number
                interface="",  # /proc cannot tell: see module doc
                v6only=None,
                inode=int(inode),
                uid=int(uid),
            )
        )
    return endpoints


class ProcScanner:
    """Scans by reading {root}/net/{tcp,tcp6,udp,udp6}.

    /proc/PID/net shows the network namespace of process PID: with
    root="/proc/PID" and that namespace's inode as `netns`, this scans a
    namespace we may not enter (setns needs CAP_SYS_ADMIN; reading these
    files does not). The endpoints carry `netns`.
    """

    name = "proc"
    # /proc/net/udp is read a page per read(), and each page starts by
    # counting sockets from the table's start (udp_seq_start ->
    # udp_get_idx): a churn socket removed before the cut shifts a stable
    # one past it, and a re-read right away often cuts at the same socket.
    rereads_independent = False
    # One namespace: none of it is ever gone while it is scanned.
    gone_namespaces: frozenset[int] = frozenset()

    # /proc/self/net, not /proc/net: the same table (our network namespace),
    # and still visible where systemd's ProcSubset=pid hides /proc/net.
    def __init__(self, root: str = "/proc/self", *, netns: int = 0) -> None:
        self.root = root.rstrip("/") or "/"
        self.netns = netns

    def _read(self, table: str) -> str | None:
        path = f"{self.root}/net/{table}"
        try:
            with open(path, encoding="ascii") as file:
                return file.read()
        except FileNotFoundError as exc:
            if table in OPTIONAL_TABLES:
                return None  # IPv6 disabled: no IPv6 sockets, not an error
            raise SourceUnavailable(
                f"{path} does not exist: is /proc mounted?", source=path, errno=exc.errno
            ) from exc
        except PermissionError as exc:
            raise SourceUnavailable(
                f"cannot read {path}: {exc.strerror}", source=path, errno=exc.errno
            ) from exc
        except UnicodeDecodeError as exc:
            raise ParseError(f"not ASCII text: {exc.reason}", source=path) from exc
        except OSError as exc:
            raise ScanError(
                f"cannot read {path}: {exc.strerror}", source=path, errno=exc.errno
            ) from exc

    def scan(self) -> list[Endpoint]:
        endpoints: list[Endpoint] = []
        for table, proto, family in TABLES:
            text = self._read(table)
            if text is not None:
                endpoints += parse_proc_net(text, proto, family, f"{self.root}/net/{table}")
        if self.netns:
            return [replace(endpoint, netns=self.netns) for endpoint in endpoints]
        return endpoints

    def close(self) -> None:
        """Nothing to release: every scan opens and closes its files."""
