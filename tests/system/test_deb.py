"""The Debian package, end to end.

Builds the package with scripts/deb.sh (which also runs lintian and fails on
any tag it shows at --pedantic -I), then a second time with a higher
version, and the 0.1.0 package from its commit, and drives the life of an
installation in a booted systemd sandbox: install (the postinst creates the
system user and enables and starts the service), events in the journal and
over the control socket, an upgrade that keeps the config, the state and
every event (from the tree's own package, and from 0.1.0, which ran as
root), an upgrade over a broken configuration, remove, purge.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from portwatchd.outputs.entries import MESSAGE_ID_OPENED
from tests.system.sandbox import Sandbox, sandbox_unavailable_reason

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[2]
# What scripts/deb.sh runs with, so that the checks below see the same tools.
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
# Left out of the copy of the tree that is rebuilt with a higher version.
NOT_SOURCE = frozenset(
    {".git", ".venv", "dist", "build", "run", ".pybuild", ".pytest_cache", ".mypy_cache"}
)

# A TCP listener on 127.0.0.1:<argv[1]>, kept open until its unit is stopped.
LISTENER = (
    "import socket, sys, time\n"
    "s = socket.socket()\n"
    "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('127.0.0.1', int(sys.argv[1])))\n"
    "s.listen()\n"
    "time.sleep(3600)\n"
)
# The daemon scans once a second by default; this is ample on a loaded runner.
EVENT_TIMEOUT_S = 30.0
CONFIG = "/etc/portwatchd/portwatchd.toml"
DROP_IN_README = "/etc/portwatchd/portwatchd.d/README"
STATE_DIR = "/var/lib/portwatchd"
# The system user and group the service runs as (sysusers.d).
SERVICE_USER = "portwatchd"
# The first release, as packaged (its debian/changelog says 0.1.0): it ran
# as root and made the group with addgroup.
RELEASE_0_1_0 = "49d511e"
ENABLEMENT_LINKS = (
    "/etc/systemd/system/multi-user.target.wants/portwatchd.service",
    "/etc/systemd/system/sockets.target.wants/portwatchd.socket",
)
OPERATOR_NOTE = "# Added by the operator: must survive the upgrade.\n"
# A port opened in the window between the old daemon's exit and the new
# one's start. "+" runs the hook outside the unit's hardening, which is
# there for the daemon, not for this test's hook. systemd itself binds the
# port (a transient socket unit), so it listens before the command returns.
DOWN_WINDOW_PORT = 18084
DOWN_WINDOW_DROPIN = "/etc/systemd/system/portwatchd.service.d/pwtest-down-window.conf"
DOWN_WINDOW_UNIT_TEXT = (
    "[Service]\n"
    "ExecStopPost=+/usr/bin/systemd-run --quiet --unit=pwtest-while-down"
    f" --socket-property=ListenStream=127.0.0.1:{DOWN_WINDOW_PORT} /bin/true\n"
)


@dataclass(frozen=True)
class Packages:
    first: Path  # built from the tree as it is
    upgrade: Path  # the same tree with a higher version in debian/changelog
    upgrade_version: str
    release_0_1_0: Path | None  # built from RELEASE_0_1_0; None without the git history


def build_unavailable_reason() -> str | None:
    if shutil.which("dpkg-buildpackage", path=SYSTEM_PATH) is None:
        return "dpkg-buildpackage is not installed (dpkg-dev): not a Debian system?"
    return None


def run_build(source: Path, out: Path, nocheck: bool) -> None:
    env = dict(os.environ)
    if nocheck:
        env["DEB_BUILD_OPTIONS"] = "nocheck"
    result = subprocess.run(
        [str(source / "scripts" / "deb.sh"), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if result.returncode != 0:
        # The tail holds the failing step: a test, dh_* or lintian's tags.
        output = (result.stdout + result.stderr)[-6000:]
        pytest.fail(f"scripts/deb.sh failed (exit {result.returncode}):\n{output}")


def changelog_version(source: Path) -> str:
    return subprocess.run(
        ["dpkg-parsechangelog", "-l", str(source / "debian" / "changelog"), "-S", "Version"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def copy_source_tree(dst: Path) -> None:
    def ignore(directory: str, names: list[str]) -> set[str]:
        at_top = Path(directory).resolve() == REPO
        return {
            name
            for name in names
            if (at_top and name in NOT_SOURCE)
            or name.endswith(".egg-info")
            or name in ("__pycache__", ".hypothesis", ".ruff_cache")
        }

    shutil.copytree(REPO, dst, symlinks=True, ignore=ignore)


def export_commit(commit: str, dst: Path) -> bool:
    """The tree of `commit` in `dst`; False when the clone lacks it (shallow, or no git)."""
    if shutil.which("git") is None:
        return False
    known = subprocess.run(
        ["git", "-C", str(REPO), "cat-file", "-e", f"{commit}^{{commit}}"],
        capture_output=True,
        check=False,
    )
    if known.returncode != 0:
        return False
    dst.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", commit],
        capture_output=True,
        check=True,
    )
    subprocess.run(["tar", "-C", str(dst), "-xf", "-"], input=archive.stdout, check=True)
    return True


def bump_version(source: Path, new_version: str) -> None:
    """Put a new top entry in debian/changelog, as `dch` would."""
    changelog = source / "debian" / "changelog"
    old = changelog.read_text(encoding="utf-8")
    trailer = next(line for line in old.splitlines() if line.startswith(" -- "))
    maintainer = trailer[len(" -- ") :].split("  ")[0]
    date = datetime.datetime.now(datetime.UTC).strftime("%a, %d %b %Y %H:%M:%S +0000")
    entry = (
        f"portwatchd ({new_version}) bookworm; urgency=medium\n\n"
        "  * Rebuild with a higher version, to test upgrades.\n\n"
        f" -- {maintainer}  {date}\n\n"
    )
    changelog.write_text(entry + old, encoding="utf-8")


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> Packages:
    reason = build_unavailable_reason()
    if reason:
        pytest.skip(reason)
    missing = subprocess.run(
        ["dpkg-checkbuilddeps"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"PATH": SYSTEM_PATH},
        check=False,
    )
    if missing.returncode != 0:
        pytest.fail(f"build dependencies missing; run `make setup`: {missing.stderr.strip()}")
    top = tmp_path_factory.mktemp("deb")
    # The first build runs the build-time unit tests, as a real build does;
    # the rebuild skips them: they already passed on this very code.
    run_build(REPO, top / "first", nocheck=False)
    source = top / "upgrade-src"
    copy_source_tree(source)
    upgrade_version = changelog_version(REPO) + "+upgradetest1"
    bump_version(source, upgrade_version)
    run_build(source, top / "upgrade", nocheck=True)
    release = top / "release-0.1.0"
    if export_commit(RELEASE_0_1_0, release / "src"):
        run_build(release / "src", release / "out", nocheck=True)
    return Packages(
        first=only_deb(top / "first"),
        upgrade=only_deb(top / "upgrade"),
        upgrade_version=upgrade_version,
        release_0_1_0=only_deb(release / "out") if release.exists() else None,
    )


def only_deb(directory: Path) -> Path:
    debs = sorted(directory.glob("portwatchd_*_all.deb"))
    assert len(debs) == 1, f"expected one portwatchd .deb in {directory}, found {debs}"
    return debs[0]


@pytest.fixture
def box() -> Iterator[Sandbox]:
    reason = sandbox_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with Sandbox(name="pwdeb") as sandbox:
        # The image's policy-rc.d (exit 101) forbids maintainer scripts to
        # start services; a real host has none.
        sandbox.run("rm", "-f", "/usr/sbin/policy-rc.d")
        # man-db's dpkg trigger rebuilds its index for 4-5 s on every apt
        # run; without this flag file it does nothing. The index is no
        # part of what these tests check.
        sandbox.run("rm", "-f", "/var/lib/man-db/auto-update")
        yield sandbox


# --- helpers that act in the sandbox ---------------------------------------


def apt_get(box: Sandbox, *args: str) -> subprocess.CompletedProcess[str]:
    # input="": dpkg must never wait on a question (a conffile prompt would
    # otherwise hang the test instead of failing it).
    return box.run(
        "env",
        "DEBIAN_FRONTEND=noninteractive",
        "apt-get",
        "-y",
        "--no-install-recommends",
        *args,
        input="",
        timeout=180,
    )


def install(box: Sandbox, deb: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """apt-get install the .deb (with apt `options`); return apt's output."""
    # /tmp in the sandbox: apt's unprivileged _apt user can read it there.
    box.copy_in(str(deb), f"/tmp/{deb.name}")
    return apt_get(box, *options, "install", f"/tmp/{deb.name}")


