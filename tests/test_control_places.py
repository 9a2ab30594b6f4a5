"""Where listeners live, on the wire: the `ports` rows' place and judgement,
the place filters of `events`/`follow` and their errors, and the status keys
of the namespace work as portwatchctl shows them."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from portwatchd import protocol_requests
from portwatchd.control.handlers import PORTS_PER_SLICE, RequestHandlers
from portwatchd.control.transport import Caller
from portwatchd.ctl_format import port_record, print_ports
from portwatchd.ctl_status import status_lines
from portwatchd.model import Endpoint, Owner, Place
from portwatchd.protocol import BAD_REQUEST, EventQuery, ProtocolError
from tests.history_double import HistoryDouble

WEB = Place(
    netns_inode=4026532281,
    netns_name="web",
    scope="container",
    container="3f2a9c1b0d4e" + "0" * 52,
    container_runtime="docker",
    exposure="private",
)


def handlers_for(ports: list[tuple[Endpoint, Owner]], describe: Any = None) -> RequestHandlers:
    options = {"describe": describe} if describe is not None else {}
    return RequestHandlers(
        HistoryDouble(), status=dict, ports=lambda: ports, request_rescan=lambda: None,
        reload=lambda done: None, metrics=str, **options,
    )  # fmt: skip


def ports_of(handlers: RequestHandlers) -> tuple[list[bytes], list[dict[str, Any]]]:
    reply = handlers.answer(b'{"v":1,"req":"ports"}\n', Caller(uid=0, connections=1))
    assert not isinstance(reply, bytes)
    chunks = list(reply)
    return chunks, json.loads(b"".join(chunks))["ports"]


def test_ports_rows_carry_place_and_expected_worked_out_slice_by_slice() -> None:
    ports = [
        (Endpoint("tcp", "ipv4", "0.0.0.0", port, netns=4026532281), Owner(pid=port))
        for port in range(1, 3 * PORTS_PER_SLICE + 1)
    ]
    described: list[int] = []

    def describe(endpoint: Endpoint, owner: Owner) -> tuple[Place, bool | None]:
        described.append(endpoint.port)
        return WEB, endpoint.port % 2 == 0

    reply = handlers_for(ports, describe).answer(
        b'{"v":1,"req":"ports"}\n', Caller(uid=0, connections=1)
    )
    assert not isinstance(reply, bytes)
    slices = iter(reply)
    next(slices)  # the head
    assert described == []
    next(slices)
    assert len(described) == PORTS_PER_SLICE  # lazily: one slice at a time
    rest = b"".join(slices)
    assert len(described) == len(ports) and rest.endswith(b"]}\n")
    _, rows = ports_of(handlers_for(ports[:2], describe))
    assert rows[0]["container"] == WEB.container and rows[0]["exposure"] == "private"
    assert rows[0]["netns_name"] == "web" and rows[0]["scope"] == "container"
    assert [row["expected"] for row in rows] == [False, True]
    assert rows[0]["key"] == "net:4026532281/tcp:0.0.0.0:1" and rows[0]["owner"]["pid"] == 1


def test_without_describe_every_row_is_the_host_s_and_unjudged() -> None:
    _, rows = ports_of(handlers_for([(Endpoint("udp", "ipv4", "0.0.0.0", 53), Owner())]))
    assert rows[0]["scope"] == "host" and rows[0]["expected"] is None
    assert rows[0]["netns_inode"] == 0 and rows[0]["container"] is None


@pytest.mark.parametrize(
    ("args", "query"),
    [
        ({"netns": "web"}, EventQuery(netns="web")),
        ({"netns": 4026532281}, EventQuery(netns="4026532281")),
        ({"container": "3f2a"}, EventQuery(container="3f2a")),
        ({"host_only": True}, EventQuery(host_only=True)),
        ({"host_only": False}, EventQuery()),  # no filter, and none on the wire
    ],
)
def test_place_filters_are_read(args: dict[str, Any], query: EventQuery) -> None:
    for request in ("events", "follow"):
        name, parsed = protocol_requests.parse_request({"v": 1, "req": request, **args})
        assert (name, parsed) == (request, query)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"netns": ""}, "'netns' must be a network namespace's name or inode"),
        ({"netns": -1}, "'netns' must be"),
        ({"netns": "x" * 256}, "1 to 255 characters"),
        ({"container": ["a"]}, "'container' must be a container's name, id or id prefix"),
        ({"host_only": 1}, "'host_only' must be true or false, got 1"),
        ({"host_only": True, "container": "web"}, "cannot be combined"),
    ],
)
def test_bad_place_filters_are_named(args: dict[str, Any], message: str) -> None:
    with pytest.raises(ProtocolError) as error:
        protocol_requests.parse_request({"v": 1, "req": "events", **args})
    assert error.value.code == BAD_REQUEST and message in error.value.message


def test_ports_is_still_refused_arguments() -> None:
    with pytest.raises(ProtocolError, match="unknown argument"):
        protocol_requests.parse_request({"v": 1, "req": "ports", "netns": "web"})


def test_the_where_column_names_host_container_or_namespace() -> None:
    rows = [
        (Endpoint("tcp", "ipv4", "0.0.0.0", 22), Place(exposure="public"), True),
        (Endpoint("tcp", "ipv4", "0.0.0.0", 80, netns=4026532281), WEB, False),
        (
            Endpoint("tcp", "ipv4", "0.0.0.0", 81, netns=4026532282),
            Place(4026532282, None, "container", "ab" * 32, "podman", "loopback"),
            False,
        ),
        (
            Endpoint("tcp", "ipv4", "0.0.0.0", 82, netns=4026532283),
            Place(4026532283, "blue\nx", "container", exposure="private"),
            None,
        ),
        (Endpoint("tcp", "ipv4", "0.0.0.0", 83, netns=4026532284), Place(4026532284), None),
    ]
    records = []
    for endpoint, place, expected in rows:
        wire = {**endpoint.to_dict(), **place.to_dict(), "expected": expected}
        records.append(port_record(wire, Owner(pid=1, comm="srv").to_dict()))
    out = io.StringIO()
    print_ports(records, as_json=False, out=out, legend=True, with_place=True)
    lines = out.getvalue().splitlines()
    assert lines[0].split() == [
        "PROTO", "ADDRESS", "PORT", "EXPOSURE", "WHERE", "PID", "PROCESS", "EXPECTED", "UNIT",
    ]  # fmt: skip
    assert len(lines) == 6  # the name's newline is escaped, not a row of its own
    assert "host" in lines[1] and "yes" in lines[1] and "public" in lines[1]
    assert "web (docker)" in lines[2] and "NO" in lines[2]
    assert "abababababab (podman)" in lines[3]
    assert "netns blue\\nx" in lines[4]
    assert "netns 4026532284" in lines[5]
    # A host's ports and a named container's fit in 80 columns, judged or not.
    typical = io.StringIO()
    print_ports(records[:2], as_json=False, out=typical, legend=True, with_place=True)
    assert max(len(line) for line in typical.getvalue().splitlines()) <= 80


def test_status_shows_namespaces_and_triggers_and_survives_unknown_keys() -> None:
    status = {
        "version": "0.3.0",
        "namespaces": 7,
        "namespace_fallbacks": ["4026532300: no CAP_SYS_ADMIN, read through /proc/812/net"],
        "triggers": {"exec": "active", "destroy": "sock_diag destroy needs CAP_NET_ADMIN"},
        "some_future_key": {"a": [1, 2]},
    }
    pairs = dict(status_lines(status))
    assert pairs["Namespaces"] == "7"
    assert pairs["Triggers"] == "destroy off (sock_diag destroy needs CAP_NET_ADMIN), exec active"
    assert pairs["Read via /proc"].startswith("4026532300: no CAP_SYS_ADMIN")
    assert pairs["some_future_key"] == '{"a": [1, 2]}'
    odd = dict(status_lines({"namespaces": [1, 2, 3], "triggers": {}}))
    assert odd["Namespaces"] == "3" and odd["Triggers"] == "none"
    assert dict(status_lines({"triggers": "weird"}))["triggers"] == "weird"
