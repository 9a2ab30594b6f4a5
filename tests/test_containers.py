from __future__ import annotations

import doctest
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import portwatchd.containers as containers_module
from portwatchd.containers import Container, container_of
from portwatchd.sources.netns import read_cgroup

FIXTURES = Path(__file__).parent / "fixtures" / "cgroup"
DOCKER_ID = "4f0c1d2e3b4a5968778695a4b3c2d1e0f0e1d2c3b4a5968778695a4b3c2d1e0f"
PODMAN_ID = "9b1e2c3d4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c"
K8S_ID = "0d9c8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c"
CRIO_ID = "5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d"


@pytest.mark.parametrize(
    ("fixture", "expected"),
    [
        ("docker-systemd.txt", Container(DOCKER_ID, "docker")),
        ("docker-cgroupfs-v1.txt", Container(DOCKER_ID, "docker")),
        ("podman-rootless.txt", Container(PODMAN_ID, "podman")),
        ("podman-conmon.txt", Container(PODMAN_ID, "podman")),
        ("kubepods-containerd.txt", Container(K8S_ID, "containerd")),
        ("kubepods-crio.txt", Container(CRIO_ID, "crio")),
        ("kubepods-cgroupfs.txt", Container(K8S_ID, "kubernetes")),
        ("nspawn.txt", Container("web-1", "nspawn", "web-1")),
        ("lxc.txt", Container("db01", "lxc", "db01")),
        ("host-service.txt", None),
        ("host-session.txt", None),
    ],
)
def test_container_from_a_cgroup_file(fixture: str, expected: Container | None) -> None:
    assert container_of((FIXTURES / fixture).read_text()) == expected


def test_a_name_like_a_scope_that_is_not_one_is_no_container() -> None:
    assert container_of("0::/system.slice/docker.service\n") is None
    assert container_of("0::/system.slice/docker-" + "ab" * 31 + ".scope\n") is None  # 62 hex
    assert container_of("0::/system.slice/lxc-net.service\n") is None
    assert container_of("garbage\n\n0:") is None


def test_doctests() -> None:
    failures, tried = doctest.testmod(containers_module)
    assert (failures, tried > 0) == (0, True)


PIDS_HIERARCHY = Path("/sys/fs/cgroup/pids")


@pytest.fixture
def sleeper() -> Iterator[int]:
    process = subprocess.Popen(["sleep", "60"])
    yield process.pid
    process.kill()
    process.wait()


@pytest.mark.parametrize(
    ("cgroup", "expected"),
    [
        (f"system.slice/docker-{DOCKER_ID}.scope", Container(DOCKER_ID, "docker")),
        (f"machine.slice/libpod-{PODMAN_ID}.scope/container", Container(PODMAN_ID, "podman")),
        ("machine.slice/machine-web\\x2d1.scope/payload", Container("web-1", "nspawn", "web-1")),
        ("lxc.payload.db01/init.scope", Container("db01", "lxc", "db01")),
        ("system.slice/nginx.service", None),
    ],
)
def test_container_of_a_process_moved_into_a_real_cgroup(
    sleeper: int, cgroup: str, expected: Container | None
) -> None:
    if os.geteuid() != 0 or not os.access(PIDS_HIERARCHY, os.W_OK):
        pytest.skip(f"needs root and a writable cgroup v1 hierarchy at {PIDS_HIERARCHY}")
    top = PIDS_HIERARCHY / f"pwt{os.getpid()}"
    leaf = top / cgroup
    leaf.mkdir(parents=True)
    try:
        (leaf / "cgroup.procs").write_text(f"{sleeper}\n")
        text = read_cgroup(sleeper)
        assert text is not None
        assert f"/pwt{os.getpid()}/{cgroup}" in text
        assert container_of(text) == expected
    finally:
        (PIDS_HIERARCHY / "cgroup.procs").write_text(f"{sleeper}\n")
        for directory in sorted((p for p in top.rglob("*") if p.is_dir()), reverse=True):
            directory.rmdir()
        top.rmdir()
