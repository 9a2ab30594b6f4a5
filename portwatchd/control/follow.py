"""`follow` streams and the page walk that `events` shares with them.

A follow stream subscribes to the log when it is asked for, reads its
backlog from the log in pages (up to the newest seq at that moment), then
sends what the log announces after that seq: nothing falls between backlog
and live stream, and nothing comes twice. Live items wait in a bounded
queue per stream; a client that falls further behind is cut off with
follow_overrun, told where to resume.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from portwatchd import protocol
from portwatchd.control.replies import Stream
from portwatchd.model import Event, Loss
from portwatchd.protocol import EventQuery

if TYPE_CHECKING:
    from portwatchd.control.handlers import HistoryReader

# About 3 ms of encoding at 10 us an event and about 100 KB of text: the
# longest one request keeps the loop between two slices.
EVENTS_PER_SLICE = 256


def event_line(event: Event) -> bytes:
    return protocol.event_line(protocol.encode_item(event.to_dict()))


def loss_line(loss: Loss) -> bytes:
    return protocol.loss_line(loss.from_seq, loss.to_seq, loss.time, loss.reason)


class PageWalker:
    """The matches of `query` with start < seq <= upto, at most `count`
    (None: all), oldest first, EVENTS_PER_SLICE at a time.

    `covered` is the seq up to which every match has been returned: once
    the walk ends, `upto`, or the last event returned when `count` ran out.
    """

    def __init__(
        self,
        history: HistoryReader,
        query: EventQuery,
        start: int,
        upto: int,
        count: int | None,
    ) -> None:
        self.history = history
        self.query = query
        self.start = start
        self.upto = upto
        self.count = count
        self.covered = start

    def __iter__(self) -> Iterator[list[Event]]:
        cursor, remaining, upto = self.start, self.count, self.upto
        while remaining is None or remaining > 0:
            want = EVENTS_PER_SLICE if remaining is None else min(EVENTS_PER_SLICE, remaining)
            page = self.history.page(self.query, cursor, want)
            complete = len(page) < want  # no more matches in the whole log
            if page and page[-1].seq > upto:
                # Appended after the reply began: the live stream (or the next request) has them.
                page = [event for event in page if event.seq <= upto]
                complete = True
            if page:
                cursor = page[-1].seq
                self.covered = cursor
                if remaining is not None:
                    remaining -= len(page)
                yield page
            if complete or not page:
                self.covered = upto
                return


class _LiveItem:
    """An event or loss the log announced, encoded once for every follower."""

    __slots__ = ("_line", "item")

    def __init__(self, item: Event | Loss) -> None:
        self.item = item
        self._line: bytes | None = None

    def line(self) -> bytes:
        if self._line is None:
            item = self.item
            self._line = loss_line(item) if isinstance(item, Loss) else event_line(item)
        return self._line


class LiveFeed:
    """One log subscription shared by every follow stream, held while any exists."""

    def __init__(self, history: HistoryReader, log: Callable[[str], None]) -> None:
        self.history = history
        self._log = log
        self._streams: set[FollowStream] = set()
        self._unsubscribe: Callable[[], None] | None = None

    @property
    def followers(self) -> int:
        return len(self._streams)

    def add(self, stream: FollowStream) -> None:
        if self._unsubscribe is None:
            self._unsubscribe = self.history.subscribe(self._deliver)
        self._streams.add(stream)

    def remove(self, stream: FollowStream) -> None:
        self._streams.discard(stream)
        if not self._streams:
            self.close()

    def close(self) -> None:
        unsubscribe, self._unsubscribe = self._unsubscribe, None
        if unsubscribe is not None:
            unsubscribe()

    def _deliver(self, items: Sequence[Event | Loss]) -> None:
        """Called by the log after each append: only queue, never send or raise."""
        shared = [_LiveItem(item) for item in items]
        for stream in list(self._streams):
            try:
                stream.offer(shared)
            except Exception as exc:
                self._log(f"cannot hand events to a follower: {type(exc).__name__}: {exc}")


class FollowStream(Stream):
    exclusive = True

    def __init__(self, feed: LiveFeed, query: EventQuery, capacity: int) -> None:
        super().__init__()
        self.feed = feed
        self.query = query
        self.capacity = capacity
        # Subscribed and measured in one step on the loop thread: what the
        # log holds up to `upto` is backlog, everything after it comes live.
        self.upto = feed.history.last_seq
        self.pending: deque[_LiveItem] = deque()
        self.overrun = False
        self.sent_seq = 0  # the highest event seq handed to the connection
        self._backlog: Iterator[bytes] | None = self._backlog_slices()
        feed.add(self)

    def offer(self, items: Sequence[_LiveItem]) -> None:
        if self.overrun or self.finished:
            return
        query, before = self.query, len(self.pending)
        for live in items:
            item = live.item
            if isinstance(item, Event):
                endpoint = item.endpoint
                if item.seq <= self.upto or not query.matches_live(
                    item.type, endpoint.proto, endpoint.port
                ):
                    continue
                place = item.place
                if query.filters_place and not query.matches_place(
                    endpoint.netns, place.netns_inode, place.netns_name, place.container
                ):
                    continue
            if len(self.pending) >= self.capacity:
                # Cut off rather than grow: free the queue now, tell the client next.
                self.overrun = True
                self.pending.clear()
                break
            self.pending.append(live)
        if self.overrun or len(self.pending) > before:
            self.wake()

    def pull(self) -> bytes | None:
        if self.finished:
            return None
        if self._backlog is not None and not self.overrun:
            chunk = next(self._backlog, None)
            if chunk is not None:
                return chunk
            self._backlog = None
        if self.overrun:
            self.finished = True
            return protocol.error_line(
                protocol.FOLLOW_OVERRUN,
                f"client fell more than {self.capacity} events behind; "
                f"reconnect with after_seq={self.sent_seq} to resume",
            )
        if not self.pending:
            return None
        lines = []
        for _ in range(min(EVENTS_PER_SLICE, len(self.pending))):
            live = self.pending.popleft()
            lines.append(live.line())
            if isinstance(live.item, Event):
                self.sent_seq = live.item.seq
        return b"".join(lines)

    def close(self) -> None:
        super().close()
        self.finished = True
        self.feed.remove(self)
        self.pending.clear()
        self._backlog = None

    def _backlog_slices(self) -> Iterator[bytes]:
        """The ok header, reset and gap notices, then the backlog in slices."""
        history, query, upto = self.feed.history, self.query, self.upto
        after, limit = query.after_seq, query.limit
        notices = []
        if after is not None and after > upto:
            notices.append(protocol.reset_line(after, upto))
            after = 0
        if after is not None:
            # The oldest `limit` after after_seq, then live from the newest
            # seq, would drop what lies between: the whole rest is backlog.
            limit = None
        pages: Iterator[list[Event]] = iter(())
        first_page: list[Event] = []
        if after is not None:
            start = after
            pages = iter(PageWalker(history, query, after, upto, None))
        elif query.since is not None or limit is not None:
            first = history.newest_start(query, limit) if limit is not None else 0
            pages = iter(PageWalker(history, query, first, upto, limit))
        else:
            start = upto  # live only
        # Read before the header: a history that cannot be read is an error
        # reply, not a stream that starts and breaks off.
        first_page = next(pages, [])
        if after is None and (query.since is not None or limit is not None):
            start = first_page[0].seq - 1 if first_page else upto
        oldest = history.oldest_seq
        if after is not None and oldest is not None and after + 1 < oldest:
            notices.append(protocol.gap_line(after + 1, oldest - 1))
        losses = deque(history.losses(start, upto)) if start < upto else deque()
        self.sent_seq = start
        yield b"".join([protocol.follow_header(start), *notices])
        page = first_page
        while True:
            if page:
                lines = []
                for event in page:
                    while losses and losses[0].from_seq < event.seq:
                        lines.append(loss_line(losses.popleft()))
                    lines.append(event_line(event))
                self.sent_seq = page[-1].seq
                yield b"".join(lines)
            page = next(pages, [])
            if not page:
                break
        if losses:
            yield b"".join(loss_line(loss) for loss in losses)
