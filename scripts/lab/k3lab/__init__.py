"""k3net's lab: what the tests, the LAN simulation and the benchmarks build around the agent.
A development package (scripts/lab), installed editable beside k3net by scripts/env.sh and the
nox sessions; never in k3net's wheel, never imported by the agent.

- `netns`: hosts and LANs built from network namespaces (mDNS never reaches a real interface);
- `nsclient`: a thread inside a namespace for small blocking clients, and `wait_for` (bounded
  polling for a condition);
- `agents`: `k3net run` as a process on a namespace host;
- `services`: private etcd and MariaDB servers that a test or simulation may stop and start;
- `raw`: the shared store read and written raw, as the Go k3 store does;
- `reach`, `tls`, `browser`: what a host can reach, test certificates, headless chromium;
- `sim`: the simulated multi-host LAN and its scenarios (`python -m k3lab.lan`, or
  scripts/lan.py); `bench`: the benchmarks (scripts/bench*.py).

Needs root and iproute2 for the namespaces; the servers need Debian's etcd-server/etcd-client
and mariadb-server.
"""
