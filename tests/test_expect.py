"""[[expect]] rules: matching, the config keys and their errors, suggest."""

from __future__ import annotations

import doctest
import socket
import textwrap
import tomllib
from pathlib import Path

import pytest

import portwatchd.expect as expect_module
from portwatchd.config import Config, ConfigError, check_config, load_config
from portwatchd.config_change import diff_config
from portwatchd.expect import ExpectRule, is_expected, suggest
from portwatchd.model import HOST_PLACE, Endpoint, Owner, Place
from portwatchd.sources.netlink import NetlinkScanner
from portwatchd.sources.owners import OwnerResolver

SSH = Endpoint("tcp", "ipv4", "0.0.0.0", 22)
SSHD = Owner(pid=10, pids=(10,), comm="sshd", exe="/usr/sbin/sshd", unit="ssh.service")
WEB_ID = "4f0c" * 16
WEB = Place(
    netns_inode=4026532281,
    netns_name="web",
    scope="container",
    container=WEB_ID,
    container_runtime="docker",
    exposure="private",
)


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "portwatchd.toml"
    path.write_text(textwrap.dedent(text))
    return str(path)


def rules_of(tmp_path: Path, text: str) -> tuple[ExpectRule, ...]:
    return load_config(write(tmp_path, text)).expect


def test_no_rules_means_no_judgement() -> None:
    assert is_expected((), SSH, SSHD, HOST_PLACE) is None
    assert Config().is_expected(SSH, SSHD, HOST_PLACE) is None


def test_a_rule_matches_when_every_key_it_sets_matches(tmp_path: Path) -> None:
    (rule,) = rules_of(tmp_path, '[[expect]]\nport = "20-25"\nproto = "tcp"\nprocess = "sshd"\n')
    assert rule.line == 1
    assert is_expected([rule], SSH, SSHD, HOST_PLACE) is True
    assert is_expected([rule], Endpoint("udp", "ipv4", "0.0.0.0", 22), SSHD, HOST_PLACE) is False
    assert is_expected([rule], Endpoint("tcp", "ipv4", "0.0.0.0", 26), SSHD, HOST_PLACE) is False
    assert is_expected([rule], SSH, Owner(pid=3, comm="dropbear"), HOST_PLACE) is False
    assert is_expected([rule], SSH, None, HOST_PLACE) is False


@pytest.mark.parametrize(
    "key",
    [
        'process = "sshd"',
        'process = "/usr/sbin/sshd"',
        'unit = "ssh*.service"',
        'address = "0.0.0.0/32"',
        'netns = "host"',
        'exposure = "public"',
    ],
)
def test_each_key_on_the_host(tmp_path: Path, key: str) -> None:
    rules = rules_of(tmp_path, f"[[expect]]\n{key}\n")
    place = Place(exposure="public")
    assert is_expected(rules, SSH, SSHD, place) is True
    other = Owner(pid=5, comm="nc", exe="/usr/bin/nc.openbsd", unit="x.service")
    other_place = Place(netns_inode=1, netns_name="lab", scope="container", exposure="loopback")
    assert is_expected(rules, Endpoint("tcp", "ipv4", "127.0.0.1", 22), other, other_place) is (
        False
    )


def test_a_process_is_its_name_or_its_executable_s(tmp_path: Path) -> None:
    java = Owner(pid=7, comm="java", exe="/usr/lib/jvm/bin/java")
    long_name = Owner(pid=8, comm="a-very-long-nam", exe="/opt/x/a-very-long-name-indeed")
    rules = rules_of(tmp_path, '[[expect]]\nprocess = "a-very-long-name-indeed"\n')
    assert is_expected(rules, SSH, long_name, HOST_PLACE) is True
    assert is_expected(rules, SSH, java, HOST_PLACE) is False
    assert is_expected(rules_of(tmp_path, '[[expect]]\nprocess="java"\n'), SSH, java, HOST_PLACE)


def test_container_by_id_short_id_or_name_and_netns_by_name(tmp_path: Path) -> None:
    for value in (WEB_ID, WEB_ID[:12], "web", "w*"):
        rules = rules_of(tmp_path, f'[[expect]]\ncontainer = "{value}"\n')
        assert is_expected(rules, SSH, SSHD, WEB) is True, value
        assert is_expected(rules, SSH, SSHD, HOST_PLACE) is False, value
    assert is_expected(rules_of(tmp_path, '[[expect]]\ncontainer = "4f0c"\n'), SSH, None, WEB) is (
        False
    )
    netns_rules = rules_of(tmp_path, '[[expect]]\nnetns = "web"\n')
    assert is_expected(netns_rules, SSH, None, WEB) is True
    assert is_expected(netns_rules, SSH, None, HOST_PLACE) is False
    host_rules = rules_of(tmp_path, '[[expect]]\nnetns = "host"\n')
    assert is_expected(host_rules, SSH, None, WEB) is False


