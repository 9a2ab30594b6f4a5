"""Where each listener lives, for the engine and the `ports` reply: the
adapter around the pure `place.place_of`.

It knows the host's namespace inode, reads each namespace's addresses
(NETLINK_ROUTE, through the namespace's own socket; /proc/PID/net for a
namespace read through /proc) and keeps them for ADDRESSES_TTL_S, and
tells a holder's container from the cgroup path its Owner carries. Only
the loop thread calls it.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Sequence
from functools import lru_cache

from portwatchd.containers import Container, container_of_path
from portwatchd.model import Endpoint, Owner, Place
from portwatchd.place import place_of
from portwatchd.sources.allns import AllNamespaces
from portwatchd.sources.base import ScanError
from portwatchd.sources.nsaddr import RouteTables, proc_addresses

# Addresses change rarely (DHCP, a container's veth); a wildcard listener's
# exposure follows them within this long.
ADDRESSES_TTL_S = 10.0
NETLINK_ROUTE = 0

Addresses = Sequence[Sequence[str]]


@lru_cache(maxsize=4096)
def _container(cgroup: str) -> Container | None:
    return container_of_path(cgroup)


class Places:
    def __init__(
        self,
        host_netns: int,
        scanner: Callable[[], object] = lambda: None,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host_netns = host_netns
        # The engine's scanner, which a reload may replace: the namespaces'
        # names and addresses come from it when it watches them all.
        self._scanner = scanner
        self._monotonic = monotonic
        self._addresses: dict[int, tuple[float, Addresses | None]] = {}
        self._host_tables: RouteTables | None = None

    @property
    def namespaces(self) -> AllNamespaces | None:
        scanner = self._scanner()
        return scanner if isinstance(scanner, AllNamespaces) else None

    def place(self, endpoint: Endpoint, owner: Owner) -> Place:
        netns_name = None
        namespaces = self.namespaces
        if endpoint.netns and namespaces is not None:
            netns_name = namespaces.name_of(endpoint.netns)
        return place_of(
            endpoint,
            host_netns=self.host_netns,
            netns_name=netns_name,
            container=_container(owner.cgroup) if owner.cgroup else None,
            addresses=self._addresses_of(endpoint.netns),
        )

    def _addresses_of(self, netns: int) -> Addresses | None:
        now = self._monotonic()
        cached = self._addresses.get(netns)
        if cached is not None and now - cached[0] < ADDRESSES_TTL_S:
            return cached[1]
        addresses = self._read_addresses(netns)
        self._addresses[netns] = (now, addresses)
        return addresses

    def _read_addresses(self, netns: int) -> Addresses | None:
        """None when they cannot be read: a wildcard's exposure stays unknown."""
        try:
            if netns == 0:
                return self._host_addresses()
            namespaces = self.namespaces
            if namespaces is None:
                return None
            return namespaces.others.addresses(netns)
        except (ScanError, OSError):
            return None

    def _host_addresses(self) -> Addresses:
        if self._host_tables is None:
            try:
                sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
            except OSError:  # NETLINK_ROUTE refused (a sandbox): what /proc says
                return proc_addresses("/proc/self")
            self._host_tables = RouteTables(sock)
        return self._host_tables.addresses()

    def forget(self, netns: int) -> None:
        self._addresses.pop(netns, None)

    def close(self) -> None:
        if self._host_tables is not None:
            self._host_tables.close()
            self._host_tables = None
