#!/bin/sh
# Install portwatchd system-wide from this work tree: `make install`.
#   ./scripts/install.sh              install (or upgrade) everything
#   ./scripts/install.sh --uninstall  remove it again; config and state stay
#
# What goes where:
#   the Python package    /usr/local/lib/python3.X/dist-packages/portwatchd
#   portwatchd, portwatchctl   /usr/local/bin (run by /usr/bin/python3)
#   the units             /etc/systemd/system/portwatchd.{service,socket}
#   the daemon's user     portwatchd (system user and group, from
#                         /usr/local/lib/sysusers.d/portwatchd.conf; members
#                         of the group may query) and /run/portwatchd
#                         (/usr/local/lib/tmpfiles.d/portwatchd.conf)
#   the journal catalog   /usr/local/lib/systemd/catalog/portwatchd.catalog
#   the man pages         /usr/local/share/man/man{1,5,8}
#   completion            bash: /usr/local/share/bash-completion/completions/portwatchctl
#                         zsh: /usr/local/share/zsh/site-functions/_portwatchctl
#                         fish: /usr/local/share/fish/vendor_completions.d/portwatchctl.fish
#   a default config      /etc/portwatchd/portwatchd.toml (only if absent),
#                         and the drop-in directory /etc/portwatchd/portwatchd.d
#
# It needs no network: the run-time libraries are Debian's python3-systemd
# and python3-sdnotify (installed by `make setup`), and the package is built
# with the system's setuptools, without build isolation and without an index.
# It installs for /usr/bin/python3, never into the repository's .venv: the
# unit runs with ProtectHome=yes, and a work tree under /root or /home would
# be unreachable (status=203/EXEC).
set -eu
# Everything installed must be readable by the daemon's user.
umask 022

SRC=$(cd "$(dirname "$0")/.." && pwd)
# Debian's pip installs outside a venv into /usr/local (its "posix_local"
# scheme); an explicit --prefix=/usr/local would give /usr/local/local.
PREFIX=/usr/local
PYTHON=/usr/bin/python3
UNIT_DIR=/etc/systemd/system
CATALOG_DIR=$PREFIX/lib/systemd/catalog
MAN_DIR=$PREFIX/share/man
COMPLETION_DIR=$PREFIX/share/bash-completion/completions
ZSH_COMPLETION_DIR=$PREFIX/share/zsh/site-functions
FISH_COMPLETION_DIR=$PREFIX/share/fish/vendor_completions.d
SYSUSERS_DIR=$PREFIX/lib/sysusers.d
TMPFILES_DIR=$PREFIX/lib/tmpfiles.d
CONFIG_DIR=/etc/portwatchd
USER_NAME=portwatchd

say() { echo "install: $*"; }
die() { echo "install: $*" >&2; exit 1; }

# Is a systemd running as PID 1 here (and not just installed)?
systemd_running() { [ -d /run/systemd/system ]; }

# pip with the repository kept out of sys.path: -I ignores the current
# directory (whose portwatchd.egg-info pip would otherwise take for an
# installed copy) and PYTHON* variables.
pip() {
    (cd / && "$PYTHON" -I -m pip --disable-pip-version-check --no-input "$@")
}

