"""Boot a real systemd as PID 1 in a throw-away root, and run commands in it.

The root is an overlay whose lower layer is the host's own `/` and whose
upper layer lives on a tmpfs inside a private mount namespace: everything
the sandbox writes (an installed package, a unit, the journal) vanishes
when its PID 1 is killed, and nothing reaches the host's disk. The host's
files, the repository included, are visible read-only through the lower
layer, so a test can `make install` from the work tree with no network.

    with Sandbox() as box:          # start(): returns once systemd is up
        box.run("systemctl", "start", "portwatchd")
        print(box.run("journalctl", "-u", "portwatchd").stdout)

Why each step is there:
- `unshare --pid --fork --kill-child`: systemd must be PID 1 of its own PID
  namespace, and must die with the unshare process if the test dies.
- `--net`: a private network namespace (only lo), so the ports the tests
  open and the ones the daemon sees are the sandbox's alone; there is no
  network in it, hence install from local files only.
- `mount --make-rprivate /`: mounts made inside never propagate to the host,
  and pivot_root(2) refuses a shared parent mount.
- An overlay of `/` alone: overlayfs does not follow the host's submounts,
  so /proc, /sys, /dev, /run and /tmp are mounted afresh (a tmpfs for /run
  and /tmp: `systemd-tmpfiles --boot` empties /tmp, which must never be the
  host's).
- Units the host image enables but a test does not need are masked, for a
  boot in about half a second and a `degraded` state that means something.
- Its own cgroup and `--cgroup` namespace, and pure cgroup v2 inside
  (SYSTEMD_PROC_CMDLINE stands in for the kernel command line): the
  sandbox's systemd manages only its own subtree, so it never touches the
  host's cgroups and two sandboxes (two test runs) never meet.
- `exec`: systemd replaces the shell and becomes PID 1.
- `setpriv --pdeathsig KILL`: if the test process dies, the sandbox dies too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType

SYSTEMD = "/lib/systemd/systemd"

# Enabled in a Debian 12 image, useless in a test root, and some of them
# slow or fail there (getty has no tty, timesyncd has no network).
UNITS_TO_MASK = (
    "getty.target",
    "getty@tty1.service",
    "console-getty.service",
    "timers.target",
    "postgresql.service",
    "e2scrub_reap.service",
    "remote-fs.target",
    "systemd-timesyncd.service",
    "systemd-pstore.service",
    "systemd-firstboot.service",
    "systemd-repart.service",
    "systemd-binfmt.service",
    "proc-sys-fs-binfmt_misc.automount",
    "systemd-modules-load.service",
    "systemd-machine-id-commit.service",
    "systemd-random-seed.service",
    "systemd-ask-password-wall.path",
    "systemd-ask-password-console.path",
    "sys-kernel-config.mount",
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
    "sys-fs-fuse-connections.mount",
    "dev-hugepages.mount",
    "dev-mqueue.mount",
    "kmod-static-nodes.service",
    "systemd-networkd-wait-online.service",
)

# Runs as PID 1 of the new namespaces, in a shell, until it execs systemd.
# `set -e` matters: if any step fails the script must exit, never go on to
# exec systemd on the host's real root.
_BOOT_SCRIPT = r"""
set -eu
name=$1; shift
mount --make-rprivate /
# The mount point only exists in this mount namespace's view; the host's
# /tmp is untouched.
mount -t tmpfs -o mode=0755 sandbox /tmp
mkdir /tmp/upper /tmp/work /tmp/root
mount -t overlay overlay \
    -o lowerdir=/,upperdir=/tmp/upper,workdir=/tmp/work /tmp/root
cd /tmp/root
mount --rbind /dev dev
mount -t proc proc proc
mount --rbind /sys sys
# Hide the host's cgroup trees: systemd mounts its own cgroup2 there, seen
# through the cgroup namespace, so it manages only the sandbox's subtree.
umount -l sys/fs/cgroup
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs run
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs tmp
for unit in "$@"; do
    ln -sfn /dev/null "etc/systemd/system/$unit"
done
echo "$name" >etc/hostname
mkdir -p .oldroot
pivot_root . .oldroot
cd /
umount -l /.oldroot
rmdir /.oldroot
# Last guard before systemd: this must be the overlay, never the host.
[ "$(findmnt -n -o FSTYPE /)" = overlay ] || { echo "sandbox: / is not the overlay" >&2; exit 1; }
hostname "$name"
exec env -i container="$name" PATH="$PATH" \
    SYSTEMD_PROC_CMDLINE="systemd.unified_cgroup_hierarchy=1" \
    "$systemd" --system --unit=multi-user.target