def unit_property(box: Sandbox, unit: str, name: str) -> str:
    return box.run("systemctl", "show", "--property", name, "--value", unit).stdout.strip()


def is_active(box: Sandbox, unit: str) -> bool:
    return box.run("systemctl", "is-active", "--quiet", unit, check=False).returncode == 0


def exists(box: Sandbox, path: str) -> bool:
    return box.run("test", "-e", path, check=False).returncode == 0


def group_exists(box: Sandbox, group: str) -> bool:
    return box.run("getent", "group", group, check=False).returncode == 0


def user_exists(box: Sandbox, user: str) -> bool:
    return box.run("getent", "passwd", user, check=False).returncode == 0


def gid_of(box: Sandbox, group: str) -> int:
    return int(box.run("getent", "group", group).stdout.split(":")[2])


def owner_of(box: Sandbox, path: str) -> str:
    """`user:group` of every file under `path`, or of the first that differs."""
    owners = box.run("find", path, "-printf", "%u:%g\\n").stdout.split()
    return owners[0] if len(set(owners)) == 1 else f"mixed: {sorted(set(owners))}"


def daemon_credentials(box: Sandbox) -> dict[str, str]:
    """The Uid, Gid, Groups and Cap* lines of the running daemon's /proc status."""
    pid = unit_property(box, "portwatchd.service", "MainPID")
    assert pid != "0", f"portwatchd is not running\n{service_report(box)}"
    lines = box.read_file(f"/proc/{pid}/status").splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def assert_runs_as_its_own_user(box: Sandbox) -> None:
    uid = box.run("id", "-u", SERVICE_USER).stdout.strip()
    credentials = daemon_credentials(box)
    assert credentials["Uid"].split() == [uid] * 4, credentials
    journal_gid = str(gid_of(box, "systemd-journal"))
    assert journal_gid in credentials["Groups"].split(), credentials
    # CAP_DAC_READ_SEARCH (2) and CAP_SYS_PTRACE (19) for owners,
    # CAP_NET_ADMIN (12) for exec events on older kernels and CAP_SYS_ADMIN
    # (21) to enter network namespaces: effective and bounding, nothing else.
    wanted = (1 << 2) | (1 << 12) | (1 << 19) | (1 << 21)
    for line in ("CapEff", "CapPrm", "CapAmb", "CapBnd"):
        assert int(credentials[line], 16) == wanted, (line, credentials)


