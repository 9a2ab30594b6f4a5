from __future__ import annotations

import doctest

import pytest

import portwatchd.exposure as exposure_module
from portwatchd.exposure import address_class, exposure_of

HOST = [
    ("lo", "127.0.0.1"),
    ("lo", "::1"),
    ("eth0", "192.168.1.10"),
    ("eth0", "fe80::1"),
    ("wan0", "8.8.8.8"),
    ("wan0", "2001:4860::8"),
]


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1", "loopback"),
        ("127.1.2.3", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("169.254.10.1", "link-local"),
        ("fe80::abcd", "link-local"),
        ("10.0.0.1", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.255", "private"),
        ("172.32.0.1", "public"),
        ("192.168.0.1", "private"),
        ("100.64.0.1", "private"),
        ("100.127.255.255", "private"),
        ("100.128.0.1", "public"),
        ("fd12:3456::1", "private"),
        ("fc00::1", "private"),
        ("::ffff:10.1.2.3", "private"),
        ("8.8.8.8", "public"),
        ("2001:4860::8", "public"),
    ],
)
def test_address_classes(address: str, expected: str) -> None:
    assert address_class(address) == expected
    # A specific address is its own class whatever the namespace holds.
    assert exposure_of(address, "", HOST) == expected


def test_a_wildcard_takes_the_widest_address_of_its_namespace() -> None:
    assert exposure_of("0.0.0.0", "", HOST) == "public"
    assert exposure_of("0.0.0.0", "", HOST[:4]) == "private"
    assert exposure_of("0.0.0.0", "", HOST[:2]) == "loopback"
    # A container's namespace: lo and a private veth only, however public the host.
    container = [("lo", "127.0.0.1"), ("eth0", "172.17.0.2")]
    assert exposure_of("0.0.0.0", "", container) == "private"


def test_a_wildcard_bound_to_a_device_takes_that_device_s_addresses_only() -> None:
    assert exposure_of("0.0.0.0", "lo", HOST) == "loopback"
    assert exposure_of("0.0.0.0", "eth0", HOST) == "private"
    assert exposure_of("::", "eth0", HOST, v6only=True) == "link-local"
    assert exposure_of("0.0.0.0", "absent0", HOST) == "loopback"


def test_an_ipv6_wildcard_covers_ipv4_unless_v6only() -> None:
    v4_public = [("lo", "::1"), ("eth0", "fd00::2"), ("wan0", "8.8.8.8")]
    assert exposure_of("::", "", v4_public, v6only=True) == "private"
    assert exposure_of("::", "", v4_public, v6only=False) == "public"
    assert exposure_of("::", "", v4_public, v6only=None) == "public"  # cannot tell: the wider
    assert exposure_of("0.0.0.0", "", [("eth0", "fd00::2"), ("lo", "127.0.0.1")]) == "loopback"


def test_a_v4_mapped_wildcard_is_the_ipv4_wildcard() -> None:
    assert exposure_of("::ffff:0.0.0.0", "", [("eth0", "10.0.0.1"), ("x", "2001:4860::8")]) == (
        "private"
    )


def test_doctests() -> None:
    failures, tried = doctest.testmod(exposure_module)
    assert (failures, tried > 0) == (0, True)
