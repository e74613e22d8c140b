#!/bin/sh
# Install k3net as a systemd service: the tested install path of docs/operations.md.
#
#   sudo contrib/systemd/install.sh [SOURCE]
#   sudo systemctl enable --now k3net
#
# SOURCE is what pip installs: a built wheel (dist/k3net-*.whl), or a source tree (default:
# the clone this script is in). Steps, each skipped when already done (running it again
# upgrades k3net and keeps the configuration):
#
#   1. python3-venv, if this Python cannot make a virtualenv (Debian ships it apart);
#   2. a virtualenv in /opt/k3net with k3net installed into it (pip refuses to install into
#      Debian's own Python: PEP 668);
#   3. /etc/systemd/system/k3net.service (ExecStart=/opt/k3net/bin/k3net run) and
#      /etc/default/k3net (the K3NET_<FLAG> settings, all commented out);
#   4. /etc/k3net (0700): config.yaml (the embedded memory store) and cluster.key (a new random
#      key), both 0600 and kept if present: the unit hands them to the agent as credentials.
#      Every machine of a cluster needs the same key: copy it from the first one.
#   5. `systemd-analyze verify` of the unit, if systemd-analyze is there.
#
# Nothing is started: `systemctl enable --now k3net` does that.
#
# For tests and packagers, the places can be moved (all default to the paths above):
# K3NET_PREFIX, K3NET_ETC, K3NET_UNIT_DIR, K3NET_DEFAULTS; PYTHON (default python3);
# K3NET_PIP_ARGS (extra pip arguments, e.g. --no-index --find-links DIR).

set -eu

here=$(cd "$(dirname "$0")" && pwd)
source=${1:-$(cd "$here/../.." && pwd)}
prefix=${K3NET_PREFIX:-/opt/k3net}
etc=${K3NET_ETC:-/etc/k3net}
unit_dir=${K3NET_UNIT_DIR:-/etc/systemd/system}
defaults=${K3NET_DEFAULTS:-/etc/default/k3net}
python=${PYTHON:-python3}

say() { echo "install.sh: $*"; }
die() { echo "install.sh: $*" >&2; exit 1; }

[ -e "$source" ] || die "$source: no such wheel or source tree"
command -v "$python" >/dev/null || die "$python not found (Debian: apt-get install python3)"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    die "k3net needs Python 3.11 or later; $python is $("$python" -V 2>&1)"

# 1. venv needs ensurepip, which Debian puts in python3-venv.
if [ ! -x "$prefix/bin/python" ] && ! "$python" -c 'import ensurepip' 2>/dev/null; then
    command -v apt-get >/dev/null || die "$python cannot make a virtualenv (no ensurepip)"
    say "installing python3-venv"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >/dev/null ||
        die "could not install python3-venv (apt-get update first?)"
fi

# 2. The virtualenv, and k3net in it.
if [ ! -x "$prefix/bin/python" ]; then
    say "creating the virtualenv $prefix"
    "$python" -m venv "$prefix"
fi
say "installing k3net from $source"
# (K3NET_PIP_ARGS is split into words on purpose)
# shellcheck disable=SC2086
"$prefix/bin/python" -m pip install -q --disable-pip-version-check --upgrade \
    ${K3NET_PIP_ARGS:-} "$source"
"$prefix/bin/k3net" --version >/dev/null || die "$prefix/bin/k3net does not run"

# 3. The unit, pointing at this prefix and these files, and the settings file.
mkdir -p "$unit_dir"
sed -e "s|/opt/k3net/|$prefix/|g" -e "s|/etc/k3net/|$etc/|g" \
    -e "s|/etc/default/k3net|$defaults|g" \
    "$here/k3net.service" > "$unit_dir/k3net.service.tmp"
chmod 0644 "$unit_dir/k3net.service.tmp"
mv "$unit_dir/k3net.service.tmp" "$unit_dir/k3net.service"
say "wrote $unit_dir/k3net.service"
if [ ! -e "$defaults" ]; then
    mkdir -p "$(dirname "$defaults")"
    install -m 0644 "$here/k3net.env" "$defaults"
    say "wrote $defaults"
fi

# 4. The credentials: root-only files the unit loads (LoadCredential=).
umask 077
mkdir -p "$etc"
chmod 0700 "$etc"
if [ ! -e "$etc/config.yaml" ]; then
    cat > "$etc/config.yaml" <<'EOF'
# The k3 config: k3net reads its storage: section (the store shared with the Go components)
# and its network: section (any `k3net run` flag by name). See docs/operations.md.
storage:
  type: memory
EOF
    say "wrote $etc/config.yaml (memory store: edit storage: for etcd or MySQL)"
fi
if [ ! -e "$etc/cluster.key" ]; then
    "$prefix/bin/python" -c 'import secrets; print(secrets.token_hex(32))' > "$etc/cluster.key"
    say "wrote a new cluster key to $etc/cluster.key: copy this same file to every machine"
fi
chmod 0600 "$etc/config.yaml" "$etc/cluster.key"

# 5. Check the unit as systemd reads it.
if command -v systemd-analyze >/dev/null; then
    systemd-analyze verify "$unit_dir/k3net.service"
    say "systemd-analyze verify: ok"
fi
say "done; start it with: systemctl daemon-reload && systemctl enable --now k3net"