def open_port(box: Sandbox, port: int, user: str = "root") -> str:
    """Start a listener on 127.0.0.1:port as a transient unit of `user`; return the unit."""
    unit = f"pwtest-listen-{port}.service"
    box.run(
        "systemd-run",
        f"--unit={unit}",
        f"--uid={user}",
        "--quiet",
        "python3",
        "-c",
        LISTENER,
        str(port),
    )
    return unit


def journal_port_events(box: Sandbox) -> list[dict[str, Any]]:
    """Every port event portwatchd.service wrote to the journal, oldest first."""
    out = box.run("journalctl", "--quiet", "--unit=portwatchd.service", "--output=json").stdout
    entries = [json.loads(line) for line in out.splitlines() if line.strip()]
    return [entry for entry in entries if "PORT_EVENT" in entry]


def matching(events: list[dict[str, Any]], kind: str, port: int) -> list[dict[str, Any]]:
    return [e for e in events if e["PORT_EVENT"] == kind and e.get("PORT_NUMBER") == str(port)]


def service_report(box: Sandbox) -> str:
    """The service's status and last log lines, for a failure message."""
    status = box.run(
        "systemctl", "status", "--no-pager", "--lines=0", "portwatchd.service", check=False
    )
    log = box.run(
        "journalctl", "--no-pager", "--lines=30", "--unit=portwatchd.service", check=False
    )
    return f"{status.stdout}\n{log.stdout}"


def wait_for_journal_event(box: Sandbox, kind: str, port: int) -> dict[str, Any]:
    deadline = time.monotonic() + EVENT_TIMEOUT_S
    while time.monotonic() < deadline:
        found = matching(journal_port_events(box), kind, port)
        if found:
            return found[0]
        time.sleep(0.2)
    pytest.fail(
        f"no PORT_EVENT={kind} for port {port} in the journal within {EVENT_TIMEOUT_S}s\n"
        f"{service_report(box)}"
    )


def ctl_events(box: Sandbox, user: str | None = None) -> list[dict[str, Any]]:
    out = box.run("portwatchctl", "events", "--json", user=user).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def ctl_has(events: list[dict[str, Any]], kind: str, port: int) -> bool:
    return any(e["type"] == kind and e["port"] == port for e in events)


