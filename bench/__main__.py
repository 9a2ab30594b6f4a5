"""python -m bench [SECTION ...] [options]: run benchmarks, check their targets.

With no section named, every section runs. The options of all sections are
accepted either way (`python -m bench --points 10:0` runs everything, the
scan section on that point). The whole run happens in a private network
namespace, entered once at start, so the load never touches the host.

Exit status: 0 when every target checked passed, 1 when one failed, 2 when
the benchmark could not run.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.churn import SECTION as CHURN_SECTION
from bench.client import SECTION as CLIENT_SECTION
from bench.control import SECTION as CONTROL_SECTION
from bench.daemon import SECTION as DAEMON_SECTION
from bench.daemon_store import SECTION as DAEMON_STORE_SECTION
from bench.latency import SECTION as LATENCY_SECTION
from bench.load import LoadError
from bench.namespaces import SECTION as NAMESPACES_SECTION
from bench.netns import NetnsError, enter_private_netns
from bench.scan import SECTION as SCAN_SECTION
from bench.section import Check, Section
from bench.store import SECTION as STORE_SECTION
from portwatchd.sources.base import ScanError

SECTIONS: dict[str, Section] = {
    section.name: section
    for section in (SCAN_SECTION, DAEMON_SECTION, CONTROL_SECTION, STORE_SECTION)
}
SECTIONS[CLIENT_SECTION.name] = CLIENT_SECTION
SECTIONS[DAEMON_STORE_SECTION.name] = DAEMON_STORE_SECTION
SECTIONS[CHURN_SECTION.name] = CHURN_SECTION
SECTIONS[NAMESPACES_SECTION.name] = NAMESPACES_SECTION
SECTIONS[LATENCY_SECTION.name] = LATENCY_SECTION

EXIT_PASSED = 0
EXIT_TARGET_FAILED = 1
EXIT_CANNOT_RUN = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__.split("\n\n", 1)[0] if __doc__ else None,
        epilog="sections: "
        + "; ".join(f"{name}: {section.help}" for name, section in SECTIONS.items()),
    )
    parser.add_argument(
        "sections",
        nargs="*",
        metavar="SECTION",
        help=f"sections to run, of: {', '.join(SECTIONS)} (default: all)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        metavar="FILE",
        help="write every measurement as a JSON list of objects to FILE",
    )
    for name, section in SECTIONS.items():
        section.add_arguments(parser.add_argument_group(f"{name} section"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    unknown = [name for name in args.sections if name not in SECTIONS]
    if unknown:
        parser.error(f"unknown section {', '.join(unknown)}: choose from {', '.join(SECTIONS)}")
    chosen = [SECTIONS[name] for name in args.sections or SECTIONS]

    try:
        enter_private_netns()
    except (NetnsError, OSError) as exc:
        print(f"bench: cannot set up a private network namespace: {exc}", file=sys.stderr)
        return EXIT_CANNOT_RUN

    records = []
    checks: list[Check] = []
    for section in chosen:
        print(f"== {section.name}: {section.help}", flush=True)
        try:
            result = section.run(args, sys.stdout)
        except (LoadError, ScanError) as exc:
            print(f"bench: {section.name}: {exc}", file=sys.stderr)
            return EXIT_CANNOT_RUN
        records.extend(result.records)
        checks.extend(result.checks)
        print()
        print("\n".join(check.line() for check in result.checks), flush=True)
        print()

    if args.json:
        args.json.write_text(json.dumps(records, indent=1) + "\n")
        print(f"wrote {len(records)} measurements to {args.json}")
    failed = [check for check in checks if not check.passed]
    print(f"{len(checks) - len(failed)} of {len(checks)} targets passed")
    return EXIT_TARGET_FAILED if failed else EXIT_PASSED


if __name__ == "__main__":
    sys.exit(main())
