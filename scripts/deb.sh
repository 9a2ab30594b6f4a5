#!/bin/sh
# Build the Debian package (binary only) and check it with lintian.
#
#   scripts/deb.sh [OUTDIR]        OUTDIR defaults to dist/
#
# Leaves portwatchd_<version>_all.deb, the .changes and the .buildinfo in
# OUTDIR, and fails if lintian reports any tag on them or on the source
# package, pedantic and informational ones included (--pedantic -I).
# DEB_BUILD_OPTIONS=nocheck skips the build-time tests.
#
# The build runs in a scratch copy of the tree: dpkg-buildpackage writes its
# results to the parent directory and leaves build debris (.pybuild/,
# *.egg-info, debian/portwatchd/) in the tree, and neither belongs in the
# work tree. The build dependencies come from `make setup`
# (dpkg-buildpackage names any that are missing).
set -eu

# pybuild must find Debian's python3 and its modules: a pyenv or venv
# python3 ahead on PATH breaks it ("No module named build").
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
unset VIRTUAL_ENV PYTHONPATH PYTHONHOME PYTHONSTARTUP

top=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$top/dist}
mkdir -p "$out"
out=$(cd "$out" && pwd)

scratch=$(mktemp -d "${TMPDIR:-/tmp}/portwatchd-deb.XXXXXX")
trap 'rm -rf "$scratch"' EXIT INT TERM
# mktemp makes it 0700; a build-time test run as root that drops to another
# user (setpriv) must still be able to import the built module.
chmod 0755 "$scratch"

# Everything but version control, local environments and build output.
mkdir "$scratch/portwatchd"
tar -C "$top" -cf - \
    --exclude=./.git --exclude=./.venv --exclude=./dist --exclude=./build \
    --exclude=./run --exclude=./.pybuild --exclude='*.egg-info' \
    --exclude=__pycache__ --exclude=.pytest_cache --exclude=.mypy_cache \
    --exclude=.ruff_cache --exclude=.hypothesis \
    --exclude=./debian/portwatchd --exclude=./debian/.debhelper \
    --exclude=./debian/files --exclude='./debian/*.substvars' \
    --exclude='./debian/*.debhelper.log' --exclude=./debian/debhelper-build-stamp \
    . | tar -C "$scratch/portwatchd" -xf -

# The source package is built only for lintian's source checks (debian/
# copyright, control, rules), before the build leaves debris in the tree.
(cd "$scratch/portwatchd" && dpkg-source --build .)
(cd "$scratch/portwatchd" && dpkg-buildpackage -us -uc -b)

set -- "$scratch"/*.changes
[ -f "$1" ] || { echo "deb.sh: dpkg-buildpackage left no .changes file" >&2; exit 1; }
# Checked before they reach OUTDIR: what lands there is lintian-clean,
# pedantic and informational tags included. Any tag shown fails the build
# (--fail-on info would also count tags that lintian masks and never shows).
status=0
lintian --pedantic -I "$1" "$scratch"/*.dsc >"$scratch/lintian.out" || status=$?
if [ "$status" -ne 0 ] || grep -qE '^[EWIPX]: ' "$scratch/lintian.out"; then
    cat "$scratch/lintian.out" >&2
    echo "deb.sh: lintian --pedantic -I failed (exit $status) or reports the tags above" >&2
    exit 1
fi

built=""
for file in "$scratch"/*.deb "$scratch"/*.buildinfo "$scratch"/*.changes; do
    mv -f "$file" "$out/"
    built="$built $(basename "$file")"
done
echo "deb.sh: in $out:$built"
