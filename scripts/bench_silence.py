"""Benchmark: a host that vanishes, and no false alarm (k3net.tasks.hold, k3net.tasks.probe).

    .venv/bin/python scripts/bench_silence.py [--hosts 5] [--cuts 6] [--soak 180]

Agents on --hosts namespace hosts of one LAN share a private etcd (on host 0) at the default
timings (peer-ttl 90 s: nothing measured here is expiry). Prints:

- idle: the bytes and frames per second on one host's link, everything included (keepalives of
  its held connections, probes, mDNS, etcd);
- cuts: hosts 1.. in turn have their link cut (`ip link set down`): the time until their Node is
  Unknown/PeerUnreachable in etcd (read raw with etcdctl, every 30 ms), then from the link's
  return until it is Ready again; p50 and max;
- soak (--soak seconds, 0: none): 20 % frame loss on host 1's link (nftables, both directions),
  host 2's agent limited to 5 % of a core (a cgroup-v1 CPU quota), host 3's agent stopped
  (SIGSTOP) twice for 5 s: every live Node that etcd ever shows not-Ready (sampled every
  0.25 s), the suspicions by result, and the Node writes per node per minute.

Nothing is asserted; every namespace, process and cgroup made here is removed at the end.
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from k3lab.agents import AgentFactory, AgentProc
from k3lab.netns import Lan
from k3lab.nsclient import wait_for
from k3lab.raw import ETCD_PEER_PORT, ETCD_PORT, RawEtcd, write_config
from k3lab.services import EtcdServer

READY = {("True", "AgentReady"), ("True", "PeerAlive")}
CPU_CGROUP = Path("/sys/fs/cgroup/cpu")


def held_everywhere(procs: list[AgentProc]) -> bool:
    names = {p.name for p in procs}
    return all({x["name"] for x in p.get_json("/peers")["peers"] if x["held"]}
               == names - {p.name} for p in procs)


def unreachable(raw: RawEtcd, name: str) -> bool:
    return raw.ready(name) == ("Unknown", "PeerUnreachable")


def is_ready(raw: RawEtcd, name: str) -> bool:
    return raw.ready(name) in READY


def link_counters(lan: Lan, i: int) -> tuple[int, int]:
    """Bytes and frames through host i's link (its bridge port), both directions."""
    out = subprocess.run(["ip", "-n", lan.bridge_namespace, "-s", "-j", "link", "show", f"v{i}"],
                         capture_output=True, text=True, check=True).stdout
    stats = json.loads(out)[0]["stats64"]
    return (stats["rx"]["bytes"] + stats["tx"]["bytes"],
            stats["rx"]["packets"] + stats["tx"]["packets"])


def idle(lan: Lan, seconds: float) -> None:
    b0, f0 = link_counters(lan, 2)
    start = time.monotonic()
    time.sleep(seconds)
    b1, f1 = link_counters(lan, 2)
    elapsed = time.monotonic() - start
    print(f"idle: host 2's link {(b1 - b0) / elapsed:.0f} B/s, {(f1 - f0) / elapsed:.1f} frames/s"
          f" ({len(lan) - 1} peers, all traffic)")


def cuts(lan: Lan, procs: list[AgentProc], raw: RawEtcd, rounds: int) -> None:
    lost: list[float] = []
    back: list[float] = []
    for r in range(rounds):
        j = 1 + r % (len(lan) - 1)
        name = procs[j].name
        wait_for(lambda: held_everywhere(procs), 60, what="every peer held")
        time.sleep(random.random())  # any phase of the keepalives
        start = time.monotonic()
        lan[j].link_down()
        wait_for(functools.partial(unreachable, raw, name), 30, interval=0.03,
                 what=f"{name} unreachable")
        lost.append(time.monotonic() - start)
        start = time.monotonic()
        lan[j].link_up()
        wait_for(functools.partial(is_ready, raw, name), 30, interval=0.03,
                 what=f"{name} Ready")
        back.append(time.monotonic() - start)
        print(f"cut {name}: Unknown/PeerUnreachable after {lost[-1]:.2f}s, Ready"
              f" {back[-1]:.2f}s after its link returned", flush=True)
    print(f"cuts: link cut -> PeerUnreachable p50 {statistics.median(lost):.2f}s max"
          f" {max(lost):.2f}s; link back -> Ready p50 {statistics.median(back):.2f}s max"
          f" {max(back):.2f}s ({rounds} cuts)")


