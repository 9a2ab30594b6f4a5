from __future__ import annotations

import doctest

import portwatchd.place as place_module
from portwatchd.containers import Container
from portwatchd.model import Endpoint
from portwatchd.place import place_of

HOST = 4026531840
WEB = Container("4f0c" * 16, "docker")
PUBLIC_HOST = [("lo", "127.0.0.1"), ("eth0", "8.8.8.8")]


def test_a_host_listener_keeps_the_host_s_inode_and_scope() -> None:
    place = place_of(
        Endpoint("tcp", "ipv4", "0.0.0.0", 22),
        host_netns=HOST,
        netns_name=None,
        container=None,
        addresses=PUBLIC_HOST,
    )
    assert (place.netns_inode, place.scope, place.exposure, place.container) == (
        HOST,
        "host",
        "public",
        None,
    )


def test_a_container_listener_on_0_0_0_0_is_as_wide_as_its_own_namespace() -> None:
    place = place_of(
        Endpoint("tcp", "ipv4", "0.0.0.0", 80, netns=4026532281),
        host_netns=HOST,
        netns_name="ns-web",
        container=WEB,
        addresses=[("lo", "127.0.0.1"), ("eth0", "172.17.0.2")],
    )
    assert (place.netns_inode, place.netns_name, place.scope) == (4026532281, "ns-web", "container")
    assert (place.container, place.container_runtime, place.exposure) == (
        WEB.id,
        "docker",
        "private",
    )


def test_host_networking_is_host_scope_with_the_container_named() -> None:
    place = place_of(
        Endpoint("tcp", "ipv6", "::1", 9000),
        host_netns=HOST,
        netns_name=None,
        container=Container("web-1", "nspawn", "web-1"),
        addresses=None,
    )
    assert (place.scope, place.netns_name, place.container, place.exposure) == (
        "host",
        "web-1",
        "web-1",
        "loopback",
    )


def test_a_wildcard_without_known_addresses_has_no_exposure() -> None:
    endpoint = Endpoint("udp", "ipv6", "::", 53, netns=7)
    place = place_of(endpoint, host_netns=HOST, netns_name=None, container=None, addresses=None)
    assert place.exposure is None


def test_doctests() -> None:
    failures, tried = doctest.testmod(place_module)
    assert (failures, tried > 0) == (0, True)
