"""A simulated multi-host LAN, and the numbers that prove k3net.

    nox -s lan -- --hosts 5 --store etcd --scenario all [--out results/lan.json]

Builds an N-host LAN from network namespaces (k3lab.netns.Lan: a bridge in a namespace
of its own, a veth per host, private 10.x addresses only inside the namespaces, multicast on),
runs one `k3net run` per host (sim/fleet.py) against ONE shared store reachable from every host
(sim/stores.py), runs the scenarios (registered in sim/scenarios.py, the clean-LAN ones in
sim/clean_lan.py), prints a table (sim/report.py) and writes JSON. Every namespace, link and
process it made is removed at the end, also on failure, SIGINT or SIGTERM.

Every time is measured from the STORE's point of view: a watcher polls the store every 50 ms
(sim/store_watch.py) and notes when each Node's Ready condition changed. With the memory store
every agent has its own store, so the watcher reads agent 0's /nodes instead (agent 0 is never
stopped, and the results say so).

Scenarios (`--scenario` takes one name, several separated by commas, or `all`):

  floor     bare zeroconf: an advertiser process per host, a browser on host 0; the time from
            an advertiser's start to the browser resolving it (what mDNS itself allows)
  join      every agent started at once; time from each agent's start to its Node Ready at the
            store (and, from the agents' logs, until every other agent discovered it)
  leave     SIGTERM one agent; time to Ready False, and whose reason (PeerLeft or AgentShutdown)
  crash     SIGKILL one agent; time to Unknown/PeerExpired
  linkcut   one host's link down: time to Unknown; link up again: time to Ready
  restart   SIGKILL one agent and start it again at once: the other Nodes must not flap
  outage    the store stops for 15 s while an agent leaves (SIGTERM during the outage); time from
            the store's return until it holds the true state, and transitions lost (etcd, mysql)
  steady    store writes per node per minute over --steady seconds at DEFAULT timings (etcd:
            per-key version and header revision; mysql: resource_version changes; memory: n/a)
  subnets   two subnets behind a router (mDNS does not cross it) sharing an etcd in the router
            namespace: crash and leave across the router vs within a segment, probes per
            second, and the cost of a /24 --scan (its own network and etcd, whatever --store)

Field LAN scenarios (sim/field_lan.py): field (a shared VM bridge on every host, a second
LAN address: SIGKILL -> not-Ready, steady writes at the defaults), crash-defaults (SIGKILL at
peer-ttl 90s / probe 15s), readdress, asymmetric (one-way TCP reject), two-clusters (two keys).

Silence scenarios (sim/silence.py, design section 7), at the DEFAULT timings (peer-ttl 90s, probe
15s): hostloss (a host's link cut, nothing closes: time to not-Ready, goal p50 <= 3s and max <=
5s; link up -> Ready, goal <= 3s) and gray (for --gray seconds one host loses 20% of its frames,
one agent gets 5% of a core, one is paused 2 x 5s: goal 0 live Nodes written not-Ready, <= 2.2
writes per node per minute).

Store cut-off (sim/cutoff.py, etcd only): cutoff (one agent loses the store while its LAN
works, its connections reset, then silently dropped, 3 peer-ttls each; another agent is killed
meanwhile: goal 0 live Nodes flapping during and after the cut, the cut agent's /readyz/store
503 within 15 s of the cut (the time is measured; etcd's request deadline or gRPC's keepalive)
and 200 after, the kill seen as usual).

Failure scenarios run at short timings (--peer-ttl, default 6s, so probes every 1s); steady state
restarts every agent at the defaults (peer-ttl 90s). The output says which timings each used.
"""

from __future__ import annotations

import sys

from k3lab.sim import cli


def main(argv: list[str] | None = None) -> int:
    return cli.main(argv, description=__doc__.split("\n\n")[0] if __doc__ else "")


if __name__ == "__main__":
    sys.exit(main())
