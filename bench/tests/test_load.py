"""The load generator opens exactly what it says, in helper processes, and cleans up."""

from __future__ import annotations

import os
import subprocess

import pytest

from bench.load import ConnectionLoad, Helper, ListenerLoad, LoadError, NewListener, _split


def _ss(*options: str) -> list[str]:
    out = subprocess.run(["ss", "-Hn", *options], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


def test_listener_load_holds_tcp_listeners_and_udp_sockets_until_closed(netns: None) -> None:
    with ListenerLoad(tcp=20, udp=3) as load:
        tcp = _ss("-lt")
        udp = _ss("-lu")
        assert len(tcp) == 20
        assert len(udp) == 3
        # Both families, so that every scanner reads all four tables.
        assert sum("[::1]" in line for line in tcp) == 10
        assert all(pid != os.getpid() for pid in load.pids)
    assert _ss("-ltu") == []


def test_connection_load_spreads_connections_and_adds_no_listener(netns: None) -> None:
    with ConnectionLoad(250, per_helper=100) as load:
        assert len(load.pids) == 3
        established = _ss("-t", "state", "established")
        assert len(established) == 2 * 250  # both ends of every connection
        assert _ss("-lt") == []
    # Connections are aborted, not closed: nothing lingers in TIME_WAIT.
    assert _ss("-ta") == []


def test_new_listener_reports_its_pid_and_socket_inode(netns: None) -> None:
    with NewListener() as newcomer:
        links = {
            os.readlink(f"/proc/{newcomer.pid}/fd/{fd}")
            for fd in os.listdir(f"/proc/{newcomer.pid}/fd")
        }
        assert f"socket:[{newcomer.inode}]" in links
        assert len(_ss("-lt")) == 1


def test_a_helper_that_fails_says_why(netns: None) -> None:
    # 192.0.2.1 (TEST-NET-1) is on no interface here: the helper's bind() fails.
    helper = Helper(["connect", "--count", "1", "--address", "192.0.2.1"])
    try:
        with pytest.raises(LoadError, match="Cannot assign requested address"):
            helper.wait_ready()
    finally:
        helper.close()


def test_split_never_exceeds_the_part_size_and_keeps_the_total() -> None:
    for total in (0, 1, 7, 6250, 50_000, 50_001):
        parts = _split(total, 6250)
        assert sum(parts) == total
        assert all(0 < part <= 6250 for part in parts)