@pytest.mark.parametrize(
    ("text", "line", "key", "message"),
    [
        ("[expect]\nport = 1", 1, "expect", "must be an array of tables ([[expect]]), got a table"),
        ("[[expect]]", 1, "expect[1]", "an empty rule would expect everything; give any of port"),
        ("[[expect]]\nport = 0", 2, "expect[1].port", "must be between 1 and 65535, got 0"),
        ('[[expect]]\nexposure = "lan"', 2, "expect[1].exposure", 'one of "loopback", "link-'),
        ('[[expect]]\nprocess = "bin/x"', 2, "expect[1].process", "or its absolute path"),
        ('[[expect]]\ncontainer = ""', 2, "expect[1].container", "must not be empty"),
        ("[[expect]]\nport = 1\n[[expect]]\nnetnz = 'a'", 4, "expect[2].netnz", "mean netns?"),
        ('namespaces = "some"', 1, "namespaces", 'must be one of "all", "host"'),
    ],
)
def test_errors_name_file_line_and_key(
    tmp_path: Path, text: str, line: int, key: str, message: str
) -> None:
    path = write(tmp_path, text)
    errors = check_config(path)
    assert len(errors) == 1
    assert isinstance(errors[0], ConfigError)
    assert (errors[0].source, errors[0].line, errors[0].key) == (path, line, key)
    assert message in errors[0].message


def test_namespaces_key_and_reload_diff(tmp_path: Path) -> None:
    assert Config().namespaces == "all"
    config = load_config(write(tmp_path, 'namespaces = "host"\n[[expect]]\nport = 22\n'))
    assert config.namespaces == "host"
    change = diff_config(Config(), config)
    assert change.keys == ("namespaces", "expect")
    assert change.parts == ("expect", "namespaces")
    assert "expect rules 0 -> 1" in change.describe()
    moved = load_config(write(tmp_path, 'namespaces = "host"\n\n\n[[expect]]\nport = 22\n'))
    assert diff_config(config, moved).is_empty


def test_suggest_is_a_stable_reviewable_baseline() -> None:
    rows = [
        (Endpoint("tcp", "ipv6", "::", 22), SSHD, HOST_PLACE),
        (SSH, SSHD, HOST_PLACE),
        (Endpoint("udp", "ipv4", "127.0.0.1", 53), Owner(pid=2, comm='we"ird\\'), HOST_PLACE),
        (Endpoint("tcp", "ipv4", "0.0.0.0", 80, netns=WEB.netns_inode), None, WEB),
    ]
    text = suggest(rows)
    assert text == suggest(list(reversed(rows)))
    assert text.startswith("# A baseline")
    parsed = tomllib.loads(text)["expect"]
    assert parsed == [
        {"port": 22, "proto": "tcp", "process": "sshd", "unit": "ssh.service"},
        {"port": 53, "proto": "udp", "process": 'we"ird\\'},
        {"port": 80, "proto": "tcp", "container": "web"},
    ]


def test_suggested_rules_accept_every_real_listener_now(netns: None, tmp_path: Path) -> None:
    held = []
    for kind, address in ((socket.SOCK_STREAM, "127.0.0.1"), (socket.SOCK_DGRAM, "0.0.0.0")):
        sock = socket.socket(socket.AF_INET, kind)
        sock.bind((address, 0))
        if kind == socket.SOCK_STREAM:
            sock.listen()
        held.append(sock)
    try:
        with NetlinkScanner() as scanner:
            endpoints = scanner.scan()
        owners = OwnerResolver().resolve([e.inode for e in endpoints])
        rows = [(e, owners[e.inode], HOST_PLACE) for e in endpoints]
        assert len(rows) == 2
        config = load_config(write(tmp_path, suggest(rows)))
        assert len(config.expect) == 2
        assert all(config.is_expected(*row) for row in rows)
        stranger = Endpoint("tcp", "ipv4", "127.0.0.1", 1)
        assert config.is_expected(stranger, owners[endpoints[0].inode], HOST_PLACE) is False
    finally:
        for sock in held:
            sock.close()


def test_doctests() -> None:
    failures, tried = doctest.testmod(expect_module)
    assert (failures, tried > 0) == (0, True)
