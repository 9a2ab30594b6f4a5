"""Client start-up benchmark: `portwatchctl status` against the interpreter doing nothing.

Target (issue 13): `portwatchctl status` wall time at most 2x `python3 -c
pass`, measured side by side, for each way portwatchctl is started:

- venv: `.venv/bin/portwatchctl` (the editable install of `make setup`)
  against `.venv/bin/python -c pass`. Both pay the venv's site start-up,
  the editable install's import finder included;
- tree: `/usr/bin/python3 -I`, the tree first on sys.path, running what the
  packaged `/usr/bin/portwatchctl` runs (`from portwatchd.ctl import
  main`), against `/usr/bin/python3 -I -c pass`: the code imports from a
  plain directory, as from /usr/lib/python3/dist-packages. (`-I` ignores
  PYTHONPATH, so a two-line bootstrap puts the tree on sys.path.)

The daemon is a stand-in answering `status` with a daemon's status object
from a thread of this process, so that only the client's cost is measured.

Judged on a statistic that holds on a shared machine: commands run in
interleaved rounds (every command once per round, so a burst of other load
hits them alike), and each command's best (minimum) wall time over the
rounds is compared; the medians are shown alongside, without a target.

Run: `python -m bench client` (`--client-rounds`, `--client-max-ratio`).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any, TextIO

from bench.load import REPO_ROOT, LoadError
from bench.section import Check, SectionResult, format_ms, format_ratio, format_table
from bench.timing import Timing
from portwatchd import protocol

SYSTEM_PYTHON = "/usr/bin/python3"
VENV_BIN = REPO_ROOT / ".venv" / "bin"
DEFAULTS = {"client_rounds": 30, "client_max_ratio": 2.0}
# What the daemon's status answer holds (keys of 0.1's status), so that the
# client formats a realistic page.
STATUS = {
    "version": "0.2.0", "pid": 4242, "uptime_s": 3723.0, "protocol": 1, "backend": "netlink",
    "interval_s": 1.0, "owners": True, "ports_watched": 12, "events_total": 1000,
    "events_last_hour": 3, "last_seq": 1000, "last_scan_time": "2026-11-30T10:00:01.000000Z",
    "last_scan_duration_ms": 0.4, "scan_error": None, "journal_error": None,
    "config_path": "/etc/portwatchd/portwatchd.toml", "state_dir": "/var/lib/portwatchd",
    "last_reload": None, "clients": 1, "followers": 0,
}  # fmt: skip


class StatusServer:
    """Answers `status` on a Unix socket from a thread, until close()."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._answer = protocol.encode(protocol.ok(status=STATUS))
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(path)
        self._listener.listen(64)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            with connection, connection.makefile("rb") as lines:
                for _line in lines:
                    connection.sendall(self._answer)

    def close(self) -> None:
        self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(timeout=10)


@dataclass(frozen=True)
class Pair:
    """A way of starting portwatchctl, and the bare interpreter it is compared with."""

    name: str
    baseline: list[str]
    client: list[str]


def pairs(socket_path: str) -> list[Pair]:
    bootstrap = (
        f"import sys; sys.path.insert(0, {str(REPO_ROOT)!r}); "
        "from portwatchd.ctl import main; sys.exit(main())"
    )
    return [
        Pair(
            "venv",
            [str(VENV_BIN / "python"), "-c", "pass"],
            [str(VENV_BIN / "portwatchctl"), "--socket", socket_path, "status"],
        ),
        Pair(
            "tree",
            [SYSTEM_PYTHON, "-I", "-c", "pass"],
            [SYSTEM_PYTHON, "-I", "-c", bootstrap, "--socket", socket_path, "status"],
        ),
    ]


def _wall_ms(argv: list[str], check_output: bool) -> float:
    started = time.perf_counter()
    run = subprocess.run(argv, capture_output=True, text=True, check=False, cwd="/")
    elapsed = (time.perf_counter() - started) * 1000
    if run.returncode != 0 or (check_output and "Ports watched: 12" not in run.stdout):
        raise LoadError(f"{argv[0]} failed (exit {run.returncode}): {run.stderr.strip()[-300:]}")
    return elapsed


def measure(chosen: list[Pair], rounds: int) -> dict[tuple[str, str], Timing]:
    """Wall ms of every command, in `rounds` interleaved rounds (one untimed first)."""
    commands = {
        (pair.name, role): argv
        for pair in chosen
        for role, argv in (("baseline", pair.baseline), ("client", pair.client))
    }
    samples: dict[tuple[str, str], list[float]] = {key: [] for key in commands}
    for round_number in range(rounds + 1):
        for key, argv in commands.items():
            elapsed = _wall_ms(argv, check_output=key[1] == "client")
            if round_number:  # the first round warms the page cache and the .pyc files
                samples[key].append(elapsed)
    return {key: Timing(tuple(values)) for key, values in samples.items()}


class ClientSection:
    name = "client"
    help = "portwatchctl status start-up time against python3 -c pass"

    def add_arguments(self, group: argparse._ArgumentGroup) -> None:
        group.add_argument(
            "--client-rounds",
            type=int,
            default=DEFAULTS["client_rounds"],
            help="interleaved rounds of every command (default: %(default)s)",
        )
        group.add_argument(
            "--client-max-ratio",
            type=float,
            default=DEFAULTS["client_max_ratio"],
            help="target: best status time / best bare interpreter time (default: %(default)s)",
        )

    def run(self, args: argparse.Namespace, out: TextIO) -> SectionResult:
        with tempfile.TemporaryDirectory(prefix="pwbench-") as directory:
            server = StatusServer(os.path.join(directory, "s.sock"))
            # A way of starting it is measured where its interpreter exists.
            chosen = [p for p in pairs(server.path) if os.access(p.baseline[0], os.X_OK)]
            try:
                timings = measure(chosen, args.client_rounds)
            finally:
                server.close()
        return report(chosen, timings, args, out)


def report(
    chosen: list[Pair],
    timings: dict[tuple[str, str], Timing],
    args: argparse.Namespace,
    out: TextIO,
) -> SectionResult:
    result = SectionResult()
    rows = []
    for pair in chosen:
        base, client = timings[(pair.name, "baseline")], timings[(pair.name, "client")]
        ratio = min(client.samples_ms) / min(base.samples_ms)
        rows.append(
            [
                pair.name,
                format_ms(min(base.samples_ms)),
                format_ms(min(client.samples_ms)),
                format_ratio(ratio),
                format_ms(base.median_ms),
                format_ms(client.median_ms),
                str(client.reps),
            ]
        )
        for role, timing in (("baseline", base), ("client", client)):
            result.records.append(_record(pair.name, role, timing))
        result.checks.append(
            Check(
                f"portwatchctl status <= {args.client_max_ratio:g}x python3 -c pass ({pair.name})",
                ratio <= args.client_max_ratio,
                f"best {min(client.samples_ms):.1f} ms vs {min(base.samples_ms):.1f} ms: "
                f"{ratio:.2f}x",
            )
        )
    headers = ["start", "pass best", "status best", "ratio", "pass med", "status med", "rounds"]
    out.write(format_table(headers, rows) + "\n")
    return result


def _record(pair: str, role: str, timing: Timing) -> dict[str, Any]:
    return {
        "section": "client",
        "method": f"{pair}_{role}",
        "best_ms": min(timing.samples_ms),
        "median_ms": timing.median_ms,
        "p90_ms": timing.p90_ms,
        "reps": timing.reps,
        "samples_ms": list(timing.samples_ms),
    }


SECTION = ClientSection()
