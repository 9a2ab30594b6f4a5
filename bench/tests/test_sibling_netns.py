"""sibling_netns: what is opened inside stays there, and we come back."""

from __future__ import annotations

import os
import socket
import subprocess

from bench.netns import sibling_netns
from portwatchd.sources.netlink import NetlinkScanner


def _netns_id() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


def test_sockets_opened_in_a_sibling_stay_there_and_we_return(netns: None) -> None:
    home = _netns_id()
    with sibling_netns():
        assert _netns_id() != home
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        sibling_scanner = NetlinkScanner()
    try:
        assert _netns_id() == home
        port = listener.getsockname()[1]
        # The netlink socket answers about the sibling; ss (started here) sees none of it.
        assert [e.port for e in sibling_scanner.scan()] == [port]
        here = subprocess.run(["ss", "-Hlnt"], capture_output=True, text=True, check=True)
        assert here.stdout == ""
    finally:
        sibling_scanner.close()
        listener.close()
