"""The daemon-store section's numbers: a table, the records, and the targets.

The targets are the issue's (issue 9, "Numbers"), each judged on the
statistic bench/README.md gives for it.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any, TextIO

from bench.section import Check, SectionResult, format_ms, format_ratio, format_table

LATENCY_MAX_RATIO = 1.2
EVENTS_MAX_MS = 10.0
RSS_MAX_KB = 25 * 1024
READY_MAX_S = 1.0
WATCHDOG_MAX_GAP_S = 1.0


@dataclass
class Measured:
    """What the section measured; per daemon ("large", "empty") where both ran."""

    events_held: int
    ready_s: dict[str, list[float]] = field(default_factory=dict)
    rss_kb: dict[str, int] = field(default_factory=dict)
    hwm_kb: dict[str, int] = field(default_factory=dict)
    events: dict[str, float] = field(default_factory=dict)  # the large one's
    latency: dict[str, list[float]] = field(default_factory=dict)
    burst: dict[str, float] = field(default_factory=dict)
    cpu_percent: dict[str, float] = field(default_factory=dict)  # over the latency rounds

    def latency_ratios(self) -> list[float]:
        return [
            large / empty
            for large, empty in zip(self.latency["large"], self.latency["empty"], strict=True)
        ]


def _p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


def _rows(m: Measured) -> list[list[str]]:
    rows = []
    for name in ("large", "empty"):
        ready = m.ready_s[name]
        latency = m.latency[name]
        events = m.events if name == "large" else {}
        rows.append(
            [
                name,
                f"{statistics.median(ready) * 1000:.0f} ({max(ready) * 1000:.0f})",
                f"{m.rss_kb[name] / 1024:.1f} ({m.hwm_kb[name] / 1024:.1f})",
                f"{format_ms(events.get('median_ms'))} ({format_ms(events.get('p90_ms'))})",
                format_ms(events.get("cpu_ms")),
                f"{format_ms(statistics.median(latency))} ({format_ms(_p90(latency))})",
                f"{m.cpu_percent[name]:.1f}",
            ]
        )
    return rows


def _print(m: Measured, out: TextIO) -> None:
    headers = [
        "history",
        "READY ms med (max)",
        "RSS MB (peak)",
        "events ms med (p90)",
        "CPU ms/req",
        "latency ms med (p90)",
        "CPU % (rounds)",
    ]
    print(format_table(headers, _rows(m)), file=out)
    ratios = m.latency_ratios()
    print(
        f"latency over {len(ratios)} rounds: large/empty per round median "
        f"{format_ratio(statistics.median(ratios))}, p90 {format_ratio(_p90(ratios))}; "
        f"median difference "
        f"{format_ms(statistics.median(a - b for a, b in zip(*m.latency.values(), strict=True)))}"
        " ms",
        file=out,
    )
    b = m.burst
    print(
        f"burst: {b['listeners']:,.0f} listeners opened in {b['listen_s']:.2f} s; "
        f"{b['out']:,.0f} opened lines out {b['all_out_s']:.2f} s after the first listen(); "
        f"longest watchdog gap {b['gap_s']:.2f} s ({b['pings']:.0f} pings)",
        file=out,
    )


def _checks(m: Measured) -> list[Check]:
    held = f"{m.events_held:,} events"
    ratio = statistics.median(m.latency_ratios())
    events_ms = m.events["median_ms"]
    ready = statistics.median(m.ready_s["large"])
    b = m.burst
    return [
        Check(
            f"detection latency, {held} vs empty, side by side <= {LATENCY_MAX_RATIO}x",
            ratio <= LATENCY_MAX_RATIO,
            f"{format_ratio(ratio)} (median of {len(m.latency_ratios())} per-round ratios)",
        ),
        Check(
            f"events --limit 50 with {held} <= {EVENTS_MAX_MS:g} ms",
            events_ms <= EVENTS_MAX_MS,
            f"{format_ms(events_ms)} ms median round trip, "
            f"{format_ms(m.events['cpu_ms'])} ms daemon CPU per request",
        ),
        Check(
            f"daemon RSS with {held} <= {RSS_MAX_KB // 1024} MB",
            m.rss_kb["large"] <= RSS_MAX_KB,
            f"{m.rss_kb['large'] / 1024:.1f} MB (empty: {m.rss_kb['empty'] / 1024:.1f} MB)",
        ),
        Check(
            f"start to READY with {held} <= {READY_MAX_S:g} s",
            ready <= READY_MAX_S,
            f"{ready * 1000:.0f} ms median of {len(m.ready_s['large'])}",
        ),
        Check(
            f"burst of {b['listeners']:,.0f} opens: longest watchdog gap <= "
            f"{WATCHDOG_MAX_GAP_S:g} s, no event lost",
            b["gap_s"] <= WATCHDOG_MAX_GAP_S and b["out"] == b["listeners"],
            f"{b['gap_s']:.2f} s; {b['out']:,.0f} of {b['listeners']:,.0f} out "
            f"in {b['all_out_s']:.1f} s",
        ),
    ]


def _records(m: Measured) -> list[dict[str, Any]]:
    base = {"section": "daemon-store", "events": m.events_held}
    records: list[dict[str, Any]] = []
    for name in ("large", "empty"):
        records += [
            {**base, "method": f"ready_{name}", "median_ms": statistics.median(m.ready_s[name])},
            {**base, "method": f"rss_{name}", "rss_kb": m.rss_kb[name], "hwm_kb": m.hwm_kb[name]},
            {
                **base,
                "method": f"latency_{name}",
                "median_ms": statistics.median(m.latency[name]),
                "p90_ms": _p90(m.latency[name]),
                "reps": len(m.latency[name]),
                "cpu_percent": m.cpu_percent[name],
            },
        ]
    records.append({**base, "method": "events50_large", **m.events})
    records.append(
        {**base, "method": "latency_ratio", "median": statistics.median(m.latency_ratios())}
    )
    records.append({**base, "method": "burst", **m.burst})
    return records


def report(m: Measured, out: TextIO) -> SectionResult:
    _print(m, out)
    return SectionResult(records=_records(m), checks=_checks(m))
