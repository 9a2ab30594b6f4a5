"""Metrics: the exposition text read back by real parsers, and the textfile's atomic replace.

The parsers: the official Python client's (`prometheus_client.parser`), and
`promtool check metrics` from Debian's prometheus package when it is on
PATH (CI does not install it: the package brings 300 MB of JavaScript
libraries along; those tests skip with a reason).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portwatchd.model import Endpoint, Owner
from portwatchd.outputs.metrics import render_metrics
from portwatchd.sources.netlink import NetlinkScanner
from portwatchd.sources.owners import OwnerResolver
from portwatchd.text import printable_name
from tests.named_listener import listener_named

# The Debian package build runs these tests with Debian's python3, which has
# the parser only with python3-prometheus-client installed.
parser = pytest.importorskip(
    "prometheus_client.parser", reason="prometheus_client not installed (requirements-dev.txt)"
)
if TYPE_CHECKING:
    from prometheus_client.samples import Sample

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian package prometheus)"
)

# Service.status() of 0.1, as the daemon answers today.
STATUS_01: dict[str, Any] = {
    "version": "0.1.0",
    "pid": 4321,
    "uptime_s": 12.5,
    "interval_s": 1.0,
    "backend": "netlink",
    "owners": True,
    "ports_watched": 2,
    "events_total": 7,
    "events_last_hour": 3,
    "last_seq": 41,
    "ring_size": 7,
    "ring_capacity": 1000,
    "last_scan_time": "2026-11-25T14:20:31.500000Z",
    "last_scan_duration_ms": 1.25,
    "scan_error": None,
    "journal_error": "journald has not taken an event for 5 s",
    "config_path": "/etc/portwatchd/portwatchd.toml",
    "state_dir": "/var/lib/portwatchd",
    "last_reload": None,
}

# The keys 0.2 adds to the status answer.
STATUS_02 = {
    **STATUS_01,
    "events_by_type": {"opened": 5, "closed": 2},
    "scans_total": 1200,
    "detections": {"scan": 6, "startup": 1},
    "store_error": None,
    "scan_errors_total": 3,
    "journal_errors_total": 1,
    "store_errors_total": 0,
}

HOSTILE_COMMS = [
    "evil\nportwatchd_ports_watched 999",
    'quo"te"',
    "back\\slash\\",
    "bad\udcffbytes\udc80",
    "cr\rtab\tnul\x00",
    'brace} x="1",',
    "ünïcødé ☃",
]


@dataclass(frozen=True, slots=True)
class EndpointWithPlace(Endpoint):
    """An Endpoint with the attributes 0.2's classify and netns sources add."""

    exposure: str | None = None
    netns: str | None = None


def _tcp(port: int, address: str = "0.0.0.0") -> Endpoint:
    return Endpoint("tcp", "ipv4", address, port, inode=port)


def _udp(port: int) -> Endpoint:
    return Endpoint("udp", "ipv6", "::", port, inode=port)


PORTS = [
    (_tcp(22), Owner(pid=1, comm="sshd", unit="ssh.service", user="root")),
    (_tcp(80), Owner(pid=2, comm="nginx", unit="nginx.service", user="www-data")),
    (_udp(53), Owner()),
]


def _families(text: str) -> dict[str, list[Sample]]:
    """Family name -> samples; each family must come once (parsed by the official client)."""
    families: dict[str, list[Sample]] = {}
    for family in parser.text_string_to_metric_families(text):
        assert family.name not in families, f"family {family.name} appears twice"
        families[family.name] = family.samples
    return families


def _values(samples: list[Sample]) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(sample.labels.items())): sample.value for sample in samples}


def test_every_family_has_help_and_type_and_the_text_ends_with_a_newline() -> None:
    text = render_metrics(STATUS_02, PORTS)
    assert text.endswith("\n") and not text.endswith("\n\n")
    lines = text.splitlines()
    names = {line.split()[2] for line in lines if line.startswith("# TYPE ")}
    helped = {line.split()[2] for line in lines if line.startswith("# HELP ")}
    assert names == helped
    assert all(name.startswith("portwatchd_") for name in names)
    samples = [line for line in lines if not line.startswith("#")]
    assert all(line.split("{")[0].split()[0] in names for line in samples)
    assert len(_families(text)) == len(names)


