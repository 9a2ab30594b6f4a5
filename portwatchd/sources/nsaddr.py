"""Interfaces and addresses of one network namespace, from NETLINK_ROUTE dumps.

if_indextoname(3) and getifaddrs(3) answer for the caller's own namespace
only; a NETLINK_ROUTE socket made inside another namespace (nsopen.py)
answers for that one, from any thread. `RouteTables` dumps links
(RTM_GETLINK) and addresses (RTM_GETADDR) through such a socket;
`InterfaceNames` is the index -> name lookup NetlinkScanner takes.

Wire format (include/uapi/linux/rtnetlink.h, if_link.h, if_addr.h), host
byte order except the address bytes, which are in network order:

    struct ifinfomsg { u8 family, pad; u16 type; i32 index; u32 flags, change; }  16 bytes
    struct ifaddrmsg { u8 family, prefixlen, flags, scope; u32 index; }           8 bytes
    then struct rtattr { u16 len, type; } + payload, each padded to 4 bytes:
    IFLA_IFNAME (3) a NUL-terminated name; IFA_ADDRESS (1), IFA_LOCAL (2).

For an address, IFA_LOCAL is the interface's own address when present;
on a point-to-point link IFA_ADDRESS is the peer's, so it is only the
fallback.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from typing import Final, NamedTuple

from portwatchd.model import Family
from portwatchd.sources.base import ParseError, ScanError
from portwatchd.text import printable_name

SOURCE: Final = "rtnetlink"

NLMSGHDR: Final = struct.Struct("=IHHII")
RTATTR: Final = struct.Struct("=HH")
IFINFOMSG: Final = struct.Struct("=BxHiII")
IFADDRMSG: Final = struct.Struct("=BBBBI")
ERRNO: Final = struct.Struct("=i")

NLMSG_ERROR: Final = 2
NLMSG_DONE: Final = 3
RTM_NEWLINK: Final = 16
RTM_GETLINK: Final = 18
RTM_NEWADDR: Final = 20
RTM_GETADDR: Final = 22
IFLA_IFNAME: Final = 3
IFA_ADDRESS: Final = 1
IFA_LOCAL: Final = 2
NLM_F_REQUEST: Final = 0x1
NLM_F_DUMP: Final = 0x300
RECEIVE_BUFFER_BYTES: Final = 1 << 16
REPLY_TIMEOUT_S: Final = 5
_FAMILIES: Final[dict[int, Family]] = {socket.AF_INET: "ipv4", socket.AF_INET6: "ipv6"}
_ADDRESS_BYTES: Final = {socket.AF_INET: 4, socket.AF_INET6: 16}


class NamespaceAddress(NamedTuple):
    """An address a namespace holds, on an interface."""

    interface: str
    address: str  # inet_ntop form
    family: Family


def _attributes(data: memoryview, offset: int, end: int) -> Iterator[tuple[int, memoryview]]:
    while end - offset >= RTATTR.size:
        length, kind = RTATTR.unpack_from(data, offset)
        if length < RTATTR.size or length > end - offset:
            raise ParseError(
                f"attribute length {length} does not fit", source=SOURCE, offset=offset
            )
        yield kind, data[offset + RTATTR.size : offset + length]
        offset += (length + 3) & ~3


def _messages(data: memoryview, seq: int) -> Iterator[tuple[int, int, int]]:
    """(type, body offset, end) of each message of dump `seq`.

    Messages of another sequence number are the rest of an earlier dump
    that failed half-way: skipped, so that the socket drains itself.
    """
    offset = 0
    while offset < len(data):
        if len(data) - offset < NLMSGHDR.size:
            raise ParseError("truncated netlink header", source=SOURCE, offset=offset)
        length, kind, _flags, got_seq, _pid = NLMSGHDR.unpack_from(data, offset)
        if length < NLMSGHDR.size or length > len(data) - offset:
            raise ParseError(f"message length {length} does not fit", source=SOURCE, offset=offset)
        body = offset + NLMSGHDR.size
        if got_seq != seq:
            offset = (offset + length + 3) & ~3
            continue
        if kind in (NLMSG_ERROR, NLMSG_DONE):
            (error,) = ERRNO.unpack_from(data, body) if length >= NLMSGHDR.size + 4 else (0,)
            if error < 0:
                raise ScanError(f"rtnetlink dump failed: errno {-error}", source=SOURCE)
        yield kind, body, offset + length
        offset = (offset + length + 3) & ~3


def parse_links(data: memoryview, seq: int) -> tuple[dict[int, str], bool]:
    """Index -> name from one datagram of an RTM_GETLINK dump; and whether it was the last."""
    names: dict[int, str] = {}
    for kind, body, end in _messages(data, seq):
        if kind == NLMSG_DONE:
            return names, True
        if kind != RTM_NEWLINK or end - body < IFINFOMSG.size:
            continue
        _family, _type, index, _flags, _change = IFINFOMSG.unpack_from(data, body)
        for attr, payload in _attributes(data, body + IFINFOMSG.size, end):
            if attr == IFLA_IFNAME:
                raw = bytes(payload).split(b"\0", 1)[0]
                names[index] = printable_name(raw.decode("utf-8", "surrogateescape"))
    return names, False


def parse_addresses(data: memoryview, seq: int) -> tuple[list[tuple[int, str, Family]], bool]:
    """(interface index, address, family) from one datagram of an RTM_GETADDR dump."""
    found: list[tuple[int, str, Family]] = []
    for kind, body, end in _messages(data, seq):
        if kind == NLMSG_DONE:
            return found, True
        if kind != RTM_NEWADDR or end - body < IFADDRMSG.size:
            continue
        family, _prefix, _flags, _scope, index = IFADDRMSG.unpack_from(data, body)
        if family not in _FAMILIES:
            continue
        attrs = dict(_attributes(data, body + IFADDRMSG.size, end))
        raw = attrs.get(IFA_LOCAL, attrs.get(IFA_ADDRESS))
        if raw is not None:
            if len(raw) != _ADDRESS_BYTES[family]:
                raise ParseError(f"address of {len(raw)} bytes", source=SOURCE, offset=body)
            found.append((index, socket.inet_ntop(family, bytes(raw)), _FAMILIES[family]))
    return found, False


# -- without NETLINK_ROUTE: /proc/PID/net, for a namespace we may not enter -------


def parse_fib_trie(text: str) -> list[str]:
    """The IPv4 addresses of the namespace, from /proc/net/fib_trie.

    An address the namespace holds is a leaf with a "/32 host LOCAL" entry:

        |-- 192.0.2.2
           /32 host LOCAL

    The file shows the Main and the Local table: each address once here.
    The interface is not told.
    """
    found: list[str] = []
    leaf = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("|-- "):
            leaf = stripped[4:]
        elif leaf is not None and stripped == "/32 host LOCAL" and leaf not in found:
            found.append(leaf)
    return found


def parse_if_inet6(text: str) -> list[tuple[str, str]]:
    """(interface, address) of the IPv6 addresses, from /proc/net/if_inet6.

    A line is: 32 hex digits of the address in network order, the interface
    index, prefix length, scope and flags in hex, then the interface name:

        fd000000000000000000000000000002 04 40 00 82     eth0
    """
    found: list[tuple[str, str]] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) != 6 or len(fields[0]) != 32:
            continue
        try:
            raw = bytes.fromhex(fields[0])
        except ValueError:
            continue
        found.append((fields[5], socket.inet_ntop(socket.AF_INET6, raw)))
    return found


def proc_addresses(root: str) -> list[NamespaceAddress]:
    """The addresses of the namespace of process `root` ("/proc/PID"), read
    from its net/fib_trie and net/if_inet6; IPv4 ones have interface "".
    Raises ScanError when the files cannot be read (the process exited)."""
    texts = []
    for name in ("fib_trie", "if_inet6"):
        path = f"{root}/net/{name}"
        try:
            with open(path, encoding="ascii", errors="replace") as file:
                texts.append(file.read())
        except FileNotFoundError:
            texts.append("")  # if_inet6 is absent when IPv6 is off
        except OSError as exc:
            raise ScanError(f"cannot read {path}: {exc.strerror}", source=path) from exc
    ipv4 = [NamespaceAddress("", address, "ipv4") for address in parse_fib_trie(texts[0])]
    ipv6 = [NamespaceAddress(name, address, "ipv6") for name, address in parse_if_inet6(texts[1])]
    return ipv4 + ipv6


class RouteTables:
    """Dumps links and addresses through one NETLINK_ROUTE socket (any namespace's).

    Takes ownership of `sock`. Not thread-safe.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._seq = 0
        sock.setsockopt(
            socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("@ll", REPLY_TIMEOUT_S, 0)
        )

    def _request(self, kind: int, family_header: bytes) -> int:
        self._seq = self._seq % 0xFFFF + 1
        header = NLMSGHDR.pack(
            NLMSGHDR.size + len(family_header), kind, NLM_F_REQUEST | NLM_F_DUMP, self._seq, 0
        )
        try:
            self._sock.sendto(header + family_header, (0, 0))
        except OSError as exc:
            raise ScanError(f"rtnetlink request failed: {exc.strerror}", source=SOURCE) from exc
        return self._seq

    def _datagrams(self) -> Iterator[memoryview]:
        # A buffer per dump, not per socket: dumps are rare (an unknown
        # interface index, a refresh of addresses) and a namespace's kept
        # sockets should cost next to no memory.
        buffer = bytearray(RECEIVE_BUFFER_BYTES)
        view = memoryview(buffer)
        while True:
            try:
                size = self._sock.recv_into(buffer, 0, socket.MSG_TRUNC)
            except OSError as exc:  # EAGAIN after SO_RCVTIMEO, ENOBUFS...
                raise ScanError(
                    f"rtnetlink dump failed: {exc.strerror}", source=SOURCE, errno=exc.errno
                ) from exc
            if size > len(buffer):
                raise ParseError(f"datagram of {size} bytes exceeds the buffer", source=SOURCE)
            yield view[:size]

    def links(self) -> dict[int, str]:
        """Interface index -> name, in the socket's namespace."""
        seq = self._request(RTM_GETLINK, IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0))
        names: dict[int, str] = {}
        for datagram in self._datagrams():
            part, done = parse_links(datagram, seq)
            names.update(part)
            if done:
                return names
        raise AssertionError("unreachable")  # pragma: no cover

    def addresses(self) -> list[NamespaceAddress]:
        """Every IPv4 and IPv6 address in the socket's namespace, with its interface."""
        seq = self._request(RTM_GETADDR, IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0))
        raw: list[tuple[int, str, Family]] = []
        for datagram in self._datagrams():
            part, done = parse_addresses(datagram, seq)
            raw += part
            if done:
                break
        names = self.links()
        return [NamespaceAddress(names.get(i, str(i)), a, f) for i, a, f in raw]

    def close(self) -> None:
        self._sock.close()


class InterfaceNames:
    """Index -> name in one namespace, for NetlinkScanner(interface_names=...).

    A miss dumps the links again, at most once between two `forget()`
    calls (the scanner forgets at the start of every scan: interfaces can
    be renamed, and an index can be reused by a new device). A socket
    bound to a device that is gone keeps the number, as interface_name does.
    """

    def __init__(self, tables: RouteTables) -> None:
        self._tables = tables
        self._names: dict[int, str] = {}
        self._fresh = False

    def forget(self) -> None:
        self._names.clear()
        self._fresh = False

    def __call__(self, index: int) -> str:
        if index == 0:
            return ""
        name = self._names.get(index)
        if name is None and not self._fresh:
            self._names = self._tables.links()
            self._fresh = True
            name = self._names.get(index)
        return name if name is not None else str(index)
