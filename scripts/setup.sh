#!/bin/sh
# Install everything portwatchd needs to run, test, lint and package,
# on Debian 12 as root. Idempotent: it installs only what is missing.
#
# Route: the run-time libraries come from Debian (python3-systemd,
# python3-sdnotify), and .venv is made from /usr/bin/python3 with
# --system-site-packages. That is exactly what the Debian package runs
# with, and it needs no compiler and no libsystemd-dev (whose install
# would upgrade the host's systemd to match it). The venv adds only the
# test and lint tools, pinned in requirements-dev.txt.
set -eu
cd "$(dirname "$0")/.."

APT_PACKAGES="
python3 python3-venv python3-systemd python3-sdnotify python3-setuptools
python3-pip python3-wheel man-db
iproute2 util-linux procps systemd
debhelper dh-python pybuild-plugin-pyproject python3-all dpkg-dev fakeroot lintian
python3-pytest python3-hypothesis bash-completion
"

missing=""
for pkg in $APT_PACKAGES; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
    [ "$status" = "installed" ] || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: missing Debian packages:$missing; run 'make setup' as root" >&2
        exit 1
    fi
    echo "setup: installing$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086 # word splitting is the point
    apt-get install -y -qq --no-install-recommends $missing
fi

VENV=.venv
if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV"
    /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi

# Reinstall the pinned tools only when the pins or pyproject.toml changed.
stamp="$VENV/.setup-stamp"
want=$(cat requirements-dev.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    "$VENV/bin/pip" install -q --disable-pip-version-check -r requirements-dev.txt
    "$VENV/bin/pip" install -q --disable-pip-version-check --no-build-isolation -e .
    echo "$want" >"$stamp"
fi
