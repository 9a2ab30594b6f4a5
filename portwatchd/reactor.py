"""The one place the daemon waits: a small selectors-based event loop.

Why not asyncio: importing it costs about 5 MB of resident memory (ssl,
inspect, logging, concurrent.futures come with it), a quarter of the idle
daemon's 20 MB budget, for features the daemon does not use. What the
daemon needs fits here: readiness callbacks for a few sockets, timers, and
a wake-up that signal handlers and worker threads can use safely.
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import itertools
import os
import selectors
import signal
import time
from collections.abc import Callable
from typing import Any

Callback = Callable[[], None]


class Timer:
    """A callback due at a monotonic time; `cancel()` before it runs."""

    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callback) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        # The heap keeps the timer until it is due; dropping the callback
        # lets what it refers to (a closed connection) go now.
        self.cancelled = True
        self.callback = _nothing


def _nothing() -> None:
    pass


class Reactor:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._selector = selectors.DefaultSelector()
        self._timers: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()
        # The self-pipe: a byte written here makes select() return. Both ends
        # non-blocking: a full pipe already means "wake up".
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._selector.register(self._wake_r, selectors.EVENT_READ, (self._drain_wake, None))
        self._previous_wakeup_fd: int | None = None
        self._closed = False
        # Callbacks handed over by worker threads, run on the loop thread.
        self._handed_over: collections.deque[Callback] = collections.deque()

    # -- file descriptors ------------------------------------------------------

    def add_reader(self, fileobj: Any, callback: Callback) -> None:
        self._update(fileobj, selectors.EVENT_READ, callback, reader=True)

    def add_writer(self, fileobj: Any, callback: Callback) -> None:
        self._update(fileobj, selectors.EVENT_WRITE, callback, reader=False)

    def remove_reader(self, fileobj: Any) -> None:
        self._drop(fileobj, selectors.EVENT_READ)

    def remove_writer(self, fileobj: Any) -> None:
        self._drop(fileobj, selectors.EVENT_WRITE)

    def remove(self, fileobj: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(fileobj)

    def _update(self, fileobj: Any, event: int, callback: Callback, *, reader: bool) -> None:
        try:
            key = self._selector.get_key(fileobj)
        except KeyError:
            callbacks = (callback, None) if reader else (None, callback)
            self._selector.register(fileobj, event, callbacks)
            return
        read_cb, write_cb = key.data
        if reader:
            read_cb = callback
        else:
            write_cb = callback
        self._selector.modify(fileobj, key.events | event, (read_cb, write_cb))

    def _drop(self, fileobj: Any, event: int) -> None:
        try:
            key = self._selector.get_key(fileobj)
        except (KeyError, ValueError):
            return
        remaining = key.events & ~event
        if not remaining:
            self._selector.unregister(fileobj)
            return
        read_cb, write_cb = key.data
        data = (None, write_cb) if event == selectors.EVENT_READ else (read_cb, None)
        self._selector.modify(fileobj, remaining, data)

    # -- time ----------------------------------------------------------------

    def time(self) -> float:
        """The reactor's clock (monotonic seconds): the one timers run on."""
        return self._clock()

    def call_later(self, delay: float, callback: Callback) -> Timer:
        timer = Timer(self._clock() + max(0.0, delay), callback)
        heapq.heappush(self._timers, (timer.when, next(self._order), timer))
        return timer

    # -- waking ----------------------------------------------------------------

    def wake(self) -> None:
        """Make the current or next `run_once` return at once. Safe from
        other threads; a signal handler gets the same through
        `wake_on_signals`, which lets the interpreter write the byte."""
        if self._closed:
            return  # a late signal or worker after close: the fd may be reused
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"\0")

    def call_soon_threadsafe(self, callback: Callback) -> None:
        """Run `callback` on the loop thread at its next turn. The one way a
        worker thread hands a result back: deque.append is atomic, and the
        wake-up makes a waiting `run_once` return."""
        self._handed_over.append(callback)
        self.wake()

    def wake_on_signals(self) -> None:
        """Python runs signal handlers between bytecodes of the main
        thread; select() would not return for them on its own. With the
        wakeup fd, the C-level handler writes a byte and select() returns."""
        self._previous_wakeup_fd = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 4096):
                pass

    # -- running -------------------------------------------------------------

    def run_once(self, timeout: float | None) -> None:
        """Wait up to `timeout` seconds (None: until something happens) for
        I/O, a due timer or a wake-up, then run what is ready."""
        if self._handed_over:
            timeout = 0.0
        if self._timers:
            until_timer = max(0.0, self._timers[0][0] - self._clock())
            timeout = until_timer if timeout is None else min(timeout, until_timer)
        for key, events in self._selector.select(timeout):
            # An earlier callback in this batch may have unregistered this
            # fd, closed it, or closed it and registered a new socket under
            # the same number: look the callbacks up again each time.
            if events & selectors.EVENT_READ:
                read_cb = self._current(key)[0]
                if read_cb is not None:
                    read_cb()
            if events & selectors.EVENT_WRITE:
                write_cb = self._current(key)[1]
                if write_cb is not None:
                    write_cb()
        # Only what was handed over before this turn: a callback that hands
        # over more (the next chunk of a long job) runs at the next turn,
        # after the timers and the I/O, so the loop keeps turning.
        for _ in range(len(self._handed_over)):
            self._handed_over.popleft()()
        now = self._clock()
        while self._timers and self._timers[0][0] <= now:
            _, _, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                timer.callback()

    def _current(self, key: selectors.SelectorKey) -> tuple[Callback | None, Callback | None]:
        """The callbacks registered now for the object `key` was selected for."""
        current = self._selector.get_map().get(key.fd)
        if current is None or current.fileobj is not key.fileobj:
            return (None, None)
        callbacks: tuple[Callback | None, Callback | None] = current.data
        return callbacks

    def close(self) -> None:
        self._closed = True
        if self._previous_wakeup_fd is not None:
            signal.set_wakeup_fd(self._previous_wakeup_fd)
            self._previous_wakeup_fd = None
        self._selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
