"""The choice of source: netlink sock_diag, else the /proc/net tables.

Two sources exist: netlink sock_diag (`netlink.NetlinkScanner`, fast, knows
interfaces and IPV6_V6ONLY) and the /proc/net text tables
(`procnet.ProcScanner`, slower, readable everywhere). `open_scanner("auto")`
prefers netlink and falls back to /proc, saying so once, when the kernel or a
sandbox (seccomp, RestrictAddressFamilies=) refuses sock_diag. The daemon's
wiring and `portwatchctl scan` call it; nothing else chooses.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable

from portwatchd.model import PRIORITY_WARNING
from portwatchd.sources.base import BACKENDS, ScanError, Scanner, SourceUnavailable
from portwatchd.sources.netlink import NetlinkScanner
from portwatchd.sources.procnet import ProcScanner


def _log_to_stderr(message: str) -> None:
    print(f"portwatchd: {message}", file=sys.stderr, flush=True)


def open_scanner(
    backend: str = "auto",
    log: Callable[[str], None] = _log_to_stderr,
    proc_root: str = "/proc/self",
    netlink_socket_factory: Callable[[], socket.socket] | None = None,
) -> Scanner:
    """Open the named source: "netlink", "proc", or "auto" (netlink, else /proc).

    "auto" opens netlink and runs one scan to prove the kernel answers; if
    sock_diag is refused it logs once why and returns a /proc scanner. Any
    other failure (a bug, a malformed reply) is raised, not papered over.
    `netlink_socket_factory` replaces socket creation (tests inject refusal).
    """
    if backend not in BACKENDS:
        raise ValueError(
            f"unknown scanner backend {backend!r}: choose one of {', '.join(BACKENDS)}"
        )
    if backend == "proc":
        return ProcScanner(root=proc_root)
    if backend == "netlink":
        return NetlinkScanner(socket_factory=netlink_socket_factory)

    def fall_back(reason: SourceUnavailable) -> Scanner:
        log(
            f"netlink sock_diag is not available ({reason}); falling back to {proc_root}/net,"
            " which is slower and cannot see bound devices (SO_BINDTODEVICE) or IPV6_V6ONLY"
        )
        return ProcScanner(root=proc_root)

    try:
        scanner = NetlinkScanner(socket_factory=netlink_socket_factory)
    except SourceUnavailable as exc:
        return fall_back(exc)
    try:
        scanner.scan()
    except SourceUnavailable as exc:
        scanner.close()
        return fall_back(exc)
    except BaseException:
        scanner.close()
        raise
    return scanner


def open_sources(
    backend: str, namespaces: str, host_inode: int, say: Callable[[int, str], None]
) -> Scanner:
    """The scanner the configuration asks for: the host's namespace alone
    ("host"), or every namespace ("all": the host's scanner and one per
    other namespace)."""
    from portwatchd.sources.allns import AllNamespaces
    from portwatchd.sources.nsscan import NamespaceScanners

    host = open_scanner(backend, log=lambda message: say(PRIORITY_WARNING, message))
    if namespaces == "host":
        return host
    return AllNamespaces(host, NamespaceScanners(host_inode), say=say)


def ephemeral_ports(say: Callable[[int, str], None]) -> tuple[int, int]:
    """The kernel's ephemeral port range: a UDP socket closed unseen is a
    transient listener only outside it (a client's socket is inside)."""
    from portwatchd.sources.destroy import ephemeral_range
    from portwatchd.transient import DEFAULT_EPHEMERAL

    try:
        return ephemeral_range()
    except ScanError as err:
        say(PRIORITY_WARNING, f"{err}; taking the kernel's default {DEFAULT_EPHEMERAL}")
        return DEFAULT_EPHEMERAL
