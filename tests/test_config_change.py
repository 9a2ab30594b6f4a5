from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from portwatchd.config import Config, SocketConfig, load_config
from portwatchd.config_change import PARTS, RESTART_ONLY, diff_config
from portwatchd.expect import ExpectRule
from portwatchd.policy import IgnoreRule


def test_the_same_configuration_changes_nothing() -> None:
    change = diff_config(Config(), Config())
    assert change.is_empty
    assert (change.keys, change.parts, change.restart_only) == ((), (), ())
    assert change.describe() == "no change"


def test_where_a_file_was_read_from_is_not_a_change(tmp_path: Path) -> None:
    path = tmp_path / "portwatchd.toml"
    path.write_text("ring_size = 10000\n")
    loaded = load_config(str(path))
    assert loaded.warnings and loaded.source
    assert diff_config(Config(), loaded).is_empty


@pytest.mark.parametrize(
    ("new", "keys", "parts", "described"),
    [
        (Config(interval=2), ("interval",), ("interval",), "interval auto -> 2s"),
        (Config(interval=0.5), ("interval",), ("interval",), "interval auto -> 0.5s"),
        (Config(backend="proc"), ("backend",), ("backend",), "backend auto -> proc"),
        (Config(owners=False), ("owners",), ("owners",), "owners true -> false"),
        (Config(history_size=5), ("history_size",), ("history",), "history_size 10000 -> 5"),
        (
            Config(history_max_age_s=86400.0),
            ("history_max_age",),
            ("history",),
            "history_max_age none -> 86400s",
        ),
        (
            Config(socket=SocketConfig(path="/run/x.sock", mode=0o600)),
            ("socket.path", "socket.mode"),
            ("socket",),
            "socket.path /run/portwatchd/control.sock -> /run/x.sock, socket.mode 0660 -> 0600",
        ),
        (
            Config(socket=SocketConfig(group="adm")),
            ("socket.group",),
            ("socket",),
            'socket.group "" -> adm',
        ),
        (
            Config(ignore=(IgnoreRule(ports=((22, 22),)),)),
            ("ignore",),
            ("ignore",),
            "ignore rules 0 -> 1 (changed)",
        ),
        (
            Config(state_dir="/srv"),
            ("state_dir",),
            (),
            "state_dir applies at the next restart",
        ),
    ],
)
def test_each_part_is_named(
    new: Config, keys: tuple[str, ...], parts: tuple[str, ...], described: str
) -> None:
    change = diff_config(Config(), new)
    assert change.keys == keys
    assert change.parts == parts
    assert change.describe() == described
    assert change.old == Config() and change.new == new
    for part in PARTS:
        assert change.changes(part) == (part in parts)


def test_restart_only_keys_are_named_apart() -> None:
    new = Config(
        interval=3, state_dir="/srv", log_target="stderr", log_format="json", realtime=False
    )
    change = diff_config(Config(), new)
    assert change.parts == ("interval",)
    assert change.restart_only == RESTART_ONLY
    assert change.describe() == (
        "interval auto -> 3s; state_dir, log_target, log_format, realtime apply at the next restart"
    )


def test_parts_come_in_the_order_to_apply_them() -> None:
    new = Config(
        interval=2,
        restart_grace=0,
        backend="netlink",
        owners=False,
        history_size=7,
        metrics_textfile="/run/metrics/portwatchd.prom",
        socket=SocketConfig(max_clients=3),
        ignore=(IgnoreRule(proto="udp"),),
        expect=(ExpectRule(ports=((22, 22),)),),
        namespaces="host",
    )
    assert diff_config(Config(), new).parts == PARTS


def test_a_rule_moved_to_another_file_or_line_is_not_a_change() -> None:
    old = Config(ignore=(IgnoreRule(ports=((22, 22),), line=3, source="/etc/a.toml"),))
    new = Config(ignore=(IgnoreRule(ports=((22, 22),), line=9, source="/etc/b.toml"),))
    assert not diff_config(old, new).changes("ignore")
    reordered = replace(new, ignore=(*new.ignore, IgnoreRule(proto="udp")))
    assert diff_config(old, reordered).keys == ("ignore",)


def test_a_reload_from_files_is_diffed(tmp_path: Path) -> None:
    path = tmp_path / "portwatchd.toml"
    path.write_text("interval = 1\n")
    old = load_config(str(path))
    path.write_text('interval = 2\nhistory_max_age = "30d"\n[socket]\nidle_timeout = 5\n')
    change = diff_config(old, load_config(str(path)))
    assert change.parts == ("interval", "history", "socket")
    assert change.describe() == (
        "interval 1s -> 2s, history_max_age none -> 2592000s, socket.idle_timeout 60s -> 5s"
    )
