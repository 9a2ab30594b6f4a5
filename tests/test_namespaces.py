"""Listeners in other network namespaces, on real namespaces.

The test itself runs in a private namespace (the `netns` fixture) that
plays the daemon's "host"; the other namespaces are made by `ip netns add`
and `unshare --net`, each holding a listener on the very same address and
port as the test's own.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from portwatchd.exposure import exposure_of
from portwatchd.sources.netlink import NetlinkScanner
from portwatchd.sources.netns import discover, host_netns
from portwatchd.sources.nsaddr import InterfaceNames, RouteTables, proc_addresses
from portwatchd.sources.nsopen import (
    ROUTE,
    SOCK_DIAG,
    NamespaceGoneError,
    open_in_namespace,
    socket_factory,
)
from portwatchd.sources.nsscan import NamespaceScanners
from tests.namespaces import UNSHARE_NET, holding, in_ip_netns, ip, ip_netns

PORT = 7777

pytestmark = pytest.mark.skipif(shutil.which("ip") is None, reason="needs ip(8) from iproute2")


@pytest.fixture
def host_listener(netns: None) -> Iterator[socket.socket]:
    """127.0.0.1:PORT in the test's own namespace, the daemon's "host"."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", PORT))
        sock.listen()
        yield sock


def socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets process `pid` holds, from its fd links."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        link = os.readlink(f"/proc/{pid}/fd/{fd}")
        if link.startswith("socket:["):
            inodes.add(int(link[8:-1]))
    return inodes


def namespace_scanner(path: str, inode: int) -> tuple[NetlinkScanner, RouteTables]:
    diag, route = open_in_namespace(path, (SOCK_DIAG, ROUTE))
    tables = RouteTables(route)
    sockets = iter([diag])
    scanner = NetlinkScanner(
        lambda: next(sockets, None) or socket_factory(path)(),
        netns=inode,
        interface_names=InterfaceNames(tables),
    )
    return scanner, tables


def test_discover_finds_mounted_and_process_namespaces(host_listener: socket.socket) -> None:
    listen = [("tcp", "127.0.0.1", PORT, "")]
    with ip_netns() as name, holding(listen, UNSHARE_NET) as holder:
        mounted = os.stat(f"/run/netns/{name}").st_ino
        found = discover()
        assert found[mounted].name == name
        assert found[mounted].path == f"/run/netns/{name}"
        assert found[mounted].pids == []
        assert holder.pid in found[holder.netns].pids
        assert found[holder.netns].path.endswith(f"/{found[holder.netns].pids[0]}/ns/net")
        assert found[holder.netns].name is None
        host = host_netns()
        assert host == os.stat("/proc/thread-self/ns/net").st_ino
        assert os.getpid() in found[host].pids
        assert len({host, mounted, holder.netns}) == 3


def test_a_file_left_under_the_mount_directory_is_not_a_namespace(tmp_path: Path) -> None:
    (tmp_path / "stale").write_text("")  # what `ip netns add` leaves when never mounted
    assert all(not ns.mounts for ns in discover(mount_dirs=(str(tmp_path),)).values())


def test_each_namespace_scan_sees_its_own_listener_only(host_listener: socket.socket) -> None:
    listen = [("tcp", "127.0.0.1", PORT, "")]
    with (
        ip_netns() as name,
        holding(listen, in_ip_netns(name)) as in_mounted,
        holding(listen, UNSHARE_NET) as in_unshared,
    ):
        host_scan = NetlinkScanner().scan()
        assert [(e.address, e.port, e.netns) for e in host_scan] == [("127.0.0.1", PORT, 0)]
        keys = {host_scan[0].key}
        for holder, path in (
            (in_mounted, f"/run/netns/{name}"),
            (in_unshared, f"/proc/{in_unshared.pid}/ns/net"),
        ):
            scanner, tables = namespace_scanner(path, holder.netns)
            with scanner:
                (endpoint,) = scanner.scan()
                assert scanner.scan() == [endpoint]  # the unchanged dump, reused, stays stamped
            tables.close()
            assert (endpoint.address, endpoint.port, endpoint.netns) == (
                "127.0.0.1",
                PORT,
                holder.netns,
            )
            assert endpoint.inode in socket_inodes(holder.pid)
            keys.add(endpoint.key)
        assert len(keys) == 3


def test_interface_names_are_the_namespace_s_own(netns: None) -> None:
    with ip_netns() as name:
        ip("-n", name, "link", "add", "pwbr0", "type", "bridge")
        ip("-n", name, "link", "set", "pwbr0", "up")
        listen = [("tcp", "0.0.0.0", PORT, "pwbr0")]
        with holding(listen, in_ip_netns(name)) as holder:
            scanner, tables = namespace_scanner(f"/run/netns/{name}", holder.netns)
            with scanner:
                assert [e.interface for e in scanner.scan()] == ["pwbr0"]
                # Our own namespace has lo only: the index means nothing here.
                assert socket.if_nameindex() == [(1, "lo")]
                ip("-n", name, "link", "set", "pwbr0", "down")
                ip("-n", name, "link", "set", "pwbr0", "name", "pwbr1")
                assert [e.interface for e in scanner.scan()] == ["pwbr1"]
            tables.close()


