"""Reload applied part by part, with one truthful outcome: the runner's
reload step on real parts (event store, journal writer, netlink scanner in
a private network namespace), the new configuration read from a real file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from portwatchd.classify import Judge
from portwatchd.config import Config, load_config
from portwatchd.engine import Engine
from portwatchd.log import EventLog
from portwatchd.lookup import InlineLookup
from portwatchd.model import Event, Loss
from portwatchd.notify import Notifier
from portwatchd.outputs.journal_writer import JournalWriter
from portwatchd.reactor import Reactor
from portwatchd.reload import Reloader
from portwatchd.runner import Runner
from portwatchd.sources.base import Scanner, SourceUnavailable
from portwatchd.sources.choose import open_scanner
from portwatchd.sources.owners import OwnerResolver
from portwatchd.store import Store


class Lines:
    """A sink that keeps what the writer thread sends."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def event(self, event: Event) -> None:
        pass

    def loss(self, loss: Loss) -> None:
        pass

    def log(self, priority: int, message: str, **fields: str) -> None:
        self.lines.append(message)


def refusing_proc(config: Config) -> Scanner:
    """The host's scanner as daemon.py opens it, but /proc refused, as a
    sandbox without procfs access would."""
    if config.backend == "proc":
        raise SourceUnavailable("/proc/self/net/tcp: Permission denied", source="proc")
    return open_scanner(config.backend)


@pytest.fixture
def runner(netns: None, tmp_path: Path) -> Iterator[Runner]:
    config_path = tmp_path / "portwatchd.toml"
    config_path.write_text('backend = "netlink"\n')
    config = load_config(str(config_path))
    reactor = Reactor()
    log = EventLog(Store.open(str(tmp_path / "state")), history_size=100, history_max_age_s=None)
    writer = JournalWriter(Lines(), log, reactor)
    engine = Engine(
        scanner=open_scanner("netlink"),
        log=log,
        lookup=InlineLookup(OwnerResolver()),
        judge=Judge(ignored=config.is_ignored),
        say=writer.say,
    )
    reloader = Reloader(
        read_config=lambda: load_config(str(config_path)),
        open_scanner=refusing_proc,
        open_control=lambda _config, _passed: pytest.fail("no [socket] change here"),
        control_inherited=False,
        state_dir=str(tmp_path / "state"),
    )
    runner = Runner(
        config,
        engine=engine,
        log=log,
        writer=writer,
        reloader=reloader,
        notifier=Notifier(send=lambda _message: None),
        reactor=reactor,
    )
    runner.config_path = config_path  # type: ignore[attr-defined]
    yield runner
    writer.close(1.0)
    engine.close()
    log.close()
    reactor.close()


def test_a_backend_that_will_not_open_leaves_the_old_one_and_the_rest_applied(
    runner: Runner,
) -> None:
    runner.config_path.write_text('backend = "proc"\nhistory_size = 7\n')  # type: ignore[attr-defined]
    outcome = runner.reloader.reload(runner)
    assert outcome["outcome"] == "partial" and outcome["ok"] is False
    [reason] = outcome["not_applied"]
    assert reason.startswith("backend: cannot switch to proc") and "Permission denied" in reason
    # What runs is what the configuration and status say: netlink, and the new history size.
    assert runner.config.backend == "netlink" and runner.engine.scanner.name == "netlink"
    assert runner.config.history_size == 7 and runner.log.history_size == 7
    status = runner.status()
    assert status["backend"] == "netlink" and status["history_capacity"] == 7
    assert status["last_reload"]["outcome"] == "partial"
    assert "reload partial: backend: cannot switch to proc" in runner.status_line()


def test_a_refused_file_changes_nothing_and_the_next_good_one_clears_it(runner: Runner) -> None:
    path = runner.config_path  # type: ignore[attr-defined]
    path.write_text('backend = "netlink"\n\ninterval = 0\n')
    refused = runner.reloader.reload(runner)
    assert refused["outcome"] == "refused" and f"{path}:3" in refused["error"]
    assert runner.config.interval == Config().interval
    assert "reload refused" in runner.status_line()
    path.write_text('backend = "netlink"\ninterval = 2\n')
    good = runner.reloader.reload(runner)
    assert (good["outcome"], good["not_applied"]) == ("ok", [])
    assert runner.config.interval == 2
    assert "reload" not in runner.status_line()


def test_keys_that_apply_at_restart_are_named_not_pretended(runner: Runner, tmp_path: Path) -> None:
    runner.config_path.write_text(  # type: ignore[attr-defined]
        f'backend = "netlink"\nstate_dir = "{tmp_path / "elsewhere"}"\n'
    )
    outcome = runner.reloader.reload(runner)
    assert outcome["outcome"] == "partial"
    assert outcome["not_applied"] == ["state_dir: applies at the next restart"]
    assert runner.status()["state_dir"] == str(tmp_path / "state")
