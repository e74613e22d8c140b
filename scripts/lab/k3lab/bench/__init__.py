"""The benchmarks: `peers` (one agent tracking P simulated peers), `outage` (store outages),
`store` (10,000 Nodes in etcd and MariaDB), `events` (the /events websocket fan-out), `page`
(the cluster page in headless chromium), `import_time` (the agent's import cost). Each is run
as `python -m k3lab.bench.<name>` or through its scripts/bench*.py entry point."""
