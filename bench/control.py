"""Control socket benchmark: status throughput and server-side `events` time.

Targets (from the issue):
- at least 2,000 `status` requests per second, sustained, from 8 concurrent
  client processes, against a server whose backend holds 10,000 ports and a
  full 1,000-event ring;
- `events` for the whole ring answered in at most 10 ms at the server
  (request parsing, the ring query and encoding; the socket is not counted).

The server is the real ControlServer on a Reactor looping in a thread of
this process, as the daemon runs it between scans; the backend is in memory
(a real EventRing), so the numbers measure the control path, not scanning.
Run: `python -m bench.control` (or `python -m bench control`, the section).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import queue
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TextIO

from bench.load import LoadError
from bench.section import Check, SectionResult
from portwatchd import protocol
from portwatchd.control import ControlServer
from portwatchd.model import Endpoint, Event, Owner
from portwatchd.protocol import EventQuery
from portwatchd.reactor import Reactor
from portwatchd.ring import EventRing


class MemoryBackend:
    """A ControlBackend with `ports` listening sockets and a full ring."""

    def __init__(self, ports: int, ring_capacity: int) -> None:
        self.ring = EventRing(ring_capacity)
        self.ports = [
            (
                Endpoint(
                    proto="tcp",
                    family="ipv4",
                    address="10.0.0.1",
                    port=1024 + i % 60000,
                    inode=100_000 + i,
                    uid=0,
                ),
                Owner(
                    pid=1000 + i % 500,
                    pids=(1000 + i % 500,),
                    comm="worker",
                    exe="/usr/bin/worker",
                    unit="worker.service",
                ),
            )
            for i in range(ports)
        ]
        for seq in range(1, ring_capacity * 2 + 1):  # wrap once: a ring in steady state
            endpoint, owner = self.ports[seq % ports]
            self.ring.append(
                Event(
                    seq=seq,
                    id=f"00000000-0000-4000-8000-{seq:012d}",
                    type="opened" if seq % 2 else "closed",
                    time=f"2026-11-25T14:{seq // 60 % 60:02d}:{seq % 60:02d}.000000Z",
                    endpoint=endpoint,
                    owner=owner,
                )
            )
        self.started = time.monotonic()

    def query_events(self, query: EventQuery) -> list[Event]:
        return self.ring.query(**query.as_args())

    def oldest_seq(self) -> int | None:
        return self.ring.oldest_seq

    def last_seq(self) -> int:
        return self.ring.last_seq

    def current_ports(self) -> list[tuple[Endpoint, Owner]]:
        return self.ports

    def status(self) -> dict[str, Any]:
        return {
            "version": "bench",
            "pid": os.getpid(),
            "uptime_s": time.monotonic() - self.started,
            "interval_s": 2.0,
            "backend": "netlink",
            "ports_watched": len(self.ports),
            "events_total": self.ring.last_seq,
            "ring_size": len(self.ring),
            "ring_capacity": self.ring.capacity,
            "last_scan_time": "2026-11-25T14:00:00.000000Z",
            "last_scan_duration_ms": 12.5,
            "config_path": "/etc/portwatchd/portwatchd.toml",
            "last_reload": {"time": None, "ok": True, "error": None},
        }

    def request_rescan(self) -> None:
        pass


class ServerThread:
    """The server's reactor looping in a thread; `call` runs a function on it."""

    def __init__(self, server: ControlServer, reactor: Reactor) -> None:
        self.server = server
        self.reactor = reactor
        self.calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self.stopping = False
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stopping:
            self.reactor.run_once(0.5)
            with contextlib.suppress(queue.Empty):
                while True:
                    self.calls.get_nowait()()

    def start(self) -> None:
        self.server.start()
        self.thread.start()

    def call(self, function: Callable[[], Any]) -> Any:
        done: Future[Any] = Future()

        def run() -> None:
            try:
                done.set_result(function())
            except BaseException as exc:
                done.set_exception(exc)

        self.calls.put(run)
        self.reactor.wake()
        return done.result(timeout=60)

    def stop(self) -> None:
        def shutdown() -> None:
            self.server.close()
            self.stopping = True

        self.call(shutdown)
        self.thread.join(timeout=30)
        self.reactor.close()


def _status_client(path: str, start_at: float, duration: float, results: Any) -> None:
    """One client process: status requests back to back on one connection."""
    request = protocol.encode(protocol.request("status"))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        stream = sock.makefile("rb")
        time.sleep(max(0.0, start_at - time.time()))
        count = 0
        errors = 0
        end = time.time() + duration
        while time.time() < end:
            sock.sendall(request)
            line = stream.readline()
            if not line.startswith(b'{"v":1,"ok":true'):
                errors += 1
            count += 1
    results.put((count, errors))


def bench_status(path: str, clients: int, duration: float) -> tuple[float, int]:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    start_at = time.time() + 2.0 + 0.2 * clients  # every process connected and waiting
    processes = [
        context.Process(target=_status_client, args=(path, start_at, duration, results))
        for _ in range(clients)
    ]
    for process in processes:
        process.start()
    totals: list[tuple[int, int]] = []
    give_up = time.monotonic() + 60 + duration
    try:
        while len(totals) < clients:
            try:
                totals.append(results.get(timeout=0.5))
            except queue.Empty:
                # A client that died never reports: say so instead of waiting a minute.
                dead = [p.exitcode for p in processes if p.exitcode not in (None, 0)]
                if dead or time.monotonic() > give_up:
                    raise LoadError(
                        f"status client processes failed (exit codes {dead}) "
                        "or did not finish; see their tracebacks above"
                    ) from None
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
                process.join()
    requests = sum(count for count, _ in totals)
    errors = sum(bad for _, bad in totals)
    return requests / duration, errors