"""


# Runs in the host's namespaces: moves itself into the sandbox's own cgroup,
# then becomes unshare, whose forked child runs _BOOT_SCRIPT as PID 1. The
# new cgroup namespace is rooted at that cgroup, so the sandbox's systemd
# sees and manages only its own subtree: two sandboxes never meet, and the
# host's cgroup tree is not touched.
_ENTER_SCRIPT = r"""
set -eu
cgroup=$1; shift
echo $$ >"$cgroup/cgroup.procs"
exec unshare --pid --fork --kill-child --mount --uts --ipc --net --cgroup \
    sh -c "$boot_script" sandbox-boot "$@"
"""

_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CGROUP2_ROOT = "/sys/fs/cgroup/unified"


def _cgroup2_mount() -> str | None:
    """Where the host's cgroup v2 tree is mounted (hybrid or unified layout)."""
    for candidate in (CGROUP2_ROOT, "/sys/fs/cgroup"):
        if os.path.exists(os.path.join(candidate, "cgroup.controllers")):
            return candidate
    return None


def _own_cgroup() -> str | None:
    """The host path of our own cgroup v2 directory, where sandboxes go."""
    mount = _cgroup2_mount()
    if mount is None:
        return None
    own = "/"
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            own = line[3:]
    return mount.rstrip("/") + own


def _make_cgroup(name: str) -> str:
    """A fresh cgroup v2 directory for one sandbox, below our own cgroup."""
    parent = _own_cgroup()
    if parent is None:
        raise SandboxError("no cgroup v2 hierarchy is mounted")
    _remove_orphaned_cgroups(parent)
    path = os.path.join(parent, f"sandbox-{name}-{os.getpid()}-{time.monotonic_ns()}")
    os.mkdir(path)
    return path


def _remove_orphaned_cgroups(parent: str) -> None:
    """Remove the empty cgroups of sandboxes whose test process was killed.

    A name carries the PID of the process that made it; while that process
    lives, its sandbox may be in use (another test run), so it is left alone.
    """
    for entry in Path(parent).glob("sandbox-*-*-*"):
        try:
            owner = int(entry.name.rsplit("-", 2)[1])
        except ValueError:
            continue
        if not os.path.exists(f"/proc/{owner}"):
            with contextlib.suppress(OSError):
                _remove_cgroup(str(entry), timeout=0)