def test_exposure_from_the_addresses_a_namespace_holds(netns: None) -> None:
    # Addresses on bridges with no port: nothing is ever sent.
    with ip_netns() as name:
        for bridge, addresses in (
            ("pwinner", ["169.254.7.1/16", "10.7.0.1/24", "100.64.7.1/10", "fd07::1/64"]),
            ("pwouter", ["8.8.8.8/32"]),
        ):
            ip("-n", name, "link", "add", bridge, "type", "bridge")
            ip("-n", name, "link", "set", bridge, "up")
            for address in addresses:
                ip("-n", name, "addr", "add", address, "dev", bridge, "nodad")
        (route,) = open_in_namespace(f"/run/netns/{name}", (ROUTE,))
        tables = RouteTables(route)
        held = tables.addresses()
        tables.close()
        with holding([], in_ip_netns(name)) as holder:
            through_proc = proc_addresses(f"/proc/{holder.pid}")
        # Without setns, /proc/PID/net tells the same addresses (IPv4 ones without interface).
        assert sorted(through_proc) == sorted(
            (a.interface if a.family == "ipv6" else "", a.address, a.family) for a in held
        )
        assert {(a.interface, a.address) for a in held} >= {
            ("lo", "127.0.0.1"),
            ("pwinner", "10.7.0.1"),
            ("pwinner", "100.64.7.1"),
            ("pwinner", "fd07::1"),
            ("pwouter", "8.8.8.8"),
        }
        assert exposure_of("0.0.0.0", "", held) == "public"
        assert exposure_of("0.0.0.0", "pwinner", held) == "private"
        assert exposure_of("0.0.0.0", "lo", held) == "loopback"
        assert exposure_of("::", "pwinner", held, v6only=True) == "private"
        assert exposure_of("::", "", held, v6only=False) == "public"
        assert exposure_of("169.254.7.1", "", held) == "link-local"
        assert exposure_of("127.0.0.1", "", held) == "loopback"


_WITHOUT_SETNS = """
import json, sys
from portwatchd.sources.nsopen import SOCK_DIAG, NamespaceEntryRefused, open_in_namespace
from portwatchd.sources.netns import discover, host_netns
from portwatchd.sources.nsscan import NamespaceScanners
from portwatchd.sources.procnet import ProcScanner
pid, inode = int(sys.argv[1]), int(sys.argv[2])
try:
    open_in_namespace(f"/proc/{pid}/ns/net", (SOCK_DIAG,))
    refused = None
except NamespaceEntryRefused as error:
    refused = str(error)
found = ProcScanner(f"/proc/{pid}", netns=inode).scan()
scanners = NamespaceScanners(host_netns())
scanners.sync(discover())
source = scanners.sources[inode]
scanned, failed = scanners.scan()
print(json.dumps({
    "refused": refused,
    "found": [[e.address, e.port, e.netns] for e in found],
    "kind": source.kind,
    "reason": source.fallback_reason,
    "scanned": [[e.address, e.port, e.netns] for e in scanned[inode]],
    "failed": [str(error) for error in failed.values()],
    "addresses": [[a.address, a.family] for a in scanners.addresses(inode)],
}))
"""


def test_without_cap_sys_admin_the_namespace_is_read_through_proc(netns: None) -> None:
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv(1) from util-linux")
    with holding([("tcp", "127.0.0.1", PORT, "")], UNSHARE_NET) as holder:
        inode = holder.netns
        drop = ["setpriv", "--inh-caps=-sys_admin", "--bounding-set=-sys_admin"]
        run = subprocess.run(
            [*drop, sys.executable, "-c", _WITHOUT_SETNS, str(holder.pid), str(inode)],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent.parent,
        )
        result = json.loads(run.stdout)
    assert "CAP_SYS_ADMIN" in result["refused"]
    assert result["found"] == [["127.0.0.1", PORT, inode]]
    assert (result["kind"], result["scanned"]) == ("proc", [["127.0.0.1", PORT, inode]])
    assert "CAP_SYS_ADMIN" in result["reason"]
    assert sorted(result["addresses"]) == [["127.0.0.1", "ipv4"], ["::1", "ipv6"]]


def test_a_namespace_gone_is_named_so_and_no_longer_discovered(netns: None) -> None:
    with holding([("tcp", "127.0.0.1", PORT, "")], UNSHARE_NET) as holder:
        inode, path = holder.netns, f"/proc/{holder.pid}/ns/net"
        scanner, tables = namespace_scanner(path, inode)
    # The kept socket holds the namespace alive, yet nothing names it any more.
    assert inode not in discover()
    assert scanner.scan() == []
    scanner.close()
    tables.close()
    with pytest.raises(NamespaceGoneError, match="is gone"):
        open_in_namespace(path, (SOCK_DIAG,))


def test_namespace_scanners_follow_discovery(host_listener: socket.socket) -> None:
    listen = [("tcp", "127.0.0.1", PORT, ""), ("udp", "::", PORT, "")]
    scanners = NamespaceScanners(host_netns())
    try:
        with ip_netns() as name, holding(listen, in_ip_netns(name)) as holder:
            inode = holder.netns
            first = scanners.sync(discover())
            assert inode in first.opened
            assert host_netns() not in scanners.sources
            assert scanners.sources[inode].kind == "netlink"
            assert scanners.sync(discover()).opened == []
            found, failed = scanners.scan()
            assert inode not in failed
            assert sorted((e.proto, e.address, e.port, e.netns) for e in found[inode]) == [
                ("tcp", "127.0.0.1", PORT, inode),
                ("udp", "::", PORT, inode),
            ]
            addresses = scanners.addresses(inode)
            assert addresses is not None
            assert ("lo", "127.0.0.1") in [(a.interface, a.address) for a in addresses]
        # The process ended and the mount is gone: the kept sockets must go too.
        gone = scanners.sync(discover())
        assert inode in gone.closed
        assert inode not in scanners.sources
    finally:
        scanners.close()
