"""Every network namespace as one source: the host's scanner and one per
other namespace (`nsscan.NamespaceScanners`), seen by the engine as one.

Each scan first rediscovers the namespaces (cheaply: only processes new
since the last look are read, see `netns.discover`), so that a listener
in a brand-new namespace is found by the same scan. A namespace whose own
scan fails this time keeps the sockets it had (a namespace's error is not
a close of its listeners); one that is gone (no process, no bind mount)
is released, and `gone_namespaces` names it until the next scan, so that
the engine reports its listeners closed with that reason.

Only a failure of the host's scan fails the whole scan.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from portwatchd.model import PRIORITY_INFO, PRIORITY_WARNING, Endpoint
from portwatchd.sources.base import Scanner
from portwatchd.sources.netns import Namespace, discover
from portwatchd.sources.nsscan import NamespaceScanners

Say = Callable[[int, str], None]
_GONE_FOR_SCANS = 4


class AllNamespaces:
    def __init__(
        self,
        host: Scanner,
        others: NamespaceScanners,
        *,
        say: Say,
        discover_namespaces: Callable[[dict[str, int]], Mapping[int, Namespace]] = (
            lambda known: discover(known=known)
        ),
    ) -> None:
        self.host = host
        self.others = others
        self.name = host.name
        self.rereads_independent = host.rereads_independent
        self._say = say
        self._discover = discover_namespaces
        self._known_pids: dict[str, int] = {}
        # Each watched namespace's `ip netns` name, kept past its release so
        # that the closes of its listeners still name it.
        self._names: dict[int, str | None] = {}
        self._last: dict[int, list[Endpoint]] = {}
        # Namespaces that cannot be read, and why (for status).
        self.unreadable: dict[int, str] = {}
        # Released namespaces -> scans they are still named gone for: the
        # engine's pass (and its second look) ends before that.
        self._gone: dict[int, int] = {}
        self._gone_names: dict[int, str | None] = {}

    def scan(self) -> list[Endpoint]:
        endpoints = self.host.scan()
        self._sync()
        found, failed = self.others.scan()
        if not found and not failed:
            return endpoints
        merged = list(endpoints)
        for inode, own in found.items():
            self._last[inode] = own
            merged += own
        for inode, error in failed.items():
            if self.unreadable.get(inode) != str(error):
                self._say(PRIORITY_WARNING, f"network namespace {inode}: {error}")
            self.unreadable[inode] = str(error)
            merged += self._last.get(inode, [])
        return merged

    def _sync(self) -> None:
        result = self.others.sync(self._discover(self._known_pids))
        self._gone = {inode: left - 1 for inode, left in self._gone.items() if left > 1}
        self._gone_names = {k: v for k, v in self._gone_names.items() if k in self._gone}
        for inode in result.closed:
            self._gone[inode] = _GONE_FOR_SCANS
            self._gone_names[inode] = self._names.get(inode)
            self._last.pop(inode, None)
            self.unreadable.pop(inode, None)
        self._names = {
            inode: source.namespace.name for inode, source in self.others.sources.items()
        }
        for inode in result.opened:
            source = self.others.sources[inode]
            name = f" ({source.namespace.name})" if source.namespace.name else ""
            how = (
                ""
                if source.fallback_reason is None
                else f", through /proc: {source.fallback_reason}"
            )
            self._say(PRIORITY_INFO, f"watching network namespace {inode}{name}{how}")
        for inode, reason in result.unreadable.items():
            if self.unreadable.get(inode) != reason:
                self._say(PRIORITY_WARNING, f"cannot watch network namespace {inode}: {reason}")
            self.unreadable[inode] = reason

    def name_of(self, inode: int) -> str | None:
        """A namespace's `ip netns` name, also for one released lately."""
        source = self.others.sources.get(inode)
        if source is not None:
            return source.namespace.name
        return self._gone_names.get(inode)

    @property
    def gone_namespaces(self) -> frozenset[int]:
        """Namespaces released lately: their listeners closed because they are gone."""
        return frozenset(self._gone)

    @property
    def namespaces(self) -> int:
        """How many namespaces are watched, the host's included."""
        return 1 + len(self.others.sources)

    def fallbacks(self) -> dict[int, str]:
        """Namespaces read through /proc, and why."""
        return {
            inode: source.fallback_reason
            for inode, source in self.others.sources.items()
            if source.fallback_reason is not None
        }

    def close(self) -> None:
        self.others.close()
        self.host.close()
