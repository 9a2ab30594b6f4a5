"""Where a listener lives: its Place, from what the sources found. Pure: no I/O.

The engine knows an endpoint (its `netns`, 0 for the host's), the
namespace's name from discovery, the holder's container from its cgroup
(containers.container_of) and the addresses the namespace holds (nsaddr);
`place_of` puts them together.

>>> from portwatchd.model import Endpoint
>>> place_of(Endpoint("tcp", "ipv4", "0.0.0.0", 80, netns=4026532281), host_netns=4026531840,
...          netns_name=None, container=Container("4f0c" * 16, "docker", "web"),
...          addresses=[("lo", "127.0.0.1"), ("eth0", "172.17.0.2")])
... # doctest: +NORMALIZE_WHITESPACE
Place(netns_inode=4026532281, netns_name='web', scope='container',
      container='4f0c4f0c4f0c4f0c4f0c4f0c4f0c4f0c4f0c4f0c4f0c4f0c4f0c4f0c4f0c4f0c',
      container_runtime='docker', exposure='private')
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from portwatchd.containers import Container
from portwatchd.exposure import address_class, exposure_of
from portwatchd.model import Endpoint, Exposure, Place

WILDCARDS = frozenset({"0.0.0.0", "::", "::ffff:0.0.0.0"})


def place_of(
    endpoint: Endpoint,
    *,
    host_netns: int,
    netns_name: str | None,
    container: Container | None,
    addresses: Iterable[Sequence[str]] | None,
) -> Place:
    """The Place of `endpoint`.

    `netns_name` is the `ip netns` name from discovery; the container's
    name stands in when there is none. `addresses` None (they could not be
    read) leaves a wildcard's exposure unknown (None); a specific address
    is its own class whatever the namespace holds. A listener in the host's
    namespace is scope "host" even when its process is in a container
    (`docker run --network host`).
    """
    exposure: Exposure | None
    if addresses is not None:
        exposure = exposure_of(
            endpoint.address, endpoint.interface, addresses, v6only=endpoint.v6only
        )
    elif endpoint.address not in WILDCARDS:
        exposure = address_class(endpoint.address)
    else:
        exposure = None
    return Place(
        netns_inode=endpoint.netns or host_netns,
        netns_name=netns_name or (container.name if container is not None else None),
        scope="host" if endpoint.netns == 0 else "container",
        container=container.id if container is not None else None,
        container_runtime=container.runtime if container is not None else None,
        exposure=exposure,
    )
