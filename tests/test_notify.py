from __future__ import annotations

import os
import socket
import tempfile

import pytest

from portwatchd.notify import Notifier, ascii_status, watchdog_interval


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}, pid=10) == 15.0


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"WATCHDOG_USEC": "0"},
        {"WATCHDOG_USEC": "junk"},
        {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "11"},
    ],
)
def test_watchdog_off_or_meant_for_another_process(env: dict[str, str]) -> None:
    assert watchdog_interval(env, pid=10) is None


def test_watchdog_pid_matching_us_enables_it() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "10"}, pid=10) == 1.0


def test_status_is_ascii_single_line() -> None:
    assert ascii_status("watching 3 ports\nnext → line") == "watching 3 ports\\nnext \\u2192 line"


def test_notifier_speaks_sd_notify_on_a_real_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    directory = tempfile.mkdtemp(prefix="pwn", dir="/tmp")
    path = os.path.join(directory, "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        server.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        notifier = Notifier()
        notifier.ready("watching 1 ports")
        notifier.status("watching 1 ports")  # unchanged: not sent again
        notifier.status("watching 2 ports")
        notifier.reloading(monotonic_usec=123)
        notifier.watchdog()
        notifier.stopping()
        got = [server.recv(4096).decode() for _ in range(5)]
    assert got == [
        "READY=1\nSTATUS=watching 1 ports",
        "STATUS=watching 2 ports",
        "RELOADING=1\nMONOTONIC_USEC=123",
        "WATCHDOG=1",
        "STOPPING=1",
    ]
    os.unlink(path)
    os.rmdir(directory)