def bench_events(server: ServerThread, repeat: int) -> tuple[float, list[float]]:
    """Server-side ms of a whole-ring `events` request: the first, then `repeat` more.

    The first pays for encoding every event; the server keeps each event's
    JSON text, so later requests (and, in the daemon, every request after
    the events were published to followers) only join them.
    """
    line = protocol.encode(protocol.request("events"))

    def timed() -> float:
        started = time.perf_counter()
        server.server.answer(line, 0)
        return (time.perf_counter() - started) * 1000

    first: float = server.call(timed)
    return first, [server.call(timed) for _ in range(repeat)]


DEFAULTS = {
    "control_clients": 8,
    "control_duration": 5.0,
    "control_ports": 10_000,
    "control_ring": 1_000,
    "control_min_rps": 2_000.0,
    "control_max_events_ms": 10.0,
}


def add_arguments(group: argparse._ArgumentGroup | argparse.ArgumentParser) -> None:
    group.add_argument(
        "--control-clients",
        type=int,
        default=DEFAULTS["control_clients"],
        metavar="COUNT",
        help="concurrent status client processes (default: %(default)s)",
    )
    group.add_argument(
        "--control-duration",
        type=float,
        default=DEFAULTS["control_duration"],
        metavar="SECONDS",
        help="seconds of status load (default: %(default)s)",
    )
    group.add_argument(
        "--control-ports",
        type=int,
        default=DEFAULTS["control_ports"],
        metavar="COUNT",
        help="listening ports the backend reports (default: %(default)s)",
    )
    group.add_argument(
        "--control-ring",
        type=int,
        default=DEFAULTS["control_ring"],
        metavar="COUNT",
        help="events in the (full) ring (default: %(default)s)",
    )
    group.add_argument(
        "--control-min-rps",
        type=float,
        default=DEFAULTS["control_min_rps"],
        metavar="RATE",
        help="target: status requests per second (default: %(default)s)",
    )
    group.add_argument(
        "--control-max-events-ms",
        type=float,
        default=DEFAULTS["control_max_events_ms"],
        metavar="MS",
        help="target: server-side median ms of a whole-ring events (default: %(default)s)",
    )


def measure(args: argparse.Namespace, out: TextIO) -> SectionResult:
    """Run both measurements against a fresh server; report to `out`."""
    directory = tempfile.mkdtemp(dir="/tmp", prefix="pwb")
    path = os.path.join(directory, "c.sock")
    backend = MemoryBackend(args.control_ports, args.control_ring)
    reactor = Reactor()
    server = ServerThread(
        ControlServer(
            backend,
            reactor,
            path=path,
            max_clients=args.control_clients + 8,
            log=lambda message: print(f"bench: control: {message}", file=sys.stderr),
        ),
        reactor,
    )
    server.start()
    try:
        rps, errors = bench_status(path, args.control_clients, args.control_duration)
        first, times = bench_events(server, repeat=50)
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.connect(path)
        probe.sendall(protocol.encode(protocol.request("events")))
        response = probe.makefile("rb").readline()
        probe.close()
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)

    events_in_response = response.count(b'"seq":')
    median = statistics.median(times)
    p95 = sorted(times)[int(len(times) * 0.95) - 1]
    status_ok = rps >= args.control_min_rps and errors == 0
    events_ok = median <= args.control_max_events_ms and events_in_response == args.control_ring
    out.write(
        f"status: {rps:,.0f} requests/s from {args.control_clients} client processes over "
        f"{args.control_duration:g} s ({args.control_ports:,} ports, "
        f"{args.control_ring:,}-event ring), {errors} errors\n"
        f"events (whole ring, {events_in_response} events, {len(response):,} bytes): "
        f"server-side median {median:.2f} ms, p95 {p95:.2f} ms, max {max(times):.2f} ms; "
        f"first request (encodes every event) {first:.2f} ms\n"
    )
    records: list[dict[str, Any]] = [
        {
            "section": "control",
            "measure": "status_rps",
            "value": round(rps, 1),
            "errors": errors,
            "clients": args.control_clients,
            "duration_s": args.control_duration,
            "ports": args.control_ports,
            "ring": args.control_ring,
        },
        {
            "section": "control",
            "measure": "events_whole_ring_ms",
            "median_ms": round(median, 4),
            "p95_ms": round(p95, 4),
            "max_ms": round(max(times), 4),
            "first_ms": round(first, 4),
            "events": events_in_response,
            "bytes": len(response),
        },
    ]
    checks = [
        Check(
            f"control status >= {args.control_min_rps:,.0f} requests/s "
            f"from {args.control_clients} clients",
            status_ok,
            f"{rps:,.0f}/s, {errors} errors",
        ),
        Check(
            f"control events, whole {args.control_ring:,}-event ring, "
            f"<= {args.control_max_events_ms:g} ms at the server",
            events_ok,
            f"median {median:.2f} ms, p95 {p95:.2f} ms, {events_in_response} events",
        ),
    ]
    return SectionResult(records, checks)


class ControlSection:
    name = "control"
    help = "control socket: status requests/s from concurrent clients, whole-ring events time"

    def add_arguments(self, group: argparse._ArgumentGroup) -> None:
        add_arguments(group)

    def run(self, args: argparse.Namespace, out: TextIO) -> SectionResult:
        return measure(args, out)


SECTION = ControlSection()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.control", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    result = measure(args, sys.stdout)
    print("\n".join(check.line() for check in result.checks))
    return 0 if all(check.passed for check in result.checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
