"""Other network namespaces under the real unit: containers, `ip netns`, [[expect]].

What these prove is what the unit lets the daemon do: enter another
network namespace (CAP_SYS_ADMIN, RestrictNamespaces=net), read another
process's /proc/PID/ns/net and cgroup (CAP_SYS_PTRACE under
ProtectProc=invisible), see a namespace mounted by `ip netns add` after it
started; and that the fields an operator filters the journal on arrive
there as documented.

On a real host systemd makes every mount shared at boot, so a mount made
under /run/netns after the daemon started reaches the daemon's own mount
namespace (a slave of the host's, made by ProtectSystem= and friends).
systemd skips that step in a container, which is what the sandbox looks
like to it; the fixture below does it instead, inside the sandbox's own
mount namespace only.
"""

from __future__ import annotations

import re
import textwrap
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

import pytest

from tests.system.sandbox import Sandbox
from tests.system.test_service import (
    LISTENER,
    MESSAGE_ID_OPENED,
    UNIT,
    config_file,
    journal,
    listening,
    systemctl,
    wait_for,
    wait_for_entry,
)

pytestmark = pytest.mark.system

MESSAGE_ID_UNEXPECTED = "b57b91eed7d34acebf1d275784ebe20c"
NETNS_PORT = re.compile(r"net:(\d+)/(.+)")


@pytest.fixture(scope="module")
def shared_box(box: Sandbox) -> Sandbox:
    """The sandbox with its mounts shared, as on a booted host, and the daemon
    started afterwards so its mount namespace receives later mounts."""
    box.run("mount", "--make-rshared", "/")
    systemctl(box, "restart")
    return box


def netns_inode(box: Sandbox, pid: str) -> str:
    link = box.run("readlink", f"/proc/{pid}/ns/net").stdout.strip()
    found = re.fullmatch(r"net:\[(\d+)\]", link)
    assert found, link
    return found.group(1)


def listener_command(*specs: str) -> list[str]:
    return ["/usr/bin/python3", "-c", LISTENER, *specs]


@contextmanager
def in_container_scope(box: Sandbox, container_id: str, *specs: str) -> Iterator[str]:
    """Hold sockets in a new network namespace, in a scope named as Docker
    names its containers' scopes; yield the scope's name.

    `systemd-run --scope` stays in the foreground until its command ends, so
    a transient service runs it: the scope outlives nothing of the test's.
    """
    scope = f"docker-{container_id}.scope"
    launcher = f"pw-launch-{container_id[:8]}.service"
    box.run(
        "systemd-run",
        f"--unit={launcher}",
        "--quiet",
        "systemd-run",
        "--scope",
        f"--unit={scope}",
        "--quiet",
        "unshare",
        "--net",
        *listener_command(*specs),
    )
    try:
        yield scope
    finally:
        box.run("systemctl", "stop", scope, launcher, check=False)


@contextmanager
def ip_netns(box: Sandbox) -> Iterator[tuple[str, str]]:
    """A namespace made by `ip netns add`; yield its name and inode."""
    name = f"pw{uuid.uuid4().hex[:8]}"
    box.run("ip", "netns", "add", name)
    try:
        yield name, box.run("stat", "-L", "-c", "%i", f"/run/netns/{name}").stdout.strip()
    finally:
        box.run("ip", "netns", "del", name, check=False)


def listening_in_netns(box: Sandbox, name: str, *specs: str) -> AbstractContextManager[str]:
    """Hold sockets inside the `ip netns` namespace `name`; yield the service."""
    return listening(box, *specs, inside=("ip", "netns", "exec", name))


def entry_for_port(box: Sandbox, event: str, suffix: str) -> dict[str, str] | None:
    """The one `event` entry whose PORT is some namespace's `suffix`."""
    matches = [
        entry
        for entry in journal(box, f"PORT_EVENT={event}")
        if (found := NETNS_PORT.fullmatch(entry.get("PORT", ""))) and found.group(2) == suffix
    ]
    assert len(matches) <= 1, matches
    return matches[0] if matches else None


def socket_namespaces(box: Sandbox, pid: int) -> set[str]:
    """The network namespace inode of every socket process `pid` holds.

    pidfd_getfd(2) copies each socket; ioctl SIOCGSKNS opens the namespace
    the socket was made in, whatever namespace its holder is in.
    """
    script = textwrap.dedent(
        f"""
        import ctypes, fcntl, os
        libc = ctypes.CDLL(None, use_errno=True)
        SYS_PIDFD_GETFD, SIOCGSKNS = 438, 0x894C
        pidfd = os.pidfd_open({pid})
        for name in os.listdir("/proc/{pid}/fd"):
            try:
                if not os.readlink(f"/proc/{pid}/fd/{{name}}").startswith("socket:"):
                    continue
            except OSError:
                continue
            copy = libc.syscall(SYS_PIDFD_GETFD, pidfd, int(name), 0)
            if copy < 0:
                continue
            ns = fcntl.ioctl(copy, SIOCGSKNS)
            print(os.fstat(ns).st_ino)
            os.close(ns)
            os.close(copy)
        """
    )
    return set(box.run("python3", "-c", script).stdout.split())


def messages_naming(box: Sandbox, text: str) -> list[str]:
    """The daemon's log lines that contain `text`, oldest first."""
    return [entry["MESSAGE"] for entry in journal(box) if text in entry.get("MESSAGE", "")]


def daemon_pid(box: Sandbox) -> int:
    out = box.run("systemctl", "show", UNIT, "--property=MainPID", "--value").stdout
    return int(out)


# -- the tests ----------------------------------------------------------------


