"""The zsh and fish completions offer every command and option portwatchctl has.

Each shell runs its real completion machinery on a typed command line
(zsh in a pseudo-terminal through zsh/zpty, fish with `complete -C`); the
candidates are compared with the options of portwatchctl's own parser.
The bash completion's test is in test_ctl.py.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from portwatchd import ctl, ctl_parser
from portwatchd.model import EVENT_TYPES
from tests.test_ctl import _options_by_command

REPO = Path(__file__).resolve().parent.parent
COMPLETION = REPO / "completion"


def zsh_offers(line: str) -> set[str]:
    result = subprocess.run(
        ["zsh", "-f", str(REPO / "tests" / "zsh_complete.zsh"), str(COMPLETION), line],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return {word.strip() for word in result.stdout.splitlines() if word.strip()}


def fish_offers(line: str) -> set[str]:
    script = f"source {COMPLETION / 'portwatchctl.fish'}; complete -C {line!r}"
    result = subprocess.run(
        ["fish", "--no-config", "-c", script],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return {row.split("\t", 1)[0] for row in result.stdout.splitlines() if row}


SHELLS = {"zsh": zsh_offers, "fish": fish_offers}


@pytest.fixture(params=sorted(SHELLS))
def offers(request: pytest.FixtureRequest) -> object:
    shell = request.param
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed (apt-get install {shell})")
    return SHELLS[shell]


def test_every_command_and_option_is_offered(offers: object) -> None:
    complete = offers
    assert callable(complete)
    options = _options_by_command()
    assert complete("portwatchctl ") == set(ctl.COMMANDS)
    assert complete("portwatchctl --") == options[""]
    for command in ctl.COMMANDS:
        assert complete(f"portwatchctl {command} --") == options[command], command
        after_socket = complete(f"portwatchctl --socket /tmp/x {command} --")
        assert after_socket == options[command], command


def test_option_values_are_offered(offers: object) -> None:
    complete = offers
    assert callable(complete)
    assert complete("portwatchctl events --type ") == set(EVENT_TYPES)
    assert complete("portwatchctl events --proto ") == {"tcp", "udp"}
    assert complete("portwatchctl scan --backend ") == {"auto", "netlink", "proc"}
    since = complete("portwatchctl events --since ")
    assert {"yesterday", "today", "-1h"} <= since
    assert all(ctl_parser.parse_time_argument(value) for value in since)  # each one is taken
    assert complete("portwatchctl events --until ") == since
