# Shared by scripts/run and scripts/test: make sure .venv exists with k3net and the dependency
# groups given as arguments installed. Sourced, not run. With any group (a development
# environment: tests, lint, typing) the lab package (scripts/lab, `k3lab`) is installed editable
# beside k3net; `scripts/run` asks for none and gets the agent alone.

K3NET_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
K3NET_VENV="$K3NET_ROOT/.venv"

k3net_env() {
    local python="${PYTHON:-python3}"
    if [ ! -x "$K3NET_VENV/bin/python" ]; then
        echo "env: creating $K3NET_VENV"
        "$python" -m venv "$K3NET_VENV" || return 1
    fi
    # Dependency groups (PEP 735) need pip >= 25.1.
    "$K3NET_VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade "pip>=25.1" \
        || return 1
    local groups=() lab=()
    for group in "$@"; do groups+=(--group "$K3NET_ROOT/pyproject.toml:$group"); done
    if [ "$#" -gt 0 ]; then lab=(-e "$K3NET_ROOT/scripts/lab"); fi
    echo "env: installing k3net${*:+, the lab and groups: $*}"
    "$K3NET_VENV/bin/python" -m pip install -q --disable-pip-version-check \
        -e "$K3NET_ROOT" "${lab[@]}" "${groups[@]}" || return 1
    # pip compiles what it installs, but an editable install leaves k3net's own modules to the
    # first import, which PYTHONDONTWRITEBYTECODE keeps from saving them: every agent started
    # from this tree would compile them again (100-150 ms of its start).
    "$K3NET_VENV/bin/python" -m compileall -q "$K3NET_ROOT/k3net" >/dev/null || return 1
}
