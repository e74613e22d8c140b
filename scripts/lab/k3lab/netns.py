"""Network namespaces for tests and simulations: private LANs on one machine, so that mDNS never reaches a real
interface.

    with LoopbackHost() as host:                 # one namespace, multicast on `lo`
        proc = host.popen([sys.executable, "-m", "k3net", "run", ...])

    with Lan(3) as lan:                          # three namespaces on one bridge
        a, b, c = lan.hosts
        b.link_down(); ...; b.link_up()

    with RoutedLan((2, 2)) as net:               # two subnets joined by a router namespace
        (a, b), (c, d) = net.segments            # unicast crosses, multicast (mDNS) does not

Field shapes, as real machines have them (design section 5), on any host:

    lan.add_shared_bridge()                      # virbr0 192.168.122.1/24 on EVERY host
    host.add_address("10.77.0.50/24")            # a second LAN address
    host.readdress("10.77.0.60/24")              # a DHCP renewal: new address, old one gone
    host.reject_tcp("10.77.0.2", 7946)           # one-way: this host's connects get a reset

Nothing is created in the root namespace: the bridge lives in a namespace of its own and each
veth pair is created there with its peer end moved straight into the host namespace as `eth0`.
Deleting the namespaces therefore removes every link as well.

Names are `k3t<pid>-<n>-...` (pid of the test process, n counts LANs in this process), so two
test runs never collide and `remove_leftovers()` can tell a crashed run's namespaces (their pid
is dead) from a live one's. Needs root and iproute2.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import signal
import subprocess
from collections.abc import Sequence
from typing import Any

PREFIX = "k3t"
_COMMAND_TIMEOUT = 15  # seconds; any single `ip` command that takes longer is broken
_STOP_TIMEOUT = 5  # seconds a process gets to exit after SIGTERM before SIGKILL
_counter = itertools.count()
# What `Lan.add_shared_bridge` builds by default: libvirt's bridge, repeated on every host.
VIRBR = ("virbr0", "192.168.122.1/24")
# The nftables table that `Host.reject_tcp` fills; deleting it undoes every reject.
_NFT_TABLE = "k3net_harness"


class NetnsError(RuntimeError):
    """An `ip` command failed; the message has the command and its stderr."""


def can_use_netns() -> bool:
    """True if this process may create namespaces (root and `ip` available)."""
    if os.geteuid() != 0:
        return False
    try:
        subprocess.run(["ip", "netns", "list"], capture_output=True, timeout=_COMMAND_TIMEOUT,
                       check=True)
    except (OSError, subprocess.SubprocessError):
        return False
    return True


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = ["ip", *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=_COMMAND_TIMEOUT)
    if check and done.returncode != 0:
        raise NetnsError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done


def _nft(namespace: str, script: str) -> None:
    """Run an nftables script in `namespace` (Debian's `nftables`)."""
    done = subprocess.run(["ip", "netns", "exec", namespace, "nft", "-f", "-"], input=script,
                          capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise NetnsError(f"nft in {namespace}: {done.stderr.strip()}")


def _new_prefix() -> str:
    return f"{PREFIX}{os.getpid()}-{next(_counter)}"


def _stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(_STOP_TIMEOUT)


def _delete_namespace(name: str) -> None:
    # A namespace stays alive while a process runs in it: stop ours first (by pid).
    done = _ip("netns", "pids", name, check=False)
    for pid in done.stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ValueError, ProcessLookupError):
            pass
    _ip("netns", "delete", name, check=False)


def remove_leftovers(prefix: str = PREFIX) -> list[str]:
    """Delete namespaces (and so their links) left by test runs that died without cleaning up:
    names `<prefix><pid>-...` whose pid no longer runs. Returns the names removed."""
    removed = []
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if not name.startswith(prefix):
            continue
        pid_text = name[len(prefix):].split("-", 1)[0]
        if not pid_text.isdigit():
            continue
        if int(pid_text) == os.getpid() or os.path.exists(f"/proc/{pid_text}"):
            continue  # a live run owns it
        _delete_namespace(name)
        removed.append(name)
    return removed


class Host:
    """One network namespace: a machine on the test LAN."""

    def __init__(self, name: str, address: str, interface: str) -> None:
        self.name = name  # the namespace name
        self.address = address  # the host's IPv4 address on its interface
        self.interface = interface  # `eth0` on a Lan, `lo` for a LoopbackHost
        self.gateway: str | None = None  # the default route's next hop (a RoutedLan host)
        self._procs: list[subprocess.Popen[Any]] = []

    def __repr__(self) -> str:
        return f"Host({self.name!r}, {self.address!r})"

    def argv(self, argv: Sequence[str]) -> list[str]:
        """`argv` wrapped to run inside this namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def popen(self, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Start a process in this namespace. It is stopped (SIGTERM, then SIGKILL) on cleanup
        if it still runs; `ip netns exec` execs the command, so the pid is the command's."""
        proc = subprocess.Popen(self.argv(argv), **popen_kwargs)
        self._procs.append(proc)
        return proc

    def run(self, argv: Sequence[str], *, check: bool = True, timeout: float = 30,
            **run_kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Run a command in this namespace to completion; text output is captured."""
        run_kwargs.setdefault("capture_output", True)
        run_kwargs.setdefault("text", True)
        return subprocess.run(self.argv(argv), check=check, timeout=timeout, **run_kwargs)

    def link_down(self) -> None:
        """Cut this host off the LAN (its multicast route goes with the link)."""
        _ip("-n", self.name, "link", "set", self.interface, "down")

    def link_up(self) -> None:
        """Reconnect; re-adds the multicast route that `link_down` deleted."""
        _ip("-n", self.name, "link", "set", self.interface, "up")
        _ip("-n", self.name, "link", "set", self.interface, "multicast", "on")
        _ip("-n", self.name, "route", "replace", "224.0.0.0/4", "dev", self.interface)
        self._route_default()

    def plug(self, interface: str) -> None:
        """Bring another interface of this host up (a cable plugged in)."""
        _ip("-n", self.name, "link", "set", interface, "up")

    def unplug(self, interface: str) -> None:
        """Take an interface of this host down (a cable pulled, the Wi-Fi gone)."""
        _ip("-n", self.name, "link", "set", interface, "down")

    def _route_default(self) -> None:
        if self.gateway is not None:  # a link going down takes the default route with it
            _ip("-n", self.name, "route", "replace", "default", "via", self.gateway)

    def wait_addresses_settled(self, timeout: float = 10) -> bool:
        """Wait until no address of this host is still tentative (IPv6 duplicate address
        detection, ~1-2 s after a link comes up): a program that sends to an IPv6 multicast
        group before that gets "cannot assign requested address" (Serf's mDNS discovery gives
        up its first poll on it). True once settled, False after `timeout` seconds."""
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.ip("-6", "addr", "show", "tentative", check=False).stdout.strip():
                return True
            time.sleep(0.1)
        return False

    def stop_processes(self) -> None:
        for proc in self._procs:
            _stop(proc)
        self._procs.clear()

    # --- field shapes ----------------------------------------------------------------------

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`ip ARGS` in this namespace."""
        return _ip("-n", self.name, *args, check=check)

    def addresses(self, interface: str | None = None) -> list[str]:
        """The IPv4 addresses (`a.b.c.d/len`) on `interface` (default: the LAN interface), in
        the kernel's order (primary first)."""
        out = self.ip("-j", "-4", "addr", "show", "dev", interface or self.interface).stdout
        return [f"{a['local']}/{a['prefixlen']}" for link in json.loads(out or "[]")
                for a in link.get("addr_info", [])]

    def add_bridge(self, name: str = VIRBR[0], address: str = VIRBR[1]) -> None:
        """A VM/container bridge on this host, as libvirt's `virbr0` or `docker0`: `address` on
        it, multicast on, and carrier from a veth whose one end is enslaved to it (as a running
        guest's tap would be); the other end stays unaddressed in this namespace. Traffic to
        `address` from this host stays on this host, whatever other host repeats it."""
        port, guest = f"{name}-nic", f"{name}-vm"
        if len(guest) > 15:
            raise ValueError(f"bridge name too long for its veth names: {name!r}")
        self.ip("link", "add", name, "type", "bridge")
        self.ip("addr", "add", address, "dev", name)
        self.ip("link", "add", port, "type", "veth", "peer", "name", guest)
        self.ip("link", "set", port, "master", name)
        for link in (guest, port, name):
            self.ip("link", "set", link, "up")
        self.ip("link", "set", name, "multicast", "on")

    def add_address(self, address: str) -> None:
        """One more IPv4 address (`a.b.c.d/len`) on the LAN interface; `self.address` stays."""
        self.ip("addr", "add", address, "dev", self.interface)

    def readdress(self, address: str) -> None:
        """Move this host to a new LAN address (`a.b.c.d/len`) as a DHCP renewal does: add the
        new one, delete the old one, re-add the multicast route if it went with it.
        `self.address` becomes the new address. Secondary addresses are promoted, not deleted,
        when the primary goes (systemd's default), so the new one survives in any subnet."""
        old = next((a for a in self.addresses() if a.split("/")[0] == self.address), None)
        self.run(["sysctl", "-q", "-w",
                  f"net.ipv4.conf.{self.interface}.promote_secondaries=1"])
        self.add_address(address)
        if old is not None:
            self.ip("addr", "del", old, "dev", self.interface)
        self.ip("route", "replace", "224.0.0.0/4", "dev", self.interface)
        self.address = address.split("/")[0]
        if self.gateway is not None and ipaddress.ip_address(self.gateway) in \
                ipaddress.ip_interface(address).network:
            self._route_default()

    def reject_tcp(self, address: str, port: int) -> None:
        """A one-way firewall: this host's TCP connections to `address:port` are answered with
        a reset (the caller sees "connection refused"); nothing else changes, and connections
        the other way still work. Needs Debian's `nftables`."""
        self._block_tcp(address, port, "reject with tcp reset")

    def drop_tcp(self, address: str, port: int) -> None:
        """As `reject_tcp`, but silent: this host's packets to `address:port` are dropped, so
        its connections there (those open too) hang until their timeouts."""
        self._block_tcp(address, port, "drop")

    def _block_tcp(self, address: str, port: int, verdict: str) -> None:
        family = "ip6" if ipaddress.ip_address(address).version == 6 else "ip"
        self._nft(f"add table inet {_NFT_TABLE}\n"
                  f"add chain inet {_NFT_TABLE} out "
                  "{ type filter hook output priority 0 ; policy accept ; }\n"
                  f"add rule inet {_NFT_TABLE} out {family} daddr {address} tcp dport {port} "
                  f"{verdict}\n")

    def clear_rejects(self) -> None:
        """Undo every `reject_tcp` and `drop_tcp` on this host."""
        self._nft(f"add table inet {_NFT_TABLE}\ndelete table inet {_NFT_TABLE}\n")

    def _nft(self, script: str) -> None:
        _nft(self.name, script)


class _Namespaces:
    """Owns a set of namespaces; `close()` (or leaving `with`) deletes them all."""

    def __init__(self) -> None:
        self.prefix = _new_prefix()
        self._namespaces: list[str] = []
        self.hosts: list[Host] = []

    def _add_namespace(self, suffix: str) -> str:
        name = f"{self.prefix}-{suffix}"
        _ip("netns", "add", name)
        self._namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")
        return name

    def close(self) -> None:
        """Stop the hosts' processes, delete the namespaces. Safe to call twice."""
        for host in self.hosts:
            host.stop_processes()
        while self._namespaces:
            _delete_namespace(self._namespaces.pop())

    def __enter__(self):  # type: ignore[no-untyped-def]
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class LoopbackHost(_Namespaces, Host):
    """One namespace whose `lo` carries multicast: enough for several agents on one "host"
    (different ports). The object is itself the host (`.name`, `.address`, `.popen`, ...)."""

    def __init__(self) -> None:
        _Namespaces.__init__(self)
        try:
            name = self._add_namespace("lo")
            _ip("-n", name, "link", "set", "lo", "multicast", "on")
            _ip("-n", name, "route", "add", "224.0.0.0/4", "dev", "lo")
        except BaseException:
            self.close()
            raise
        Host.__init__(self, name, "127.0.0.1", "lo")
        self.hosts.append(self)


class Lan(_Namespaces):
    """`n_hosts` namespaces joined by a bridge that lives in a namespace of its own. Host i
    (from 0) has `eth0` with the (i+1)-th address of `subnet`, multicast on, and a route for
    224.0.0.0/4 on eth0. An IPv6 `subnet` (as `fd77::/64`) makes an IPv6-only LAN: no IPv4
    address anywhere, only that one and the kernel's link-local address."""

    def __init__(self, n_hosts: int, subnet: str = "10.77.0.0/24") -> None:
        super().__init__()
        network = ipaddress.ip_network(subnet)
        addresses = list(itertools.islice(network.hosts(), n_hosts))
        if len(addresses) < n_hosts:
            raise ValueError(f"{subnet} has room for {len(addresses)} hosts, not {n_hosts}")
        try:
            self.bridge_namespace = self._add_namespace("br")
            br = self.bridge_namespace
            _ip("-n", br, "link", "add", "br0", "type", "bridge")
            _ip("-n", br, "link", "set", "br0", "up")
            for i, address in enumerate(addresses):
                name = self._add_namespace(f"h{i}")
                _ip("-n", br, "link", "add", f"v{i}", "type", "veth",
                    "peer", "name", "eth0", "netns", name)
                _ip("-n", br, "link", "set", f"v{i}", "master", "br0")
                _ip("-n", br, "link", "set", f"v{i}", "up")
                # (No duplicate address detection: the test LAN's addresses are unique, and
                # an address still tentative could not be bound at once.)
                _ip("-n", name, "addr", "add", f"{address}/{network.prefixlen}", "dev", "eth0",
                    *(("nodad",) if network.version == 6 else ()))
                host = Host(name, str(address), "eth0")
                host.link_up()
                self.hosts.append(host)
        except BaseException:
            self.close()
            raise

    def __getitem__(self, i: int) -> Host:
        return self.hosts[i]

    def __len__(self) -> int:
        return len(self.hosts)

    def add_shared_bridge(self, name: str = VIRBR[0], address: str = VIRBR[1]) -> None:
        """The same VM/container bridge, with the same address, on every host (see
        `Host.add_bridge`): what libvirt, docker or podman leave on most servers."""
        for host in self.hosts:
            host.add_bridge(name, address)

    def add_segment(self, subnet: str, *, unplugged: Sequence[int] = ()) -> None:
        """A second LAN segment (bridge `br1` in the bridge namespace) that every host joins with
        `eth1`, at the (i+1)-th address of `subnet`: a second NIC, or the Ethernet port beside the
        Wi-Fi. Hosts in `unplugged` have the cable out (link down; the address is there, as a
        DHCP client would get it once plugged): `Host.plug("eth1")`."""
        network = ipaddress.ip_network(subnet)
        addresses = list(itertools.islice(network.hosts(), len(self.hosts)))
        br = self.bridge_namespace
        _ip("-n", br, "link", "add", "br1", "type", "bridge")
        _ip("-n", br, "link", "set", "br1", "up")
        for i, (host, address) in enumerate(zip(self.hosts, addresses, strict=True)):
            _ip("-n", br, "link", "add", f"w{i}", "type", "veth",
                "peer", "name", "eth1", "netns", host.name)
            _ip("-n", br, "link", "set", f"w{i}", "master", "br1")
            _ip("-n", br, "link", "set", f"w{i}", "up")
            host.ip("addr", "add", f"{address}/{network.prefixlen}", "dev", "eth1")
            host.ip("link", "set", "eth1", "multicast", "on")
            if i not in unplugged:
                host.plug("eth1")

    def lose(self, percent: int) -> None:
        """The LAN drops `percent` % of the frames it forwards, at random, in both directions
        (a busy Wi-Fi, a bad cable); 0 makes it lossless again. Needs Debian's `nftables`."""
        script = f"add table bridge {_NFT_TABLE}\ndelete table bridge {_NFT_TABLE}\n"
        if percent:
            script += (f"add table bridge {_NFT_TABLE}\n"
                       f"add chain bridge {_NFT_TABLE} drops "
                       "{ type filter hook forward priority 0 ; policy accept ; }\n"
                       f"add rule bridge {_NFT_TABLE} drops numgen random mod 100 < {percent} drop\n")
        _nft(self.bridge_namespace, script)

    def split(self, side: Sequence[int], other: Sequence[int] | None = None) -> None:
        """The LAN splits in two: frames between the hosts in `side` and those in `other` (by
        default every other host) are dropped by the bridge, both ways (a failed link between
        two switches or racks), while every host still reaches the bridge's own address (where
        the lab's store listens) and the hosts in neither group. An empty `side` joins the LAN
        again. Needs Debian's `nftables`."""
        table = f"{_NFT_TABLE}_split"
        script = f"add table bridge {table}\ndelete table bridge {table}\n"
        if side:
            rest = [i for i in range(len(self.hosts)) if i not in side] if other is None \
                else other
            one = ", ".join(f'"v{i}"' for i in sorted(side))
            them = ", ".join(f'"v{i}"' for i in sorted(rest))
            script += (f"add table bridge {table}\n"
                       f"add chain bridge {table} cut "
                       "{ type filter hook forward priority 0 ; policy accept ; }\n"
                       f"add rule bridge {table} cut iifname {{ {one} }} oifname {{ {them} }} drop\n"
                       f"add rule bridge {table} cut iifname {{ {them} }} oifname {{ {one} }} drop\n")
        _nft(self.bridge_namespace, script)

    def lose_host(self, i: int, percent: int) -> str:
        """Host i's link drops `percent` % of its frames, at random, in both directions (a bad
        cable or a weak Wi-Fi on one machine); 0 makes it lossless again. The other hosts'
        frames between themselves are untouched. tc netem on both ends of its veth where the
        kernel has it (sch_netem), else nftables on the bridge's port (Debian's `nftables`):
        returns which ("netem" or "nftables")."""
        ends = [(self.hosts[i].name, self.hosts[i].interface), (self.bridge_namespace, f"v{i}")]
        if not percent:
            for namespace, dev in ends:  # no qdisc there (nftables was used): nothing to undo
                subprocess.run(["ip", "netns", "exec", namespace, "tc", "qdisc", "del", "dev",
                                dev, "root"], capture_output=True, timeout=_COMMAND_TIMEOUT,
                               check=False)
        elif all(subprocess.run(["ip", "netns", "exec", namespace, "tc", "qdisc", "replace",
                                 "dev", dev, "root", "netem", "loss", f"{percent}%"],
                                capture_output=True, timeout=_COMMAND_TIMEOUT,
                                check=False).returncode == 0 for namespace, dev in ends):
            return "netem"
        table = f"{_NFT_TABLE}_v{i}"
        script = f"add table bridge {table}\ndelete table bridge {table}\n"
        if percent:
            # prerouting sees every frame from the host (to the other hosts and to the bridge's
            # own address, where the store listens), postrouting every frame to it.
            script += f"add table bridge {table}\n"
            for chain, hook, match in (("in", "prerouting", "iifname"),
                                       ("out", "postrouting", "oifname")):
                script += (f"add chain bridge {table} {chain} "
                           f"{{ type filter hook {hook} priority 0 ; policy accept ; }}\n"
                           f"add rule bridge {table} {chain} {match} \"v{i}\" "
                           f"numgen random mod 100 < {percent} drop\n")
        _nft(self.bridge_namespace, script)
        return "nftables"


class RoutedLan(_Namespaces):
    """Several subnets joined by a router: a router namespace holds one bridge per subnet, with
    the subnet's first address on it, and forwards IPv4 unicast between them. Nothing forwards
    multicast, so mDNS stays inside each subnet (the point of this shape). Subnet k has
    `hosts_per_subnet[k]` hosts, each with `eth0` on the next addresses after the gateway, a
    default route via the gateway, and the multicast route on eth0.

        with RoutedLan((2, 2)) as net:
            (a, b), (c, d) = net.segments   # a, b on 10.79.1.0/24; c, d on 10.79.2.0/24
            net.router                      # a Host: run a shared store there (both reach it)
            net.gateways                    # ["10.79.1.1", "10.79.2.1"]
    """

    def __init__(self, hosts_per_subnet: Sequence[int] = (2, 2),
                 subnets: Sequence[str] = ("10.79.1.0/24", "10.79.2.0/24")) -> None:
        super().__init__()
        if len(hosts_per_subnet) != len(subnets):
            raise ValueError("one host count per subnet")
        self.segments: list[list[Host]] = []
        self.gateways: list[str] = []
        try:
            rt = self._add_namespace("rt")
            _ip("netns", "exec", rt, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
            for k, (count, subnet) in enumerate(zip(hosts_per_subnet, subnets, strict=True)):
                network = ipaddress.ip_network(subnet)
                gateway, *addresses = itertools.islice(network.hosts(), count + 1)
                if len(addresses) < count:
                    raise ValueError(f"{subnet} has room for {len(addresses)} hosts, not {count}")
                bridge = f"br{k}"
                _ip("-n", rt, "link", "add", bridge, "type", "bridge")
                _ip("-n", rt, "addr", "add", f"{gateway}/{network.prefixlen}", "dev", bridge)
                _ip("-n", rt, "link", "set", bridge, "up")
                self.gateways.append(str(gateway))
                segment = []
                for i, address in enumerate(addresses):
                    name = self._add_namespace(f"s{k}h{i}")
                    _ip("-n", rt, "link", "add", f"v{k}-{i}", "type", "veth",
                        "peer", "name", "eth0", "netns", name)
                    _ip("-n", rt, "link", "set", f"v{k}-{i}", "master", bridge)
                    _ip("-n", rt, "link", "set", f"v{k}-{i}", "up")
                    _ip("-n", name, "addr", "add", f"{address}/{network.prefixlen}",
                        "dev", "eth0")
                    host = Host(name, str(address), "eth0")
                    host.gateway = str(gateway)
                    host.link_up()
                    segment.append(host)
                    self.hosts.append(host)
                self.segments.append(segment)
            self.router = Host(rt, self.gateways[0], "br0")
        except BaseException:
            self.close()
            raise
