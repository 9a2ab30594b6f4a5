"""One scanner per network namespace besides the host's, kept between scans.

`NamespaceScanners.sync(discover())` opens a source for each namespace new
since the last sync and closes those of namespaces that are gone; `scan`
then looks at each in turn. A namespace's source is
- netlink: NETLINK_SOCK_DIAG and NETLINK_ROUTE sockets made inside it
  (nsopen), kept: a scan costs about 0.1 ms;
- proc: without CAP_SYS_ADMIN (setns refused), /proc/PID/net/* of a
  process inside it (about 8 ms, no interface binding, no v6only; its
  addresses from /proc/PID/net too); a namespace with no process left
  cannot be read this way.

A kept socket holds its namespace alive, so a namespace that no process
and no bind mount names any more must be closed here (`sync` does it), or
it would live on, invisible, for as long as the daemon runs.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from portwatchd.model import Endpoint
from portwatchd.sources.base import ScanError, Scanner
from portwatchd.sources.netlink import NetlinkScanner, new_receive_buffer
from portwatchd.sources.netns import Namespace
from portwatchd.sources.nsaddr import (
    InterfaceNames,
    NamespaceAddress,
    RouteTables,
    proc_addresses,
)
from portwatchd.sources.nsopen import (
    ROUTE,
    SOCK_DIAG,
    NamespaceEntryRefused,
    NamespaceGoneError,
    SocketSpec,
    open_in_namespace,
    socket_factory,
)
from portwatchd.sources.procnet import ProcScanner

OpenSockets = Callable[[str, Sequence[SocketSpec]], list[socket.socket]]


@dataclass
class NamespaceSource:
    """How one namespace is read, and what is known of it."""

    namespace: Namespace
    scanner: Scanner
    kind: Literal["netlink", "proc"]
    tables: RouteTables | None = None  # None for the proc fallback
    # Why netlink could not be used (the fallback's reason), for `status`.
    fallback_reason: str | None = None

    def close(self) -> None:
        self.scanner.close()
        if self.tables is not None:
            self.tables.close()


@dataclass
class SyncResult:
    """What a sync changed: inodes opened and closed, and namespaces that
    could not be read at all (inode -> reason)."""

    opened: list[int] = field(default_factory=list)
    closed: list[int] = field(default_factory=list)
    unreadable: dict[int, str] = field(default_factory=dict)


class NamespaceScanners:
    """Sources for every namespace but the host's (the daemon's own scanner).

    Not thread-safe: the scans share one receive buffer.
    """

    def __init__(self, host: int, open_sockets: OpenSockets = open_in_namespace) -> None:
        self.host = host
        self._open_sockets = open_sockets
        self._buffer = new_receive_buffer()
        self.sources: dict[int, NamespaceSource] = {}

    def sync(self, discovered: Mapping[int, Namespace]) -> SyncResult:
        """Open what is new in `discovered`, close what is no longer in it."""
        result = SyncResult()
        for inode in [inode for inode in self.sources if inode not in discovered]:
            self.release(inode)
            result.closed.append(inode)
        for inode, namespace in discovered.items():
            if inode == self.host:
                continue
            source = self.sources.get(inode)
            if source is not None:
                self._follow(source, namespace)
                continue
            try:
                self.sources[inode] = self._open(namespace)
            except NamespaceGoneError:
                continue  # gone between discovery and now: the next sync forgets it
            except ScanError as error:
                result.unreadable[inode] = str(error)
                continue
            result.opened.append(inode)
        return result

    def _open(self, namespace: Namespace) -> NamespaceSource:
        try:
            diag, route = self._open_sockets(namespace.path, (SOCK_DIAG, ROUTE))
        except NamespaceEntryRefused as refused:
            pid = namespace.pid
            if pid is None:
                raise ScanError(
                    f"{refused}; no process is in it, so /proc/PID/net cannot stand in",
                    source=namespace.path,
                ) from refused
            fallback = ProcScanner(f"/proc/{pid}", netns=namespace.inode)
            return NamespaceSource(namespace, fallback, "proc", fallback_reason=str(refused))
        kept = [diag]

        def reopen() -> socket.socket:
            # The first socket was made above; after an error the scanner
            # asks for another, made in the namespace again.
            return kept.pop() if kept else socket_factory(namespace.path)()

        tables = RouteTables(route)
        scanner = NetlinkScanner(
            reopen,
            netns=namespace.inode,
            interface_names=InterfaceNames(tables),
            receive_buffer=self._buffer,
        )
        return NamespaceSource(namespace, scanner, "netlink", tables)

    @staticmethod
    def _follow(source: NamespaceSource, namespace: Namespace) -> None:
        """Keep the newest view; the proc fallback moves to a process still there."""
        source.namespace = namespace
        if isinstance(source.scanner, ProcScanner) and namespace.pid is not None:
            source.scanner.root = f"/proc/{namespace.pid}"

    def release(self, inode: int) -> None:
        """Close a namespace's sockets (they hold it alive) and forget it."""
        source = self.sources.pop(inode, None)
        if source is not None:
            source.close()

    def scan(self) -> tuple[dict[int, list[Endpoint]], dict[int, ScanError]]:
        """Every namespace's endpoints (stamped with its inode), and the
        namespaces whose scan failed this time."""
        found: dict[int, list[Endpoint]] = {}
        failed: dict[int, ScanError] = {}
        for inode, source in self.sources.items():
            try:
                found[inode] = source.scanner.scan()
            except ScanError as error:
                failed[inode] = error
        return found, failed

    def addresses(self, inode: int) -> list[NamespaceAddress] | None:
        """The addresses namespace `inode` holds (for exposure.exposure_of);
        None for a namespace not known here. Raises ScanError.

        Through the proc fallback IPv4 addresses carry no interface, which
        does not matter there: /proc tells no socket's device either.
        """
        source = self.sources.get(inode)
        if source is None:
            return None
        if source.tables is None:
            assert isinstance(source.scanner, ProcScanner)
            return proc_addresses(source.scanner.root)
        return source.tables.addresses()

    def close(self) -> None:
        for inode in list(self.sources):
            self.release(inode)
