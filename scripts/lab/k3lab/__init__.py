"""Test and simulation harness: network namespaces, agent processes, private etcd/MariaDB
servers; never imported by the agent.

- `netns`: hosts and LANs built from network namespaces (mDNS never reaches a real interface);
- `nsclient`: a thread inside a namespace for small blocking clients, and `wait_for` (bounded
  polling for a condition);
- `agents`: `k3net run` as a process on a namespace host;
- `services`: private etcd and MariaDB servers that a test or simulation may stop and start;
- `raw`: the shared store read and written raw, as the Go k3 store does.

Tests (`tests/`) and simulations (`scripts/`) both import it. Needs root and iproute2 for the
namespaces; the servers need Debian's etcd-server/etcd-client and mariadb-server.
"""
