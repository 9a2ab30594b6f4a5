"""Replies produced over time: the `Stream` a connection pulls slice by slice.

A handler answers with bytes, an iterator of chunks (wrapped in a
`ChunkStream`), or a `Stream` of its own (a deferred reply, a follow
stream); `connection.Connection` pulls it while the client keeps up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator


class Stream:
    """A reply produced over time. Subclasses implement `pull`.

    `pull()` returns the next chunk, or None when nothing is ready now;
    the stream then calls `wake()` once it has more. Set `finished` when no
    chunk will follow. `close()` is called once, when the reply ends or the
    connection closes: drop subscriptions there. An `exclusive` stream (a
    follow stream) owns the connection to its end: any byte from the client
    ends it, and the connection closes after it.
    """

    exclusive = False

    def __init__(self) -> None:
        self.finished = False
        self._wake: Callable[[], None] | None = None

    def start(self, wake: Callable[[], None]) -> None:
        self._wake = wake

    def wake(self) -> None:
        if self._wake is not None:
            self._wake()

    def pull(self) -> bytes | None:
        raise NotImplementedError

    def close(self) -> None:
        self._wake = None


class ChunkStream(Stream):
    """An iterator of chunks as a Stream: each `next()` is one slice."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        super().__init__()
        self._chunks = chunks

    def pull(self) -> bytes | None:
        for chunk in self._chunks:
            if chunk:
                return chunk
        self.finished = True
        return None

    def close(self) -> None:
        super().close()
        closer = getattr(self._chunks, "close", None)
        if closer is not None:
            closer()  # a generator's `finally` runs now, not at garbage collection