install_package() {
    build=$(mktemp -d /tmp/portwatchd-build.XXXXXX)
    # shellcheck disable=SC2064 # expand $build now
    trap "rm -rf '$build'" EXIT
    # Build from a copy: setuptools writes build/ and *.egg-info next to
    # the sources, and the work tree is not ours to litter.
    cp -R "$SRC/pyproject.toml" "$SRC/portwatchd" "$build/"
    for extra in README.md LICENSE; do
        [ ! -e "$SRC/$extra" ] || cp "$SRC/$extra" "$build/"
    done
    find "$build" -name __pycache__ -prune -exec rm -rf {} +
    say "installing the portwatchd package into $PREFIX for $PYTHON"
    pip install --quiet --no-deps --no-index --no-build-isolation \
        --break-system-packages --root-user-action=ignore "$build"
    # The unit runs $PREFIX/bin/portwatchd with /usr/bin/python3: it must
    # import this copy, from a place the unit can read.
    where=$(cd / && "$PYTHON" -I -c 'import portwatchd; print(portwatchd.__file__)') ||
        die "$PYTHON cannot import the installed package; is $PREFIX on its sys.path?"
    case $where in
        "$PREFIX"/*) ;;
        *) die "$PYTHON imports portwatchd from $where, not from $PREFIX; uninstall that copy first" ;;
    esac
    for exe in portwatchd portwatchctl; do
        [ -x "$PREFIX/bin/$exe" ] || die "$PREFIX/bin/$exe was not installed"
    done
}

install_units() {
    say "installing the units into $UNIT_DIR"
    # The shipped unit names the Debian package's paths.
    sed -e "s|^ExecStart=/usr/sbin/portwatchd|ExecStart=$PREFIX/bin/portwatchd|" \
        -e "s|^ExecReload=+/usr/bin/portwatchctl|ExecReload=+$PREFIX/bin/portwatchctl|" \
        "$SRC/packaging/portwatchd.service" >"$UNIT_DIR/portwatchd.service.tmp"
    chmod 0644 "$UNIT_DIR/portwatchd.service.tmp"
    mv "$UNIT_DIR/portwatchd.service.tmp" "$UNIT_DIR/portwatchd.service"
    install -m 0644 "$SRC/packaging/portwatchd.socket" "$UNIT_DIR/portwatchd.socket"
}

install_catalog() {
    say "installing the journal catalog into $CATALOG_DIR"
    install -d "$CATALOG_DIR"
    install -m 0644 "$SRC/packaging/portwatchd.catalog" "$CATALOG_DIR/portwatchd.catalog"
    journalctl --update-catalog
}

install_man_pages() {
    for page in "$SRC"/man/*.[0-9]; do
        [ -e "$page" ] || continue
        section=${page##*.}
        install -d "$MAN_DIR/man$section"
        install -m 0644 "$page" "$MAN_DIR/man$section/"
    done
    if command -v mandb >/dev/null 2>&1; then
        mandb --quiet "$MAN_DIR" 2>/dev/null || true
    fi
}

install_completion() {
    [ -e "$SRC/completion/portwatchctl" ] || return 0
    install -d "$COMPLETION_DIR" "$ZSH_COMPLETION_DIR" "$FISH_COMPLETION_DIR"
    install -m 0644 "$SRC/completion/portwatchctl" "$COMPLETION_DIR/portwatchctl"
    install -m 0644 "$SRC/completion/_portwatchctl" "$ZSH_COMPLETION_DIR/_portwatchctl"
    install -m 0644 "$SRC/completion/portwatchctl.fish" "$FISH_COMPLETION_DIR/portwatchctl.fish"
}

# The user and group from sysusers.d, /run/portwatchd from tmpfiles.d, as
# the Debian package has them. Both tools work without a running systemd.
install_user() {
    install -d "$SYSUSERS_DIR" "$TMPFILES_DIR"
    install -m 0644 "$SRC/packaging/portwatchd.sysusers" "$SYSUSERS_DIR/portwatchd.conf"
    install -m 0644 "$SRC/packaging/portwatchd.tmpfiles" "$TMPFILES_DIR/portwatchd.conf"
    say "creating the system user and group $USER_NAME if missing (members of the group may use portwatchctl)"
    systemd-sysusers portwatchd.conf
    systemd-tmpfiles --create portwatchd.conf
}

install_config() {
    install -d -m 0755 "$CONFIG_DIR" "$CONFIG_DIR/portwatchd.d"
    if [ ! -e "$CONFIG_DIR/portwatchd.d/README" ]; then
        install -m 0644 "$SRC/packaging/portwatchd.d/README" "$CONFIG_DIR/portwatchd.d/README"
    fi
    if [ -e "$CONFIG_DIR/portwatchd.toml" ]; then
        say "keeping the existing $CONFIG_DIR/portwatchd.toml"
    elif [ -e "$SRC/packaging/portwatchd.toml" ]; then
        say "installing a default $CONFIG_DIR/portwatchd.toml"
        install -m 0644 "$SRC/packaging/portwatchd.toml" "$CONFIG_DIR/portwatchd.toml"
    fi
}

do_install() {
    for module in systemd.journal:python3-systemd sdnotify:python3-sdnotify \
        pip:python3-pip setuptools:python3-setuptools wheel:python3-wheel; do
        "$PYTHON" -c "import ${module%%:*}" 2>/dev/null ||
            die "$PYTHON cannot import ${module%%:*} (Debian package ${module#*:}); run 'make setup' first"
    done
    install_package
    install_units
    install_catalog
    install_man_pages
    install_completion
    install_user
    install_config
    if systemd_running; then
        systemctl daemon-reload
        # An upgrade: a running daemon picks up the new code.
        systemctl try-restart portwatchd.service
        say "done; start it with: systemctl enable --now portwatchd"
    else
        say "done (systemd is not running here; enable it with: systemctl enable --now portwatchd)"
    fi
}

do_uninstall() {
    if systemd_running; then
        systemctl disable --now portwatchd.service portwatchd.socket 2>/dev/null || true
    fi
    rm -f "$UNIT_DIR/portwatchd.service" "$UNIT_DIR/portwatchd.socket"
    rm -f "$CATALOG_DIR/portwatchd.catalog"
    journalctl --update-catalog
    for page in "$SRC"/man/*.[0-9]; do
        [ -e "$page" ] || continue
        rm -f "$MAN_DIR/man${page##*.}/$(basename "$page")"
    done
    rm -f "$COMPLETION_DIR/portwatchctl" "$ZSH_COMPLETION_DIR/_portwatchctl" \
        "$FISH_COMPLETION_DIR/portwatchctl.fish"
    rm -f "$SYSUSERS_DIR/portwatchd.conf" "$TMPFILES_DIR/portwatchd.conf"
    if (cd / && "$PYTHON" -I -c 'import portwatchd' 2>/dev/null); then
        pip uninstall --quiet --yes --break-system-packages --root-user-action=ignore portwatchd
    fi
    if systemd_running; then
        systemctl daemon-reload
    fi
    say "removed; kept $CONFIG_DIR, /var/lib/portwatchd and the user and group $USER_NAME"
}

[ "$(id -u)" -eq 0 ] || die "must run as root (it installs system-wide)"
case ${1:-} in
    "") do_install ;;
    --uninstall) do_uninstall ;;
    *) die "usage: $0 [--uninstall]" ;;
esac
