"""portwatchctl against a real daemon watching every network namespace.

The daemon runs in the test's private network namespace, its "host"; the
same address and port listen there, in an `ip netns add` namespace and in
an `unshare --net` process. With `namespaces = "all"` the daemon also sees
the machine's own listeners and other tests': every assertion looks at
this test's port only.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from portwatchd import ctl, protocol
from portwatchd.config import load_config
from portwatchd.ctl_client import call
from portwatchd.model import Endpoint, Owner, Place
from tests.daemon_harness import Daemon
from tests.namespaces import UNSHARE_NET, Holder, holding, in_ip_netns, ip_netns

ALL = 'namespaces = "all"\n'
WAIT_S = 20.0


def run_ctl(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = ctl.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


class Scene:
    """One port listening in three namespaces, and the daemon that sees them."""

    def __init__(
        self, daemon: Daemon, host: socket.socket, name: str, named: Holder, unnamed: Holder
    ) -> None:
        self.daemon = daemon
        self.host = host  # the listener in the daemon's own namespace
        self.port: int = host.getsockname()[1]
        self.name = name  # the `ip netns` namespace's name
        self.named = named
        self.unnamed = unnamed

    def ctl(self, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
        return run_ctl(capsys, "--socket", self.daemon.socket_path, *args)

    def mine(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """This test's rows: the machine's other namespaces may use the same port."""
        netns = {0, self.named.netns, self.unnamed.netns}
        return sorted(
            (r for r in rows if r["port"] == self.port and r["netns"] in netns),
            key=lambda r: r["netns"],
        )

    def ports(self, capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, Any]]:
        code, out, err = self.ctl(capsys, "ports", "--json", *args)
        assert code == 0, err
        return self.mine(json.loads(out))

    def wait_ports(self, capsys: pytest.CaptureFixture[str], count: int) -> list[dict[str, Any]]:
        deadline = time.monotonic() + WAIT_S
        while True:
            rows = self.ports(capsys)
            if len(rows) >= count or time.monotonic() > deadline:
                return rows
            time.sleep(0.1)


def scene_daemon(config: str) -> Iterator[Scene]:
    """The daemon first, then the listeners: their openings are events."""
    daemon = Daemon(config=config).start()
    try:
        daemon.wait_ready()
        with socket.socket() as host:
            host.bind(("127.0.0.1", 0))
            host.listen()
            port = host.getsockname()[1]
            listen = [("tcp", "127.0.0.1", port, "")]
            with (
                ip_netns() as name,
                holding(listen, in_ip_netns(name)) as named,
                holding(listen, UNSHARE_NET) as unnamed,
            ):
                yield Scene(daemon, host, name, named, unnamed)
    finally:
        daemon.stop()


@pytest.fixture
def scene(netns: None) -> Iterator[Scene]:
    yield from scene_daemon(ALL)


def test_ports_shows_the_same_port_in_each_namespace(scene: Scene, capsys: Any) -> None:
    rows = scene.wait_ports(capsys, 3)
    assert len(rows) == 3, rows
    host, first, second = rows
    named, unnamed = sorted((scene.named, scene.unnamed), key=lambda h: h.netns)
    assert host["key"] == f"tcp:127.0.0.1:{scene.port}" and host["netns"] == 0
    assert host["scope"] == "host" and host["pid"] == os.getpid()
    assert first["netns"] == named.netns and second["netns"] == unnamed.netns
    assert first["key"] == f"net:{named.netns}/tcp:127.0.0.1:{scene.port}"
    assert len({r["key"] for r in rows}) == 3
    assert {r["pid"] for r in rows[1:]} == {scene.named.pid, scene.unnamed.pid}
    assert all(r["exposure"] == "loopback" for r in rows)
    by_netns = {r["netns"]: r for r in rows}
    assert by_netns[scene.named.netns]["netns_name"] == scene.name
    assert by_netns[scene.unnamed.netns]["netns_name"] is None
    assert all(r["scope"] == "container" for r in rows[1:])
    assert all(r["expected"] is None for r in rows)  # no [[expect]] rule

    code, out, _ = scene.ctl(capsys, "ports")
    assert code == 0
    header, *lines = out.splitlines()
    assert header.split()[:5] == ["PROTO", "ADDRESS", "PORT", "EXPOSURE", "WHERE"]
    assert "EXPECTED" not in header
    # Cells are apart by two spaces at least; "netns NAME" holds one.
    mine = [re.split(r"\s{2,}", line) for line in lines]
    mine = [cells for cells in mine if cells[2] == str(scene.port)]
    assert sorted((cells[3], cells[4], cells[5]) for cells in mine) == sorted(
        [
            ("loopback", "host", str(os.getpid())),
            ("loopback", f"netns {scene.name}", str(scene.named.pid)),
            ("loopback", f"netns {scene.unnamed.netns}", str(scene.unnamed.pid)),
        ]
    )


def test_ports_filters_by_namespace(scene: Scene, capsys: Any) -> None:
    assert len(scene.wait_ports(capsys, 3)) == 3
    named = scene.ports(capsys, "--netns", scene.name)
    assert [r["pid"] for r in named] == [scene.named.pid]
    by_inode = scene.ports(capsys, "--netns", str(scene.unnamed.netns))
    assert [r["pid"] for r in by_inode] == [scene.unnamed.pid]
    host = scene.ports(capsys, "--host-only")
    assert [r["netns"] for r in host] == [0]
    assert scene.ports(capsys, "--container", "web") == []
    with pytest.raises(SystemExit) as usage:
        scene.ctl(capsys, "ports", "--host-only", "--netns", scene.name)
    assert usage.value.code == ctl.EXIT_USAGE
    assert "--host-only cannot be used with --netns" in capsys.readouterr().err


def _events(scene: Scene, capsys: Any, *args: str) -> list[dict[str, Any]]:
    code, out, err = scene.ctl(capsys, "events", "--json", "--port", str(scene.port), *args)
    assert code == 0, err
    return [json.loads(line) for line in out.splitlines()]


def test_events_filter_by_namespace_in_the_daemon(scene: Scene, capsys: Any) -> None:
    assert len(scene.wait_ports(capsys, 3)) == 3
    opened = [e for e in _events(scene, capsys) if e["type"] == "opened"]
    assert len(opened) == 3, opened
    named = _events(scene, capsys, "--netns", scene.name)
    assert [(e["netns_name"], e["owner"]["pid"]) for e in named] == [(scene.name, scene.named.pid)]
    assert [e["netns"] for e in _events(scene, capsys, "--host-only")] == [0]
    by_inode = _events(scene, capsys, "--netns", str(scene.unnamed.netns))
    assert [e["netns"] for e in by_inode] == [scene.unnamed.netns]
    # The daemon itself filters: a raw request gets only the matches.
    reply = call(
        scene.daemon.socket_path,
        protocol.request("events", netns=scene.name, port=scene.port),
    )
    assert [e["netns_name"] for e in reply["events"]] == [scene.name]
    for bad, message in (
        ({"netns": ""}, "'netns' must be"),
        ({"container": 7}, "'container' must be"),
        ({"host_only": "yes"}, "'host_only' must be true or false"),
        ({"host_only": True, "netns": "x"}, "cannot be combined"),
    ):
        line = protocol.encode(protocol.request("events", **bad))
        with socket.socket(socket.AF_UNIX) as conn:
            conn.connect(scene.daemon.socket_path)
            conn.sendall(line)
            answer = protocol.decode(conn.makefile("rb").readline())
        assert answer["error"]["code"] == protocol.BAD_REQUEST, bad
        assert message in answer["error"]["message"], answer


def test_follow_honours_the_namespace_filter(netns: None, capsys: Any) -> None:
    for scene in scene_daemon(ALL):
        assert len(scene.wait_ports(capsys, 3)) == 3
        out = Path(scene.daemon.dir) / "follow.out"
        with out.open("w") as sink:
            follower = subprocess.Popen(
                [sys.executable, "-m", "portwatchd.ctl", "--socket", scene.daemon.socket_path,
                 "events", "-f", "--json", "--netns", scene.name, "--after-seq",
                 str(_last_seq(scene))],
                stdout=sink, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            try:
                time.sleep(1.0)  # connected and streaming
                scene.named.process.kill()
                scene.unnamed.process.kill()
                scene.host.close()
                deadline = time.monotonic() + WAIT_S
                while time.monotonic() < deadline and "closed" not in out.read_text():
                    time.sleep(0.1)
                time.sleep(1.0)  # the other two closes, had the filter let them through
            finally:
                follower.terminate()
                follower.wait()
        events = [json.loads(line) for line in out.read_text().splitlines()]
        mine = [e for e in events if e["port"] == scene.port]
        assert [(e["type"], e["netns_name"]) for e in mine] == [("closed", scene.name)]
        assert all(e.get("netns_name") == scene.name for e in events)


def _last_seq(scene: Scene) -> int:
    status = call(scene.daemon.socket_path, protocol.request("status"))["status"]
    return int(status["last_seq"])


def test_unexpected_and_a_suggested_baseline(netns: None, capsys: Any) -> None:
    # Every listener in the daemon's own namespace is expected; no other.
    rule = '[[expect]]\nnetns = "host"\n'
    for scene in scene_daemon(ALL + rule):
        rows = scene.wait_ports(capsys, 3)
        assert [r["expected"] for r in rows] == [True, False, False]
        unexpected = scene.ports(capsys, "--unexpected")
        assert {r["pid"] for r in unexpected} == {scene.named.pid, scene.unnamed.pid}
        code, out, _ = scene.ctl(capsys, "ports")
        header = out.splitlines()[0].split()
        assert header[-2:] == ["EXPECTED", "UNIT"]

        code, suggestion, err = scene.ctl(capsys, "expect", "--suggest")
        assert code == 0, err
        assert suggestion.startswith("# A baseline")
        assert f"port = {scene.port}" in suggestion and f'netns = "{scene.name}"' in suggestion
        # It loads back as a configuration, and accepts every listener seen.
        path = Path(scene.daemon.dir) / "suggested.toml"
        path.write_text(ALL + suggestion)
        config = load_config(str(path))
        for row in rows:
            endpoint, owner = Endpoint.from_dict(row), Owner.from_dict(row)
            assert config.is_expected(endpoint, owner, Place.from_dict(row)), row
        # In force, nothing of ours is unexpected any more.
        scene.daemon.write_config(ALL + suggestion)
        code, _, err = scene.ctl(capsys, "reload")
        assert code == 0, err
        assert scene.ports(capsys, "--unexpected") == []
        assert [r["expected"] for r in scene.ports(capsys)] == [True, True, True]


def test_expect_without_suggest_is_a_usage_error(scene: Scene, capsys: Any) -> None:
    code, out, err = scene.ctl(capsys, "expect")
    assert (code, out) == (ctl.EXIT_USAGE, "") and "--suggest" in err
