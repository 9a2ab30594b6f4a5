from __future__ import annotations

import os
import signal
import socket
import threading
import time

from portwatchd.reactor import Reactor


def test_reader_callback_runs_when_data_arrives_and_not_after_removal() -> None:
    reactor = Reactor()
    left, right = socket.socketpair()
    got: list[bytes] = []
    reactor.add_reader(left, lambda: got.append(left.recv(100)))
    right.sendall(b"hello")
    reactor.run_once(5)
    assert got == [b"hello"]
    reactor.remove_reader(left)
    right.sendall(b"again")
    reactor.run_once(0.05)
    assert got == [b"hello"]
    reactor.close()
    left.close()
    right.close()


def test_reader_and_writer_on_one_socket_are_independent() -> None:
    reactor = Reactor()
    left, right = socket.socketpair()
    events: list[str] = []
    reactor.add_reader(left, lambda: events.append("read") or left.recv(100))
    reactor.add_writer(left, lambda: events.append("write") or reactor.remove_writer(left))
    reactor.run_once(5)
    assert events == ["write"]
    right.sendall(b"x")
    reactor.run_once(5)
    assert events == ["write", "read"]
    reactor.close()
    left.close()
    right.close()


def test_timers_run_in_order_and_cancelled_ones_do_not() -> None:
    reactor = Reactor()
    ran: list[str] = []
    reactor.call_later(0.02, lambda: ran.append("second"))
    reactor.call_later(0.0, lambda: ran.append("first"))
    reactor.call_later(0.01, lambda: ran.append("cancelled")).cancel()
    deadline = time.monotonic() + 5
    while len(ran) < 2 and time.monotonic() < deadline:
        reactor.run_once(1)
    assert ran == ["first", "second"]
    reactor.close()


def test_wake_from_another_thread_ends_the_wait() -> None:
    reactor = Reactor()
    threading.Timer(0.05, reactor.wake).start()
    started = time.monotonic()
    reactor.run_once(30)
    assert time.monotonic() - started < 20
    reactor.close()


def test_a_signal_ends_the_wait_through_the_wakeup_fd() -> None:
    reactor = Reactor()
    received: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, _frame: received.append(signum))
    reactor.wake_on_signals()
    try:
        threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGUSR1)).start()
        started = time.monotonic()
        while not received and time.monotonic() - started < 20:
            reactor.run_once(30)
        assert received == [signal.SIGUSR1]
        assert time.monotonic() - started < 20
    finally:
        reactor.close()
        signal.signal(signal.SIGUSR1, previous)


def test_a_descriptor_closed_by_an_earlier_callback_in_the_batch_is_skipped() -> None:
    reactor = Reactor()
    first_left, first_right = socket.socketpair()
    second_left, second_right = socket.socketpair()
    ran: list[str] = []

    def close_second() -> None:
        ran.append("first")
        first_left.recv(10)
        reactor.remove(second_left)
        second_left.close()

    def second() -> None:
        ran.append("second")

    reactor.add_reader(first_left, close_second)
    reactor.add_reader(second_left, second)
    first_right.sendall(b"x")
    second_right.sendall(b"y")
    time.sleep(0.05)  # both readable before the select
    reactor.run_once(5)
    # Whichever ran first, the second callback never sees a closed socket.
    assert ran in (["first"], ["second", "first"])
    reactor.close()
    for sock in (first_left, first_right, second_right):
        sock.close()