def _remove_cgroup(path: str, timeout: float = 10.0) -> None:
    """Remove a sandbox's cgroup tree once its processes have died."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            for directory, _subdirs, _files in os.walk(path, topdown=False):
                os.rmdir(directory)
            return
        except FileNotFoundError:
            return
        except OSError:
            # EBUSY: a killed process is not reaped yet.
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class SandboxError(RuntimeError):
    """The sandbox could not boot, or a command in it failed."""


def sandbox_unavailable_reason() -> str | None:
    """Why a systemd sandbox cannot be booted here, or None if it can."""
    if os.geteuid() != 0:
        return "needs root to create namespaces and mounts"
    for tool in ("unshare", "nsenter", "pivot_root", "findmnt", "setpriv"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (util-linux)"
    if not os.access(SYSTEMD, os.X_OK):
        return f"{SYSTEMD} is missing (Debian package systemd)"
    with open("/proc/filesystems", encoding="ascii") as filesystems:
        if "overlay" not in filesystems.read():
            return "the kernel has no overlay filesystem"
    cgroup = _own_cgroup()
    if cgroup is None:
        return "no cgroup v2 hierarchy is mounted (needed for the sandbox's own cgroup)"
    if not os.access(cgroup, os.W_OK):
        return f"cannot create a cgroup for the sandbox: {cgroup} is not writable"
    probe = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount", "--net", "--cgroup", "true"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        return f"unshare refused new namespaces: {probe.stderr.strip()}"
    return None


def _child_pid(parent: int) -> int | None:
    """The first child of `parent` (unshare's forked child: the future PID 1)."""
    try:
        children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if children else None


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


class Sandbox:
    """A systemd booted in a throw-away overlay root; see the module docstring."""

    def __init__(self, name: str = "pwtest", boot_timeout: float = 30.0) -> None:
        self.name = name
        self.boot_timeout = boot_timeout
        self._unshare: subprocess.Popen[str] | None = None
        self._pid1: int | None = None
        self._cgroup: str | None = None

    # -- life cycle ---------------------------------------------------------

    def start(self) -> None:
        """Boot systemd; return once `is-system-running` says running or degraded."""
        if self._unshare is not None:
            raise SandboxError("sandbox already started")
        self._cgroup = _make_cgroup(self.name)
        self._unshare = subprocess.Popen(
            [
                # If the test process dies, SIGKILL this one (the signal is
                # kept across the exec into unshare, whose --kill-child then
                # takes the sandbox's PID 1 down): no systemd is left behind.
                "setpriv",
                "--pdeathsig",
                "KILL",
                "sh",
                "-c",
                _ENTER_SCRIPT,
                "sandbox-enter",
                self._cgroup,
                self.name,
                *UNITS_TO_MASK,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            env={"PATH": _PATH, "systemd": SYSTEMD, "boot_script": _BOOT_SCRIPT},
        )
        try:
            self._pid1 = self._wait_for_systemd()
            self._wait_until_running()
        except BaseException:
            self.stop()
            raise

    def _wait_for_systemd(self) -> int:
        assert self._unshare is not None
        deadline = time.monotonic() + self.boot_timeout
        while time.monotonic() < deadline:
            if self._unshare.poll() is not None:
                output = self._unshare.stdout.read() if self._unshare.stdout else ""
                raise SandboxError(
                    f"sandbox boot failed (exit {self._unshare.returncode}): {output.strip()}"
                )
            pid = _child_pid(self._unshare.pid)
            if pid is not None and _comm(pid) == "systemd":
                return pid
            time.sleep(0.02)
        raise SandboxError(f"systemd did not start within {self.boot_timeout}s")

    def _wait_until_running(self) -> None:
        deadline = time.monotonic() + self.boot_timeout
        state = ""
        while time.monotonic() < deadline:
            result = self.run("systemctl", "is-system-running", check=False, timeout=10)
            state = result.stdout.strip()
            if state in ("running", "degraded"):
                return
            time.sleep(0.05)
        failed = self.run("systemctl", "--failed", "--no-legend", check=False).stdout
        raise SandboxError(
            f"systemd in the sandbox did not finish booting within {self.boot_timeout}s "
            f"(state {state!r}); failed units:\n{failed}"
        )

    def stop(self) -> None:
        """Kill PID 1: everything inside dies and the mounts go with it."""
        if self._pid1 is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid1, signal.SIGKILL)
            self._pid1 = None
        if self._unshare is not None:
            try:
                self._unshare.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._unshare.kill()
                self._unshare.wait()
            if self._unshare.stdout:
                self._unshare.stdout.close()
            self._unshare = None
        if self._cgroup is not None:
            _remove_cgroup(self._cgroup)
            self._cgroup = None

    def __enter__(self) -> Sandbox:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- using it -----------------------------------------------------------

    @property
    def pid1(self) -> int:
        """Host PID of the sandbox's systemd."""
        if self._pid1 is None:
            raise SandboxError("sandbox is not running")
        return self._pid1

    @property
    def root(self) -> str:
        """A host path to the sandbox's root directory, for reading its files."""
        return f"/proc/{self.pid1}/root"

    def path(self, inside: str) -> str:
        """The host path of `inside`, a path within the sandbox."""
        return self.root + "/" + inside.lstrip("/")

    def run(
        self,
        *cmd: str,
        check: bool = True,
        input: str | None = None,  # the name subprocess.run uses
        timeout: float = 60,
        user: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run `cmd` inside every namespace of the sandbox; as `user` if given.

        The command is exec'd by nsenter, not wrapped in a shell, so a
        daemon started this way is the process systemd sees.
        """
        argv = ["nsenter", "-t", str(self.pid1), "-a", "--"]
        if user is not None:
            argv += ["runuser", "-u", user, "--"]
        argv += list(cmd)
        result = subprocess.run(
            argv,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={"PATH": _PATH, "LANG": "C.UTF-8", "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"},
        )
        if check and result.returncode != 0:
            raise SandboxError(
                f"in sandbox: {' '.join(cmd)} exited {result.returncode}\n"
                f"stdout: {result.stdout.strip()}\nstderr: {result.stderr.strip()}"
            )
        return result

    def copy_in(self, src: str, dst: str) -> None:
        """Copy the host file or directory `src` to `dst` inside the sandbox."""
        target = self.path(dst)
        if os.path.isdir(src):
            shutil.copytree(src, target, symlinks=True, dirs_exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copy2(src, target)

    def write_file(self, dst: str, text: str, mode: int = 0o644) -> None:
        """Create or replace the file `dst` inside the sandbox."""
        target = self.path(dst)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(target, mode)

    def read_file(self, inside: str) -> str:
        with open(self.path(inside), encoding="utf-8") as handle:
            return handle.read()