# --- the tests ---------------------------------------------------------------


def test_package_declares_its_dependencies_and_ships_its_files(packages: Packages) -> None:
    deb = str(packages.first)
    depends = subprocess.run(
        ["dpkg-deb", "--field", deb, "Depends"], capture_output=True, text=True, check=True
    ).stdout
    # pybuild maps pyproject's systemd-python and sdnotify to Debian's names;
    # the postinst runs systemd-sysusers (no more addgroup: no adduser).
    for package in ("python3-systemd", "python3-sdnotify", "python3:any", "systemd-sysusers"):
        assert package in depends, f"{package} missing from Depends: {depends}"
    assert "adduser" not in depends, depends

    listing = subprocess.run(
        ["dpkg-deb", "--contents", deb], capture_output=True, text=True, check=True
    ).stdout
    files = {line.split()[5].lstrip(".") for line in listing.splitlines()}
    for path in (
        "/usr/sbin/portwatchd",
        "/usr/bin/portwatchctl",
        "/usr/lib/sysusers.d/portwatchd.conf",
        "/usr/lib/tmpfiles.d/portwatchd.conf",
        DROP_IN_README,
        "/usr/share/doc/portwatchd/README.md.gz",
        "/lib/systemd/system/portwatchd.service",
        "/lib/systemd/system/portwatchd.socket",
        "/usr/lib/systemd/catalog/portwatchd.catalog",
        CONFIG,
        "/usr/share/man/man8/portwatchd.8.gz",
        "/usr/share/man/man1/portwatchctl.1.gz",
        "/usr/share/man/man5/portwatchd.toml.5.gz",
        "/usr/share/bash-completion/completions/portwatchctl",
        "/usr/share/doc/portwatchd/copyright",
    ):
        assert path in files, f"{path} is not in the package"
    # The daemon is not a user command.
    assert "/usr/bin/portwatchd" not in files
    # Only the module and its metadata: nothing that the build-time tests
    # copied next to it (tests/, packaging/, pyproject.toml, caches).
    site = "/usr/lib/python3/dist-packages/"
    module_or_metadata = re.compile(r"portwatchd(/|-[^/]+\.dist-info/)")
    strays = [
        f
        for f in files
        if f.startswith(site) and f != site and not module_or_metadata.match(f[len(site) :])
    ]
    assert not strays, f"the package ships build leftovers: {strays}"

    control = subprocess.run(
        ["dpkg-deb", "--info", deb, "conffiles"], capture_output=True, text=True, check=True
    ).stdout
    assert sorted(control.split()) == sorted([CONFIG, DROP_IN_README])


