#!/bin/sh
# Install what portwatchd needs, on Debian 12 as root. Idempotent: it
# installs only what is missing.
#
#   scripts/setup.sh run    what running needs (`make run`): Debian packages
#                           only, and .venv with portwatchd in it; no PyPI
#   scripts/setup.sh test   that, plus what `make test`, `make deb` and
#                           `make lint` need: the build tools and the package
#                           tests' tools from Debian, the pinned test and lint
#                           tools of requirements-dev.txt from PyPI
#   scripts/setup.sh        everything (`make setup`): same as `test`
#
# Route: the run-time libraries come from Debian (python3-systemd,
# python3-sdnotify), and .venv is made from /usr/bin/python3 with
# --system-site-packages. That is exactly what the Debian package runs
# with, and it needs no compiler and no libsystemd-dev (whose install
# would upgrade the host's systemd to match it). The venv adds only the
# test and lint tools, pinned in requirements-dev.txt.
set -eu
cd "$(dirname "$0")/.."

# Running: the interpreter, the two libraries, and what an offline editable
# install of the package into the venv needs (venv, setuptools, wheel).
APT_RUN="
python3 python3-venv python3-systemd python3-sdnotify python3-setuptools python3-wheel
"
# Testing: the namespace and booted-systemd tests' tools, the package build
# (build-essential: dpkg-checkbuilddeps requires it, and the Build-Depends
# of debian/control), lintian, man (the man page tests), git (the upgrade
# test builds the 0.1.0 package from its commit), pip (`make install`,
# which the booted-systemd tests run, installs with Debian's pip), zsh and
# fish (the completion tests run each shell's own completion) and sqlite3
# (the store's schema is checked with the command operators use).
APT_TEST="
build-essential debhelper dh-python pybuild-plugin-pyproject python3-all dpkg-dev
fakeroot lintian python3-pytest python3-hypothesis bash-completion
man-db iproute2 util-linux procps systemd git python3-pip zsh fish sqlite3
"

VENV=.venv
RUN_STAMP=$VENV/.run-stamp
TEST_STAMP=$VENV/.setup-stamp

say() { echo "setup: $*"; }
die() { echo "setup: $*" >&2; exit 1; }

missing_packages() {
    missing=""
    for pkg in "$@"; do
        status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
        [ "$status" = "installed" ] || missing="$missing $pkg"
    done
    echo "$missing"
}

apt_install() {
    # shellcheck disable=SC2086 # word splitting is the point
    missing=$(missing_packages $1)
    [ -n "$missing" ] || return 0
    if [ "$(id -u)" -ne 0 ]; then
        die "missing Debian packages:$missing; run 'make setup' as root (or: apt-get install$missing)"
    fi
    say "installing Debian packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    # apt-get update exits 0 when a mirror cannot be reached (it warns and
    # keeps the old lists): its warnings explain a failed install below.
    update_log=$(mktemp)
    if ! apt-get update -qq >"$update_log" 2>&1; then
        cat "$update_log" >&2
        rm -f "$update_log"
        die "'apt-get update' failed (above). Check the network (and any proxy: /etc/apt/apt.conf.d/) and the mirrors in /etc/apt/sources.list.d/, then run this again."
    fi
    unreachable=$(grep -E '^(W|E): Failed to fetch' "$update_log" || true)
    cat "$update_log"
    rm -f "$update_log"
    # shellcheck disable=SC2086
    if ! apt-get install -y -qq --no-install-recommends $missing; then
        if [ -n "$unreachable" ]; then
            die "cannot reach the Debian mirrors ('apt-get update': $(echo "$unreachable" | head -n 1)), so$missing could not be installed. Check the network (and any proxy: /etc/apt/apt.conf.d/) and /etc/apt/sources.list.d/, then run this again."
        fi
        die "'apt-get install$missing' failed (its errors are above); fix that, then run this again."
    fi
}

# The fingerprint of what a stamp's step installed from: redo the step when
# it changes.
fingerprint() { cat "$@" | sha256sum | cut -d' ' -f1; }

make_venv() {
    if [ ! -x "$VENV/bin/python" ]; then
        say "creating $VENV"
        /usr/bin/python3 -m venv --system-site-packages "$VENV" ||
            die "could not create $VENV with /usr/bin/python3 -m venv (Debian package python3-venv)"
    fi
    want=$(fingerprint pyproject.toml scripts/setup.sh)
    # Up to date: touched, so that make sees it newer than its sources.
    if [ "$(cat "$RUN_STAMP" 2>/dev/null)" = "$want" ]; then touch "$RUN_STAMP"; return 0; fi
    # Offline: the package itself, built with Debian's setuptools.
    "$VENV/bin/pip" install -q --disable-pip-version-check --no-index --no-deps \
        --no-build-isolation -e . ||
        die "could not install portwatchd into $VENV (pip's errors are above)"
    echo "$want" >"$RUN_STAMP"
}

# Why pip failed, in one line: the index unreachable, or something else.
index_problem() {
    "$VENV/bin/python" - <<'EOF'
import os, subprocess, sys, urllib.request
index = os.environ.get("PIP_INDEX_URL")
if not index:
    got = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.index-url"],
                         capture_output=True, text=True)
    index = got.stdout.strip() if got.returncode == 0 else ""
index = index or "https://pypi.org/simple/"
try:
    urllib.request.urlopen(index, timeout=15).close()
except Exception as error:
    print(f"cannot reach PyPI ({index}): {getattr(error, 'reason', error)}")
EOF
}

install_test_tools() {
    want=$(fingerprint requirements-dev.txt pyproject.toml scripts/setup.sh)
    if [ "$(cat "$TEST_STAMP" 2>/dev/null)" = "$want" ]; then touch "$TEST_STAMP"; return 0; fi
    say "installing the test and lint tools of requirements-dev.txt into $VENV"
    if ! "$VENV/bin/pip" install -q --disable-pip-version-check -r requirements-dev.txt; then
        problem=$(index_problem)
        die "${problem:-pip could not install requirements-dev.txt (its errors are above)}; 'make test' and 'make lint' need these tools ('make run' does not). Check the network (and any proxy: https_proxy, pip.conf), then run this again."
    fi
    echo "$want" >"$TEST_STAMP"
}

case ${1:-all} in
    run)
        apt_install "$APT_RUN"
        make_venv
        ;;
    test | all)
        apt_install "$APT_RUN $APT_TEST"
        make_venv
        install_test_tools
        ;;
    *) die "usage: $0 [run|test|all]" ;;
esac
