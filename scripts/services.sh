# Test services for k3net: a private etcd and the machine's MariaDB.
#
# Source this file, then call `start_services` before the tests and `stop_services` after:
#
#     . scripts/services.sh
#     start_services || exit 1
#     trap stop_services EXIT
#
# start_services installs etcd (Debian etcd-server/etcd-client), MariaDB and nftables when missing, starts
# a fresh private etcd on 127.0.0.1:23790 (data in .k3net-test/etcd), makes sure MariaDB answers
# on its Debian socket (starting it if needed), recreates the database k3net_test, and exports
# the K3NET_TEST_* variables the store tests read (under pytest-xdist each worker starts an etcd
# of its own and makes the database <name>_<worker> beside it: tests/store/conftest.py).
# stop_services stops what start_services started, and nothing else: a MariaDB that was already
# running is left running.
# Every wait is bounded. Functions return non-zero on failure and never exit the caller's shell.

K3NET_SERVICES_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
K3NET_SERVICES_DIR="$K3NET_SERVICES_ROOT/.k3net-test"
# Overridable, so that two checkouts can run their suites side by side.
K3NET_ETCD_CLIENT_PORT="${K3NET_ETCD_CLIENT_PORT:-23790}"
K3NET_ETCD_PEER_PORT="${K3NET_ETCD_PEER_PORT:-23800}"
K3NET_MYSQL_SOCKET=/run/mysqld/mysqld.sock
K3NET_MYSQL_DB="${K3NET_MYSQL_DB:-k3net_test}"

_svc_say() { echo "services: $*"; }

# _svc_wait SECONDS COMMAND...: run COMMAND every 0.2 s until it succeeds or time runs out.
_svc_wait() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            return 1
        fi
        sleep 0.2
    done
}

_svc_apt_install() {
    _svc_say "installing $*"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

_svc_etcd_healthy() {
    ETCDCTL_API=3 etcdctl --endpoints="127.0.0.1:$K3NET_ETCD_CLIENT_PORT" \
        --dial-timeout=1s --command-timeout=1s endpoint health
}

_svc_our_etcd_healthy() {
    kill -0 "$K3NET_ETCD_PID" && _svc_etcd_healthy
}

_svc_mysql_answers() {
    mariadb --protocol=socket --socket="$K3NET_MYSQL_SOCKET" -uroot --connect-timeout=2 \
        -e 'SELECT 1'
}

_svc_start_etcd() {
    if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null; then
        _svc_apt_install etcd-server etcd-client || return 1
    fi
    local dir="$K3NET_SERVICES_DIR/etcd"
    local peer="http://127.0.0.1:$K3NET_ETCD_PEER_PORT"
    local client="http://127.0.0.1:$K3NET_ETCD_CLIENT_PORT"
    rm -rf "$dir"
    mkdir -p "$dir"
    _svc_say "starting etcd on 127.0.0.1:$K3NET_ETCD_CLIENT_PORT"
    etcd --name k3net-test --data-dir "$dir/data" \
        --listen-client-urls "$client" --advertise-client-urls "$client" \
        --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
        --initial-cluster "k3net-test=$peer" --initial-cluster-state new \
        --logger zap --log-level error >"$dir/etcd.log" 2>&1 &
    K3NET_ETCD_PID=$!
    # Healthy and still ours: a stale etcd on the same port would answer while ours failed to bind.
    if ! _svc_wait 20 _svc_our_etcd_healthy; then
        _svc_say "etcd did not become healthy within 20s; last log lines:"
        tail -n 20 "$dir/etcd.log"
        kill "$K3NET_ETCD_PID" 2>/dev/null
        unset K3NET_ETCD_PID
        return 1
    fi
}

_svc_start_mariadb() {
    if _svc_mysql_answers >/dev/null 2>&1; then
        _svc_say "MariaDB already answers on $K3NET_MYSQL_SOCKET"
        return 0
    fi
    if [[ ! -x /usr/sbin/mariadbd ]]; then
        _svc_apt_install mariadb-server mariadb-client || return 1
        # Where apt may start services, the package has started it already.
        if _svc_wait 5 _svc_mysql_answers; then
            return 0
        fi
    fi
    mkdir -p /run/mysqld
    chown mysql:mysql /run/mysqld
    if [[ ! -d /var/lib/mysql/mysql ]]; then
        _svc_say "initialising /var/lib/mysql"
        mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null 2>&1 || return 1
    fi
    _svc_say "starting MariaDB"
    mkdir -p "$K3NET_SERVICES_DIR"
    start-stop-daemon --start --oknodo --background --make-pidfile \
        --pidfile "$K3NET_SERVICES_DIR/mariadb.pid" --exec /usr/sbin/mariadbd -- \
        --user=mysql --socket="$K3NET_MYSQL_SOCKET" || return 1
    K3NET_MARIADB_STARTED=1
    if ! _svc_wait 60 _svc_mysql_answers; then
        _svc_say "MariaDB did not answer on $K3NET_MYSQL_SOCKET within 60s"
        return 1
    fi
}

# Tools the netns tests use beyond iproute2: nft for one-way firewall shapes.
_svc_tools() {
    if ! command -v nft >/dev/null; then
        _svc_apt_install nftables || return 1
    fi
}

start_services() {
    _svc_tools || return 1
    _svc_start_etcd || return 1
    _svc_start_mariadb || return 1
    mariadb --protocol=socket --socket="$K3NET_MYSQL_SOCKET" -uroot -e \
        "DROP DATABASE IF EXISTS $K3NET_MYSQL_DB; CREATE DATABASE $K3NET_MYSQL_DB" || return 1
    export K3NET_TEST_ETCD="127.0.0.1:$K3NET_ETCD_CLIENT_PORT"
    export K3NET_TEST_MYSQL_SOCKET="$K3NET_MYSQL_SOCKET"
    export K3NET_TEST_MYSQL_DB="$K3NET_MYSQL_DB"
    _svc_say "ready: etcd $K3NET_TEST_ETCD, MariaDB $K3NET_TEST_MYSQL_SOCKET database $K3NET_TEST_MYSQL_DB"
}

stop_services() {
    if [[ -n "${K3NET_ETCD_PID:-}" ]]; then
        _svc_say "stopping etcd"
        kill "$K3NET_ETCD_PID" 2>/dev/null
        # etcd exits within a second on SIGTERM; do not wait forever if it does not.
        _svc_wait 10 bash -c "! kill -0 $K3NET_ETCD_PID" || kill -9 "$K3NET_ETCD_PID" 2>/dev/null
        wait "$K3NET_ETCD_PID" 2>/dev/null || true  # its exit status (143) is no failure of ours
        unset K3NET_ETCD_PID
    fi
    if [[ -n "${K3NET_MARIADB_STARTED:-}" ]]; then
        _svc_say "stopping MariaDB"
        start-stop-daemon --stop --quiet --oknodo --pidfile "$K3NET_SERVICES_DIR/mariadb.pid" \
            --retry TERM/30/KILL/5 || true
        unset K3NET_MARIADB_STARTED
    fi
    return 0
}
