"""Who can reach a listener: its exposure, from its address and, for a wildcard,
the addresses its namespace holds. Pure: no I/O.

The classes, narrowest first (EXPOSURES in model.py):
- loopback: 127.0.0.0/8, ::1: only the same network namespace;
- link-local: 169.254.0.0/16, fe80::/10: only the same link;
- private: RFC 1918 (10/8, 172.16/12, 192.168/16), CGNAT (100.64.0.0/10,
  RFC 6598), ULA (fc00::/7): a private network;
- public: anything else.

A wildcard address (0.0.0.0, ::) answers on every address its namespace
holds, so its exposure is the widest class among those, restricted to
the interface the socket is bound to (SO_BINDTODEVICE) when it is. An
IPv6 wildcard that is not IPV6_V6ONLY answers on the IPv4 addresses too
(v6only None, where the source cannot tell: assume it does, the wider
answer). A namespace that holds no address that counts is exposed on
loopback only: nothing outside it can reach the listener now.

>>> exposure_of("127.0.0.1", "", [])
'loopback'
>>> exposure_of("::ffff:192.168.1.5", "", [])
'private'
>>> holds = [("lo", "127.0.0.1"), ("eth0", "10.0.0.2"), ("eth1", "203.0.113.7")]
>>> exposure_of("0.0.0.0", "", holds)
'public'
>>> exposure_of("0.0.0.0", "eth0", holds)
'private'
>>> exposure_of("::", "", holds, v6only=True)
'loopback'
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Final

from portwatchd.model import EXPOSURES, Exposure

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_PRIVATE: Final = tuple(
    ipaddress.ip_network(network)
    for network in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)
_RANK: Final[dict[Exposure, int]] = {exposure: rank for rank, exposure in enumerate(EXPOSURES)}


def _parsed(address: str) -> IPAddress | None:
    try:
        parsed = ipaddress.ip_address(address.partition("%")[0])
    except ValueError:
        return None
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return parsed.ipv4_mapped  # a dual-stack socket's IPv4 address
    return parsed


def address_class(address: str) -> Exposure:
    """The class of one specific address; "public" for anything not recognised.

    >>> [address_class(a) for a in ("127.0.0.53", "fe80::1", "100.64.1.1", "fd00::1")]
    ['loopback', 'link-local', 'private', 'private']
    >>> [address_class(a) for a in ("8.8.8.8", "2001:db8::1", "::1")]
    ['public', 'public', 'loopback']
    """
    parsed = _parsed(address)
    if parsed is None:
        return "public"
    if parsed.is_loopback:
        return "loopback"
    if parsed.is_link_local:
        return "link-local"
    if any(parsed.version == network.version and parsed in network for network in _PRIVATE):
        return "private"
    return "public"


def widest(exposures: Iterable[Exposure]) -> Exposure:
    """The widest of the classes; "loopback" for none.

    >>> widest(["private", "loopback", "link-local"])
    'private'
    """
    return max(exposures, key=_RANK.__getitem__, default="loopback")


def exposure_of(
    address: str,
    interface: str,
    namespace_addresses: Iterable[Sequence[str]],
    *,
    v6only: bool | None = None,
) -> Exposure:
    """The exposure of a listener on `address`, bound to `interface` ("" when
    not), in a namespace holding `namespace_addresses`, (interface, address)
    pairs as nsaddr gives them (`NamespaceAddress` is such a pair first)."""
    parsed = _parsed(address)
    if parsed is None or not parsed.is_unspecified:
        return address_class(address)
    covers_v4 = parsed.version == 4 or v6only is not True
    covers_v6 = parsed.version == 6
    reached: list[Exposure] = []
    for held_interface, held_address, *_rest in namespace_addresses:
        if interface and held_interface != interface:
            continue
        held = _parsed(held_address)
        if held is None or held.is_unspecified:
            continue
        if (held.version == 4 and covers_v4) or (held.version == 6 and covers_v6):
            reached.append(address_class(held_address))
    return widest(reached)