def lossy(lan: Lan, i: int, percent: int) -> None:
    """Drop `percent` % of the frames to and from host i, at random (nftables in the bridge's
    namespace, on its bridge port; removed with the namespace)."""
    script = (
        "add table bridge bench_silence\n"
        "add chain bridge bench_silence drops"
        " { type filter hook forward priority 0 ; policy accept ; }\n"
        f'add rule bridge bench_silence drops meta iifname "v{i}" numgen random mod 100'
        f" < {percent} drop\n"
        f'add rule bridge bench_silence drops meta oifname "v{i}" numgen random mod 100'
        f" < {percent} drop\n"
    )
    subprocess.run(["ip", "netns", "exec", lan.bridge_namespace, "nft", "-f", "-"],
                   input=script, text=True, check=True)


def soak(lan: Lan, procs: list[AgentProc], raw: RawEtcd, seconds: float,
         cgroup: Path) -> None:
    lossy(lan, 1, 20)
    cgroup.mkdir(exist_ok=True)
    (cgroup / "cpu.cfs_period_us").write_text("100000")
    (cgroup / "cpu.cfs_quota_us").write_text("5000")
    (cgroup / "cgroup.procs").write_text(str(procs[2].proc.pid))
    names = [p.name for p in procs]
    writes0 = sum(p.metric("k3net_node_writes_total") for p in procs)
    before = {r: sum(p.metric("k3net_suspicions_total", result=r) for p in procs)
              for r in ("confirmed", "refuted", "withheld")}
    not_ready: list[tuple[float, str, object]] = []
    start = time.monotonic()
    stops = [start + seconds * 0.2, start + seconds * 0.6]
    while (elapsed := time.monotonic() - start) < seconds:
        if stops and time.monotonic() >= stops[0]:
            stops.pop(0)
            procs[3].signal(signal.SIGSTOP)
            time.sleep(5)
            procs[3].signal(signal.SIGCONT)
        for name in names:
            if (state := raw.ready(name)) not in READY:
                not_ready.append((round(elapsed, 1), name, state))
        time.sleep(0.25)
    writes = sum(p.metric("k3net_node_writes_total") for p in procs) - writes0
    suspicions = {r: sum(p.metric("k3net_suspicions_total", result=r) for p in procs) - n
                  for r, n in before.items()}
    print(f"soak {elapsed:.0f}s (20 % loss on {names[1]}, {names[2]} at 5 % of a core,"
          f" {names[3]} stopped twice for 5 s): live Nodes seen not-Ready: {len(not_ready)}"
          f" {not_ready[:10]}; suspicions {suspicions}; "
          f"{writes / len(procs) / (elapsed / 60):.2f} writes per node per minute")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=5)
    parser.add_argument("--cuts", type=int, default=6)
    parser.add_argument("--soak", type=float, default=180.0)
    args = parser.parse_args()
    cgroup = CPU_CGROUP / f"k3net-bench-{random.randrange(1 << 30)}"
    with tempfile.TemporaryDirectory(prefix="bench-silence-") as tmp:
        agents = AgentFactory(Path(tmp))
        try:
            with Lan(args.hosts) as lan, EtcdServer(
                    Path(tmp) / "etcd", client_host=lan[0].address, client_port=ETCD_PORT,
                    peer_port=ETCD_PEER_PORT, netns=lan[0].name) as etcd:
                raw = RawEtcd(lan[0], etcd.address)
                config = write_config(Path(tmp) / "k3.yaml", {"type": "etcd", "etcd": {
                    "endpoints": [etcd.endpoint], "dial_timeout": "2s"}})
                procs = [agents.start(host, f"node-{i}", config=config)
                         for i, host in enumerate(lan.hosts)]
                for proc in procs:
                    proc.wait_ready()
                wait_for(lambda: all(raw.ready(p.name) in READY for p in procs), 30,
                         what="every Node Ready")
                wait_for(lambda: held_everywhere(procs), 60, what="every peer held")
                idle(lan, 30)
                if args.cuts:
                    cuts(lan, procs, raw, args.cuts)
                if args.soak:
                    soak(lan, procs, raw, args.soak, cgroup)
        finally:
            if cgroup.exists():
                for pid in (cgroup / "cgroup.procs").read_text().split():
                    (CPU_CGROUP / "cgroup.procs").write_text(pid)
                cgroup.rmdir()
            agents.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
