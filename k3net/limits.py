"""The caps on what an outsider can make an agent spend. Each is a named constant with the reason
for its value; `docs/network.md` ("Limits") lists them, and every time one is reached
`k3net_limit_hits_total{limit=...}` counts it (`Metrics.limit_hit`), with the names of `NAMES`.

A cap bounds one source (a peer, a client address) and the whole agent, so that one noisy
source cannot take what the others need, and all of them together stay inside what the systemd
unit allows (`LimitNOFILE`, `TasksMax`, `MemoryMax`: see the docs). Pure constants: no imports.
"""

from __future__ import annotations

# Addresses probed per peer. A machine has a few LAN addresses (IPv4, a ULA, a global IPv6, a
# second NIC); past that an announcement is more likely a flood than a host. Every address is
# dialled at once, so this is also the sockets one probe can open (times tcp.ATTEMPTS).
ADDRESSES_PER_PEER = 8

# Peers followed (probed, held) at once. Far above a LAN's agents (k3 clusters are tens of
# machines; the benchmark LAN goes to 2,000); at the cap, a peer mDNS announced that never
# proved itself is the first to go.
PEERS = 2048

# Sockets open for probing at once, over every peer (not per peer): with the holds and the
# server's connections, it keeps the agent well under LimitNOFILE, and 256 concurrent
# connection attempts still probe a full table of PEERS every few seconds.
PROBE_SOCKETS = 256

# mDNS entries resolved at once. One at a time, an entry whose records never come (a PTR with
# nothing behind it) made every other entry wait for its whole timeout (3 s): one packet of 8
# such records delayed a new agent's discovery from 1.5 s to 22 s. With 16, a packet of up to
# 15 leaves a resolver free; each costs a task and a pending query, nothing more.
RESOLVER_SLOTS = 16

# Tries of an mDNS entry that does not resolve before it is dropped (until it is announced
# again). A real agent answers the first query or one of the next (a lost packet); an entry
# that never answers would otherwise cost a query every RETRY_LAST seconds forever.
RESOLVE_TRIES = 4

# Peers whose /hold this agent holds open (k3net.tasks.hold): one socket each here and one at
# the peer. Every peer followed is held: a crash is seen in a second, and a vanished host in a
# few (its held connection goes silent), whatever the LAN's size. The kernel does the watching
# (TCP keepalive), so a held peer costs a file descriptor, a sleeping task and a few hundred
# bytes a second on the wire, no Python work; `agent._raise_file_limit` makes room for them.
HELD = PEERS

# Held /hold connections from one client address. One agent holds one connection to us; a
# few more cover several agents on one host and a restarted one whose old connection has not
# ended yet.
HOLDS_PER_CLIENT = 4

# Held /hold connections in all, each one file descriptor: one per agent that holds us (every
# agent holds every peer it follows, so as many as the peers an agent follows). With HELD, the
# probes' sockets and the subscribers, an agent at every cap needs about 4,700 descriptors: the
# unit's LimitNOFILE is 16384, twice that with room.
HOLDS = PEERS

# /reach questions answered at once, from one client address and in all. Each makes this
# agent probe a peer it already follows (never an address from the request), so it costs what a
# probe costs: a suspicion asks at most 3 agents, and a client with more than a few questions
# under way at once is not a peer being careful but a flood. Past either cap: 429 / 503.
REACHES_PER_CLIENT = 4
REACHES = 32

# Open /events websockets from one client address: a few browser tabs and `k3net watch`.
SUBSCRIBERS_PER_CLIENT = 8

# Open /events websockets in all. Each costs about 25 kB (its queue, hypercorn's buffers): 256
# is about 6 MB, and more dashboards than any cluster has.
SUBSCRIBERS = 256

# Bytes of one websocket message a client may send. /events clients send nothing; hypercorn's
# default (16 MiB) let four clients hold 61 MB with messages never finished.
WEBSOCKET_MESSAGE = 1024

# `rejected` events kept for resuming, in a ring apart from the Node changes: a flood of bad
# announcements must not push real transitions out of the history (`k3net.events`).
REJECTED_HISTORY = 64

# Introductions (`POST /hello`, k3net.tasks.introduce) admitted within INTRODUCTION_WINDOW
# seconds from one client address: each makes this agent probe that address, so a stranger gets
# a few probes of itself, no more. 4 covers several agents on one host, or one restarting.
INTRODUCTIONS_PER_CLIENT = 4
# ... and from every client together: a LAN of a few hundred agents greeting a restarted one
# within the window; past that the others still find it over mDNS and the store.
INTRODUCTIONS = 256
INTRODUCTION_WINDOW = 10.0

# The `limit` label of k3net_limit_hits_total, one per cap above but WEBSOCKET_MESSAGE, which
# hypercorn enforces itself (close code 1009) without telling the app.
NAMES = (
    "addresses-per-peer",
    "peers",
    "probe-sockets",
    "held",
    "resolver-slots",
    "resolve-tries",
    "holds-per-client",
    "holds",
    "reaches-per-client",
    "reaches",
    "subscribers-per-client",
    "subscribers",
    "rejected-history",
    "introductions-per-client",
    "introductions",
)