def test_a_listener_in_a_docker_scope_carries_its_container(shared_box: Sandbox) -> None:
    box = shared_box
    container_id = uuid.uuid4().hex + uuid.uuid4().hex
    with in_container_scope(box, container_id, "tcp:0.0.0.0:18601"):
        opened = wait_for(
            lambda: entry_for_port(box, "opened", "tcp:0.0.0.0:18601"),
            "the container's listener to be journaled",
        )
        inode = netns_inode(box, opened["PORT_PID"])
        cgroup = box.read_file(f"/proc/{opened['PORT_PID']}/cgroup")
        assert f"docker-{container_id}.scope" in cgroup, cgroup

    host_inode = netns_inode(box, "1")
    assert inode != host_inode
    expected = {
        "PORT": f"net:{inode}/tcp:0.0.0.0:18601",
        "PORT_NETNS": inode,
        "PORT_CONTAINER": container_id,
        "PORT_CONTAINER_RUNTIME": "docker",
        "PORT_SCOPE": "container",
        "PORT_COMM": "python3",
    }
    assert {key: opened.get(key) for key in expected} == expected, opened
    assert container_id[:12] in opened["MESSAGE"], opened["MESSAGE"]


def test_the_unit_lets_the_daemon_enter_a_namespace_made_while_it_runs(
    shared_box: Sandbox,
) -> None:
    # setns(2) needs CAP_SYS_ADMIN and passes RestrictNamespaces=net only:
    # with `yes` the daemon would say it reads the namespace "through /proc".
    box = shared_box
    with ip_netns(box) as (name, inode):
        said = wait_for(
            lambda: messages_naming(box, f"network namespace {inode}"),
            f"the daemon to start watching the namespace {name}",
        )
        assert said == [f"watching network namespace {inode} ({name})"]


def delete_with_its_listener(box: Sandbox, name: str, unit: str) -> None:
    """The namespace goes: its mount first, then the only process in it."""
    box.run("sh", "-c", f"ip netns del {name} && systemctl kill -s KILL {unit}")


def test_an_ip_netns_listener_is_named_and_closed_with_its_namespace(
    shared_box: Sandbox,
) -> None:
    box = shared_box
    with ip_netns(box) as (name, inode), listening_in_netns(box, name, "tcp:0.0.0.0:18602") as unit:
        key = f"net:{inode}/tcp:0.0.0.0:18602"
        opened = wait_for_entry(box, "PORT_EVENT=opened", f"PORT={key}")
        assert (opened["PORT_NETNS"], opened["PORT_NETNS_NAME"]) == (inode, name), opened
        assert opened["PORT_UNIT"] == unit
        assert inode in socket_namespaces(box, daemon_pid(box))
        delete_with_its_listener(box, name, unit)

    # The kill closed it: the destroy message from inside the namespace says so.
    closed = wait_for_entry(box, "PORT_EVENT=closed", f"PORT={key}")
    assert (closed["PORT_DETECTED"], closed["PORT_NETNS"]) == ("destroy", inode), closed
    assert closed["PORT_NETNS_NAME"] == name, closed
    # Its sockets are released: nothing keeps the namespace alive.
    wait_for(
        lambda: inode not in socket_namespaces(box, daemon_pid(box)),
        f"the daemon to close its sockets in the namespace {inode}",
    )


def test_a_namespace_gone_between_two_polls_closes_its_listeners_with_the_reason(
    shared_box: Sandbox,
) -> None:
    # Polling only: nothing tells the close but the namespace's disappearance.
    box = shared_box
    try:
        with config_file(box, "realtime = false\n"):
            systemctl(box, "restart")
            with (
                ip_netns(box) as (name, inode),
                listening_in_netns(box, name, "tcp:0.0.0.0:18605") as unit,
            ):
                key = f"net:{inode}/tcp:0.0.0.0:18605"
                wait_for_entry(box, "PORT_EVENT=opened", f"PORT={key}")
                delete_with_its_listener(box, name, unit)
            closed = wait_for_entry(box, "PORT_EVENT=closed", f"PORT={key}")
    finally:
        systemctl(box, "restart")  # the configuration as it was: real time again
    assert closed["PORT_REASON"] == "its network namespace is gone", closed
    # `journalctl PORT_NETNS_NAME=...` finds the close beside the open.
    assert closed.get("PORT_NETNS_NAME") == name, closed


EXPECT_ONE_PORT = """\
[[expect]]
port = 18603
proto = "tcp"
"""


def test_an_unexpected_listener_is_a_warning_with_its_own_message_id(
    shared_box: Sandbox,
) -> None:
    box = shared_box
    with config_file(box, EXPECT_ONE_PORT):
        box.run("systemctl", "reload", UNIT)
        with listening(box, "tcp:0.0.0.0:18603", "tcp:0.0.0.0:18604"):
            accepted = wait_for_entry(box, "PORT_EVENT=opened", "PORT=tcp:0.0.0.0:18603")
            unexpected = wait_for_entry(box, "PORT_EVENT=opened", "PORT=tcp:0.0.0.0:18604")

    assert {key: accepted.get(key) for key in ("MESSAGE_ID", "PORT_EXPECTED")} == {
        "MESSAGE_ID": MESSAGE_ID_OPENED,
        "PORT_EXPECTED": "1",
    }, accepted
    assert int(accepted["PRIORITY"]) > 4, accepted
    assert {key: unexpected.get(key) for key in ("MESSAGE_ID", "PORT_EXPECTED", "PRIORITY")} == {
        "MESSAGE_ID": MESSAGE_ID_UNEXPECTED,
        "PORT_EXPECTED": "0",
        "PRIORITY": "4",
    }, unexpected
    # journalctl -p warning is how an operator finds them.
    warnings = journal(box, "-p", "warning", "PORT_EVENT=opened")
    assert [entry["PORT"] for entry in warnings] == ["tcp:0.0.0.0:18604"]