def test_ports_watched_by_proto_and_one_series_per_listener() -> None:
    families = _families(render_metrics(STATUS_02, PORTS))
    assert _values(families["portwatchd_ports_watched"]) == {
        (("proto", "tcp"),): 2,
        (("proto", "udp"),): 1,
    }
    listeners = {
        (s.labels["proto"], s.labels["port"]): s for s in families["portwatchd_listening_sockets"]
    }
    assert set(listeners) == {("tcp", "22"), ("tcp", "80"), ("udp", "53")}
    assert listeners[("tcp", "80")].labels["comm"] == "nginx"
    assert listeners[("tcp", "80")].labels["unit"] == "nginx.service"
    assert listeners[("tcp", "80")].labels["user"] == "www-data"
    assert listeners[("udp", "53")].labels["comm"] == ""  # owner unknown


def test_a_protocol_without_sockets_is_shown_as_zero() -> None:
    families = _families(render_metrics(STATUS_02, PORTS[:1]))
    assert _values(families["portwatchd_ports_watched"]) == {
        (("proto", "tcp"),): 1,
        (("proto", "udp"),): 0,
    }


def test_two_sockets_with_the_same_labels_are_counted_not_repeated() -> None:
    # SO_REUSEPORT: two sockets on one port held by the same program.
    owner = Owner(pid=3, comm="envoy")
    ports = [(_tcp(443), owner), (Endpoint("tcp", "ipv4", "0.0.0.0", 443, inode=99), owner)]
    families = _families(render_metrics(STATUS_02, ports))
    [sample] = families["portwatchd_listening_sockets"]
    assert sample.value == 2


def test_exposure_and_netns_become_labels_when_endpoints_have_them() -> None:
    ports = [
        (EndpointWithPlace("tcp", "ipv4", "0.0.0.0", 22, exposure="public", netns="host"), Owner()),
        (EndpointWithPlace("tcp", "ipv4", "127.0.0.1", 631, exposure="local"), Owner()),
        (EndpointWithPlace("udp", "ipv4", "0.0.0.0", 68, exposure="public"), Owner()),
    ]
    families = _families(render_metrics(STATUS_02, ports))
    assert _values(families["portwatchd_ports_watched"]) == {
        (("exposure", "local"), ("netns", ""), ("proto", "tcp")): 1,
        (("exposure", "public"), ("netns", "host"), ("proto", "tcp")): 1,
        (("exposure", "public"), ("netns", ""), ("proto", "udp")): 1,
    }
    ssh = next(s for s in families["portwatchd_listening_sockets"] if s.labels["port"] == "22")
    assert ssh.labels["exposure"] == "public" and ssh.labels["netns"] == "host"


def test_events_by_type_with_every_type_present() -> None:
    status = {**STATUS_02, "events_by_type": {"opened": 5}}
    families = _families(render_metrics(status, PORTS))
    # The official parser names a counter family without its _total suffix.
    assert _values(families["portwatchd_events"]) == {
        (("type", "closed"),): 0,
        (("type", "opened"),): 5,
        (("type", "owner_changed"),): 0,
        (("type", "restarted"),): 0,
        (("type", "transient"),): 0,
    }


def test_events_fall_back_to_the_total_without_events_by_type() -> None:
    families = _families(render_metrics(STATUS_01, PORTS))
    assert _values(families["portwatchd_events"]) == {(): 7}


def test_scans_detections_errors_and_seq_from_a_02_status() -> None:
    families = _families(render_metrics(STATUS_02, PORTS))
    assert _values(families["portwatchd_scans"]) == {(): 1200}
    assert _values(families["portwatchd_last_scan_duration_seconds"]) == {(): 0.00125}
    assert _values(families["portwatchd_last_scan_timestamp_seconds"]) == {(): 1795616431.5}
    assert _values(families["portwatchd_detections"]) == {
        (("source", "scan"),): 6,
        (("source", "startup"),): 1,
    }
    assert _values(families["portwatchd_failing"]) == {
        (("subsystem", "journal"),): 1,
        (("subsystem", "scan"),): 0,
        (("subsystem", "store"),): 0,
    }
    assert _values(families["portwatchd_errors"]) == {
        (("subsystem", "journal"),): 1,
        (("subsystem", "scan"),): 3,
        (("subsystem", "store"),): 0,
    }
    assert _values(families["portwatchd_last_event_seq"]) == {(): 41}
    assert _values(families["portwatchd_build_info"]) == {(("version", "0.1.0"),): 1}