def test_autopkgtest_passes_on_the_installed_package(packages: Packages, box: Sandbox) -> None:
    install(box, packages.first)
    box.copy_in(str(REPO / "debian" / "tests"), "/tmp/autopkgtest")
    box.run("mkdir", "-p", "/tmp/autopkgtest-tmp")
    result = box.run(
        "env",
        "AUTOPKGTEST_TMP=/tmp/autopkgtest-tmp",
        "/tmp/autopkgtest/service-reports-port",
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, f"autopkgtest failed:\n{result.stdout}\n{result.stderr}"


def install_and_see_a_port(box: Sandbox, deb: Path) -> str:
    """Install `deb`, open 18081, see it reported; add the users pwmember and
    pwoutsider. Return the listener's unit."""
    install(box, deb)
    for unit in ("portwatchd.service", "portwatchd.socket"):
        assert is_active(box, unit), f"{unit} is not running after install\n{service_report(box)}"
        assert box.run("systemctl", "is-enabled", unit).stdout.strip() == "enabled"
    for link in ENABLEMENT_LINKS:
        assert exists(box, link), f"{link} missing after install"
    # The dpkg trigger made journald pick up the message catalog.
    catalog = box.run("journalctl", "--list-catalog", MESSAGE_ID_OPENED).stdout
    assert MESSAGE_ID_OPENED in catalog

    first_port = open_port(box, 18081)
    opened = wait_for_journal_event(box, "opened", 18081)
    # The shipped unit's hardening still lets the daemon see who listens.
    assert opened.get("PORT_UNIT") == first_port, opened

    # --- the control socket: root and members of the group, nobody else ------
    assert ctl_has(ctl_events(box), "opened", 18081)
    box.run("useradd", "--no-create-home", "--groups", "portwatchd", "pwmember")
    assert ctl_has(ctl_events(box, user="pwmember"), "opened", 18081)
    box.run("useradd", "--no-create-home", "pwoutsider")
    refused = box.run("portwatchctl", "events", user="pwoutsider", check=False)
    assert refused.returncode == 4, refused  # 4: permission denied
    assert "group 'portwatchd'" in refused.stderr  # names the group to join
    return first_port


def upgrade_and_lose_nothing(
    box: Sandbox, first_port: str, deb: Path, version: str, *apt_options: str
) -> None:
    """Upgrade to `deb` with ports changing around it: restarted, config and
    state kept, every change reported once, seqs going on."""
    box.write_file(CONFIG, box.read_file(CONFIG) + OPERATOR_NOTE)
    invocation_before = unit_property(box, "portwatchd.service", "InvocationID")
    assert box.run("ls", "-A", STATE_DIR).stdout.strip(), "the daemon persisted no state"
    seqs_before = [int(e["PORT_EVENT_SEQ"]) for e in journal_port_events(box)]
    # Changes made just before the upgrade, not waited for: whether the old
    # daemon sees them or the new one finds them at startup, each must be
    # reported, once.
    box.run("systemctl", "stop", first_port)
    open_port(box, 18082)
    # And one made while no daemon runs: the upgrade's restart runs this
    # drop-in's command after the old daemon exited and before the new one
    # starts.
    box.write_file(DOWN_WINDOW_DROPIN, DOWN_WINDOW_UNIT_TEXT)
    box.run("systemctl", "daemon-reload")
    install(box, deb, *apt_options)
    box.run("rm", DOWN_WINDOW_DROPIN)
    box.run("systemctl", "daemon-reload")

    installed = box.run("dpkg-query", "--showformat=${Version}", "--show", "portwatchd").stdout
    assert installed == version
    assert is_active(box, "portwatchd.service"), f"not running after upgrade\n{service_report(box)}"
    assert unit_property(box, "portwatchd.service", "InvocationID") != invocation_before, (
        "the service was not restarted by the upgrade"
    )
    assert OPERATOR_NOTE in box.read_file(CONFIG), "the upgrade replaced the edited config"

    wait_for_journal_event(box, "closed", 18081)
    wait_for_journal_event(box, "opened", 18082)
    while_down = wait_for_journal_event(box, "opened", DOWN_WINDOW_PORT)
    assert while_down.get("PORT_DETECTED") == "startup", while_down
    open_port(box, 18083)
    after = wait_for_journal_event(box, "opened", 18083)
    events = journal_port_events(box)
    for kind, port in (
        ("opened", 18081),
        ("closed", 18081),
        ("opened", 18082),
        ("opened", DOWN_WINDOW_PORT),
    ):
        found = matching(events, kind, port)
        assert len(found) == 1, f"{kind} {port} reported {len(found)} times: {found}"
    seqs = [int(e["PORT_EVENT_SEQ"]) for e in events]
    assert len(set(seqs)) == len(seqs), f"PORT_EVENT_SEQ reused: {seqs}"
    assert seqs == sorted(seqs), f"PORT_EVENT_SEQ went backwards: {seqs}"
    assert int(after["PORT_EVENT_SEQ"]) > max(seqs_before)
    # The history came through the restart: the pre-upgrade event is still
    # queryable, over the socket that the upgrade recreated, by a member.
    history = ctl_events(box, user="pwmember")
    assert ctl_has(history, "opened", 18081)
    assert ctl_has(history, "opened", 18083)


def test_install_upgrade_remove_purge(packages: Packages, box: Sandbox) -> None:
    # --- install: the postinst creates the user, enables and starts ----------
    first_port = install_and_see_a_port(box, packages.first)
    assert user_exists(box, SERVICE_USER), "the postinst did not create the user"
    assert group_exists(box, SERVICE_USER), "the postinst did not create the group"
    assert_runs_as_its_own_user(box)
    assert owner_of(box, STATE_DIR) == f"{SERVICE_USER}:{SERVICE_USER}"
    socket_stat = box.run("stat", "-c", "%a %U %G", "/run/portwatchd/control.sock").stdout
    assert socket_stat.split() == ["660", "root", "portwatchd"]
    # Not root, and still names the owner of another user's socket.
    other = open_port(box, 18085, user="nobody")
    opened = wait_for_journal_event(box, "opened", 18085)
    assert (opened.get("PORT_UNIT"), opened.get("PORT_UID")) == (other, "65534"), opened
    box.run("systemctl", "stop", other)

    # --- upgrade: restarted, config and state kept, no event lost ------------
    upgrade_and_lose_nothing(box, first_port, packages.upgrade, packages.upgrade_version)
    assert_runs_as_its_own_user(box)

    # --- remove: stopped; config, state, user and group stay ----------------
    apt_get(box, "remove", "portwatchd")
    assert not is_active(box, "portwatchd.service"), "remove left the service running"
    assert not is_active(box, "portwatchd.socket"), "remove left the socket listening"
    assert exists(box, CONFIG), "remove deleted the conffile (only purge may)"
    assert exists(box, STATE_DIR), "remove deleted the state (only purge may)"
    assert not exists(box, "/run/portwatchd/control.sock"), "remove left the dead control socket"

    # --- purge: nothing left but the system user and group ------------------
    apt_get(box, "purge", "portwatchd")
    assert not exists(box, STATE_DIR), "purge left the state behind"
    assert not exists(box, "/etc/portwatchd"), "purge left the config behind"
    # Debian policy: a system user outlives its package (files may still be
    # theirs; a reinstall finds the same IDs, and group members keep access).
    assert user_exists(box, SERVICE_USER), "purge deleted the system user"
    assert group_exists(box, SERVICE_USER), "purge deleted the system group"
    for link in ENABLEMENT_LINKS:
        assert not exists(box, link), f"purge left {link}"
    status = box.run(
        "dpkg-query", "--showformat=${db:Status-Status}", "--show", "portwatchd", check=False
    ).stdout
    assert status in ("", "not-installed")


def test_upgrade_from_0_1_0_takes_over_its_state(packages: Packages, box: Sandbox) -> None:
    if packages.release_0_1_0 is None:
        pytest.skip(f"needs the git history with commit {RELEASE_0_1_0} (0.1.0) to build it")
    first_port = install_and_see_a_port(box, packages.release_0_1_0)
    # 0.1.0 ran as root, made the group by hand and had no user.
    assert daemon_credentials(box)["Uid"].split() == ["0"] * 4
    assert not user_exists(box, SERVICE_USER)
    gid = gid_of(box, SERVICE_USER)
    assert owner_of(box, STATE_DIR) == "root:root"

    # The operator's edit is kept (as an admin answering dpkg's conffile
    # question with "keep" would), and every event goes on.
    version = changelog_version(REPO)
    upgrade_and_lose_nothing(
        box, first_port, packages.first, version, "-o", "Dpkg::Options::=--force-confold"
    )
    # The system user joined the existing group: same GID, so the members'
    # access and group-owned files are untouched.
    assert user_exists(box, SERVICE_USER)
    assert gid_of(box, SERVICE_USER) == gid
    assert box.run("id", "-g", SERVICE_USER).stdout.strip() == str(gid)
    assert_runs_as_its_own_user(box)
    # systemd handed the root-owned state to the daemon's user.
    assert owner_of(box, STATE_DIR) == f"{SERVICE_USER}:{SERVICE_USER}"
    socket_stat = box.run("stat", "-c", "%a %U %G", "/run/portwatchd/control.sock").stdout
    assert socket_stat.split() == ["660", "root", "portwatchd"]


BROKEN_CONFIG = "# broken on purpose by the upgrade test\n\ninterval = 0\n"


def test_upgrade_over_a_broken_configuration_says_so(packages: Packages, box: Sandbox) -> None:
    install(box, packages.first)
    box.write_file(CONFIG, BROKEN_CONFIG)
    upgrade = install(box, packages.upgrade)
    # Configured all the same (a broken file must not leave a half-configured
    # package), and apt's output names the problem: file, line and key.
    status = box.run("dpkg-query", "--showformat=${db:Status-Status}", "--show", "portwatchd")
    assert status.stdout == "installed"
    said = upgrade.stdout + upgrade.stderr
    assert "the configuration has errors" in said, said
    assert f"{CONFIG}:3" in said and "interval" in said, said
    # The control socket stays up, and once the file is fixed a restart
    # works at once (no start limit in the way).
    assert is_active(box, "portwatchd.socket"), service_report(box)
    for _ in range(5):
        box.run("portwatchctl", "status", check=False, timeout=30)
    assert is_active(box, "portwatchd.socket"), service_report(box)
    box.write_file(CONFIG, "")
    box.run("systemctl", "restart", "portwatchd.service", timeout=60)
    assert is_active(box, "portwatchd.service"), service_report(box)
    box.run("portwatchctl", "status")