def test_keys_a_01_status_lacks_give_no_family_rather_than_a_made_up_zero() -> None:
    families = _families(render_metrics(STATUS_01, PORTS))
    assert "portwatchd_scans" not in families
    assert "portwatchd_detections" not in families
    assert "portwatchd_errors" not in families
    assert _values(families["portwatchd_failing"]) == {
        (("subsystem", "journal"),): 1,
        (("subsystem", "scan"),): 0,
    }


def test_a_daemon_that_has_not_scanned_yet() -> None:
    status = {"version": "0.2.0", "last_scan_time": None, "last_scan_duration_ms": None}
    families = _families(render_metrics(status, []))
    assert "portwatchd_last_scan_duration_seconds" not in families
    assert "portwatchd_last_scan_timestamp_seconds" not in families
    assert _values(families["portwatchd_events"]) == {(): 0}
    assert families["portwatchd_listening_sockets"] == []


@pytest.mark.parametrize("comm", HOSTILE_COMMS)
def test_hostile_label_values_parse_back_to_the_name(comm: str) -> None:
    text = render_metrics(STATUS_02, [(_tcp(22), Owner(pid=9, comm=comm))])
    text.encode("utf-8")  # valid UTF-8, whatever the name held
    families = _families(text)
    [sample] = families["portwatchd_listening_sockets"]
    assert sample.labels["comm"] == printable_name(comm)
    # The newline in a name does not start a sample of its own.
    assert _values(families["portwatchd_ports_watched"])[(("proto", "tcp"),)] == 1


@given(st.text(), st.text(min_size=1))
def test_any_text_in_labels_and_version_gives_parseable_output(comm: str, version: str) -> None:
    text = render_metrics({"version": version}, [(_tcp(1), Owner(pid=1, comm=comm, unit=comm))])
    families = _families(text)
    [sample] = families["portwatchd_listening_sockets"]
    assert sample.labels["comm"] == sample.labels["unit"] == printable_name(comm)
    assert families["portwatchd_build_info"][0].labels["version"] == printable_name(version)


def _promtool_check(text: str) -> None:
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=text.encode(), capture_output=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_accepts_the_output() -> None:
    ports = [*PORTS, *((_tcp(1000 + i), Owner(comm=c)) for i, c in enumerate(HOSTILE_COMMS))]
    _promtool_check(render_metrics(STATUS_02, ports))
    _promtool_check(render_metrics(STATUS_01, ports))


@needs_promtool
def test_promtool_rejects_what_the_renderer_must_avoid() -> None:
    # The checker can fail: an unescaped newline in a label value.
    result = subprocess.run(
        [PROMTOOL, "check", "metrics"],
        input=b'# TYPE a gauge\na{x="b\nc"} 1\n',
        capture_output=True,
        check=False,
    )
    assert result.returncode != 0


@pytest.fixture
def hostile_server(netns: None) -> Iterator[int]:
    """A real process named with a quote, a newline, a backslash and bytes not UTF-8."""
    with listener_named(b'ev"il\n\\\xff\xfeport') as port:
        yield port


def test_a_real_scan_of_a_process_with_a_hostile_name(hostile_server: int) -> None:
    with NetlinkScanner() as scanner:
        endpoints = scanner.scan()
    owners = OwnerResolver().resolve_walk({endpoint.inode for endpoint in endpoints})
    ports = [(endpoint, owners.get(endpoint.inode, Owner())) for endpoint in endpoints]
    text = render_metrics(STATUS_02, ports)
    families = _families(text)
    [sample] = [
        s
        for s in families["portwatchd_listening_sockets"]
        if s.labels["port"] == str(hostile_server)
    ]
    assert sample.labels["comm"] == 'ev"il\n\\\\xff\\xfeport'
    assert _values(families["portwatchd_ports_watched"])[(("proto", "tcp"),)] == 1
    if PROMTOOL is not None:
        _promtool_check(text)
