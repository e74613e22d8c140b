// The k3net cluster page. Plain JavaScript, no framework, nothing loaded from elsewhere.
//
// Data flow: one websocket on /events (a snapshot, or the messages missed since `seq` of this
// `epoch`, then one message per committed Node change) feeds `st.nodes`; changes mark rows
// dirty and one flush per animation frame updates only those rows, in place. /info and /readyz
// are polled for the agent panel, /events/snapshot for `lastSeen` (heartbeats are not streamed).
// All data is written with textContent: names and messages come from the LAN and the store.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const HOUR = 3600e3;
  const INFO_EVERY = 5000; // ms between /info + /readyz polls (the agent panel)
  const SEEN_EVERY = 10000; // ms between /events/snapshot polls (lastSeen only)
  const FETCH_DEADLINE = 4000; // ms an HTTP request may take (a LAN answers in a few ms)
  const BACKOFF = [250, 500, 1000, 2000, 4000, 5000]; // ms before reconnect attempt n
  const TL_ROWS = 40; // timeline rows shown (most eventful nodes first)
  const TL_EVENTS = 300; // events kept per node
  const READY_WORD = { True: "Ready", False: "NotReady", Unknown: "Unknown" };
  const READY_RANK = { False: 0, Unknown: 1, True: 2 };
  const KIND_WORD = { join: "joined", leave: "left", expiry: "expired", return: "returned", removed: "removed" };
  const COLS = ["node", "ready", "reason", "addresses", "port", "lastSeen", "managed", "foundBy"];
  const LABEL = {
    node: "Name", ready: "Ready", reason: "Reason", addresses: "Addresses", port: "Port",
    lastSeen: "Last seen", managed: "Managed", foundBy: "Found by",
  };

  // The page's whole state; exposed for tests and the curious (window.k3page).
  const st = {
    nodes: new Map(), // name -> {e: entry as in a snapshot, tr, cells}
    seq: null, epoch: null, fresh: true,
    ws: null, connecting: false, attempt: 0, retryAt: 0, retryTimer: 0, downSince: null, downWhy: "",
    infoFails: 0, skew: 0,
    sort: { key: "node", dir: 1 }, filter: "",
    dirty: new Set(), flash: new Set(), order: false, scheduled: false,
    timeline: new Map(), span: HOUR, seenDue: false, tlDirty: true, tlAt: 0, tlTimer: 0,
    foundBy: false, rejected: 0, lastRejected: null,
    info: null, readyz: null, polling: null,
    stats: { messages: 0, snapshots: 0, reconnects: 0, renders: 0, firstMessageAt: null,
             firstRenderAt: null, firstFrameAt: null, lastRenderMs: 0, maxRenderMs: 0,
             lastFlushAt: null, lastMessageAt: null },
  };
  window.k3page = st;

  // --- time -------------------------------------------------------------------------------

  // The agent's clock as seen from here: timestamps are the agent's, so "ago" and the
  // timeline use agent time. Small differences are noise (/info ts has whole seconds).
  const agentNow = () => Date.now() + st.skew;
  function noteSkew(ts) {
    const t = Date.parse(ts);
    if (Number.isNaN(t)) return;
    const skew = t - Date.now();
    st.skew = Math.abs(skew) > 2000 ? skew : 0;
  }
  function ago(ms) {
    if (ms < 1000) return "just now";
    return dur(ms) + " ago";
  }
  function dur(ms) {
    let s = Math.floor(ms / 1000);
    if (s < 60) return s + "s";
    const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
    s %= 60;
    if (d) return `${d}d ${h}h`;
    if (h) return `${h}h ${m}m`;
    return `${m}m ${s}s`;
  }
  const clock = (t) => new Date(t - st.skew).toLocaleTimeString();

  // --- the connection -----------------------------------------------------------------------

  function url(path) {
    return new URL(path, location.href); // relative: works behind a path-prefixing proxy too
  }
  function wsURL(query) {
    const u = url("events");
    u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
    u.search = query;
    return u.href;
  }
  // Every request has a deadline: an agent that hangs (stopped, or its machine gone) must turn
  // into a failure the page can show, not a request that never ends.
  const get = (path) => fetch(url(path), { cache: "no-store", signal: AbortSignal.timeout(FETCH_DEADLINE) });
  async function getJSON(path) {
    const r = await get(path);
    if (!r.ok) throw new Error(`${path}: ${r.status}`);
    return r.json();
  }

  async function connect() {
    clearTimeout(st.retryTimer);
    st.retryTimer = 0;
    if (st.ws || st.connecting) return;
    st.connecting = true;
    try { await open(); } finally { st.connecting = false; }
  }

  async function open() {
    setConn(st.downSince ? "down" : "connecting");
    let query = "";
    let epoch = null;
    if (st.epoch !== null && st.seq !== null) {
      query = `?since=${st.seq}&epoch=${encodeURIComponent(st.epoch)}`;
    } else if (st.fresh) {
      // First load: ask for the agent's whole history (a timeline from before the page was
      // opened) when it still has it; otherwise the agent sends a snapshot. The epoch makes a
      // restart in between fall back to a snapshot as well.
      const info = await pollInfo();
      if (info && info.epoch) {
        epoch = info.epoch;
        query = `?since=0&epoch=${encodeURIComponent(epoch)}`;
      }
    }
    let ws;
    try {
      ws = new WebSocket(wsURL(query));
    } catch (err) {
      disconnected(String(err));
      return;
    }
    st.ws = ws;
    let got = false;
    ws.onopen = () => {
      if (st.ws !== ws) return;
      if (epoch !== null) { st.epoch = epoch; st.seq = 0; } // a replay from 0 carries no epoch
      st.seenDue = true; // lastSeen from /events/snapshot once the first rows are drawn
      if (st.downSince) st.stats.reconnects++;
      st.downSince = null;
      setConn("live");
      pollInfo();
    };
    ws.onmessage = (ev) => {
      if (st.ws !== ws) return;
      if (!got) { got = true; st.attempt = 0; } // backoff grows while connections die at once
      onMessage(ev.data);
    };
    ws.onclose = (ev) => {
      if (st.ws !== ws) return;
      st.ws = null;
      if (ev.code === 4008) st.attempt = 0; // fell behind: resume at once with since
      disconnected(ev.code === 1001 ? "the agent is shutting down"
        : ev.code === 4008 ? "this page fell behind"
        : `connection lost${ev.code ? " (" + ev.code + ")" : ""}`);
    };
  }

  function dropConnection(why) {
    const ws = st.ws;
    if (!ws) return;
    st.ws = null;
    ws.onopen = ws.onmessage = ws.onclose = null;
    ws.close();
    disconnected(why);
  }

  function disconnected(why) {
    if (!st.downSince) st.downSince = Date.now();
    st.downWhy = why;
    const base = BACKOFF[Math.min(st.attempt, BACKOFF.length - 1)];
    st.attempt++;
    const delay = Math.round(base * (0.8 + 0.4 * Math.random()));
    st.retryAt = Date.now() + delay;
    clearTimeout(st.retryTimer);
    st.retryTimer = setTimeout(connect, delay);
    setConn("down");
  }

  function resync() {
    // A gap in seq (should not happen): start over from a snapshot.
    const ws = st.ws;
    st.seq = st.epoch = null;
    st.ws = null;
    if (ws) { ws.onopen = ws.onmessage = ws.onclose = null; ws.close(); }
    connect();
  }

  function setConn(state) {
    document.body.dataset.conn = state;
    const text = $("conn-text"), banner = $("banner");
    $("reconnect").hidden = state !== "down";
    if (state === "live") {
      text.textContent = "live";
      text.title = `epoch ${st.epoch}, seq ${st.seq}`;
      banner.hidden = true;
    } else if (state === "connecting") {
      text.textContent = "connecting…";
    } else {
      const wait = Math.max(0, Math.ceil((st.retryAt - Date.now()) / 1000));
      text.textContent = wait ? `disconnected, retrying in ${wait}s` : "disconnected, retrying…";
      banner.hidden = false;
      banner.textContent = `Disconnected from the agent since ${new Date(st.downSince).toLocaleTimeString()}`
        + ` (${st.downWhy}). The table shows the last state received; it catches up by itself on reconnect.`;
    }
  }

  // --- messages -----------------------------------------------------------------------------

  function onMessage(data) {
    const t0 = performance.now(); // before parsing: "after the message arrives"
    let m;
    try { m = JSON.parse(data); } catch { return; }
    st.stats.messages++;
    st.stats.lastMessageAt = t0;
    if (st.stats.firstMessageAt === null) st.stats.firstMessageAt = t0;
    if (m.type === "snapshot") { applySnapshot(m); return; }
    if (typeof m.seq === "number" && st.seq !== null) {
      if (m.seq <= st.seq) return; // already applied
      if (m.seq !== st.seq + 1) { resync(); return; }
    }
    if (typeof m.seq === "number") st.seq = m.seq;
    st.fresh = false;
    applyChange(m);
  }

  function entryOf(m) {
    const e = { ...m };
    delete e.seq; delete e.type; delete e.ts;
    return e;
  }

  function transition(before, after) {
    if (before === after) return null;
    if (after === "True") return "return";
    return after === "Unknown" ? "expiry" : "leave";
  }

  function applyChange(m) {
    const t = Date.parse(m.ts);
    if (m.type === "rejected") {
      st.rejected++;
      st.lastRejected = m;
      renderRejected();
      return;
    }
    if (m.type === "removed") {
      removeNode(m.node);
      addEvent(m.node, t, "removed", null, m.reason);
      return;
    }
    const prev = st.nodes.get(m.node);
    upsert(entryOf(m), !(agentNow() - t > 5000)); // a replayed old message does not flash
    const kind = m.type === "joined" ? "join"
      : m.type === "ready" ? "return"
      : m.type === "not_ready" ? (m.ready === "Unknown" ? "expiry" : "leave")
      : transition(prev ? prev.e.ready : null, m.ready);
    if (kind) addEvent(m.node, t, kind, m.ready, m.reason);
  }

  function applySnapshot(m) {
    st.stats.snapshots++;
    noteSkew(m.ts);
    const first = st.fresh;
    st.fresh = false;
    const t = Date.parse(m.ts);
    const seen = new Set();
    for (const e of m.nodes || []) {
      seen.add(e.node);
      const prev = st.nodes.get(e.node);
      const changed = !prev || JSON.stringify(prev.e) !== JSON.stringify(e);
      if (!first) {
        const kind = prev ? transition(prev.e.ready, e.ready) : "join";
        if (kind) addEvent(e.node, t, kind, e.ready, e.reason, "seen on reconnect");
      }
      if (changed) upsert(e, !first);
    }
    for (const name of [...st.nodes.keys()]) {
      if (!seen.has(name)) {
        removeNode(name);
        if (!first) addEvent(name, t, "removed", null, null, "seen on reconnect");
      }
    }
    st.seq = m.seq;
    st.epoch = m.epoch;
    schedule();
  }

  function upsert(e, live) {
    let n = st.nodes.get(e.node);
    if (!n) {
      n = { e, tr: null, cells: null };
      st.nodes.set(e.node, n);
      st.order = true;
    } else {
      // How a peer was found comes from /peers (pollPeers), not with the Node's events: keep it.
      if (e.foundBy == null && n.e.foundBy != null) e = { ...e, foundBy: n.e.foundBy };
      if (sortValue(n.e, st.sort.key) !== sortValue(e, st.sort.key)) st.order = true;
      n.e = e;
    }
    if (e.foundBy != null && !st.foundBy) {
      st.foundBy = true; // a later agent says how each peer was found: show the column
      for (const el of document.querySelectorAll(".found")) el.hidden = false;
      $("nodes").classList.add("with-found");
      for (const name of st.nodes.keys()) st.dirty.add(name);
    }
    st.dirty.add(e.node);
    if (live) st.flash.add(e.node);
    schedule();
  }

  function removeNode(name) {
    const n = st.nodes.get(name);
    if (!n) return;
    st.nodes.delete(name);
    st.dirty.delete(name);
    st.flash.delete(name);
    if (n.tr) n.tr.remove();
    schedule();
  }

  // --- the table ----------------------------------------------------------------------------

  function schedule() {
    if (st.scheduled) return;
    st.scheduled = true;
    requestAnimationFrame(flush);
    setTimeout(flush, 500); // rAF does not run in a hidden tab: still catch up, slowly
  }

  function flush() {
    if (!st.scheduled) return;
    st.scheduled = false;
    const t0 = performance.now();
    for (const name of st.dirty) {
      const n = st.nodes.get(name);
      if (!n) continue;
      if (!n.tr) makeRow(n);
      fillRow(n);
    }
    if (st.order) reorder();
    if (st.seenDue && st.nodes.size) { st.seenDue = false; setTimeout(pollSeen, 200); }
    if (st.flash.size && !matchMedia("(prefers-reduced-motion: reduce)").matches) {
      const flash = getComputedStyle(document.body).getPropertyValue("--flash").trim() || "#fff0a0";
      for (const name of st.flash) {
        const n = st.nodes.get(name);
        if (n && n.tr && !n.tr.hidden && n.tr.animate) {
          n.tr.animate([{ backgroundColor: flash }, { backgroundColor: "transparent" }],
            { duration: 1600, easing: "ease-out" });
        }
      }
    }
    st.dirty.clear();
    st.flash.clear();
    st.order = false;
    renderCounts();
    if (st.tlDirty && !st.tlTimer) { // at most one timeline render a second
      st.tlTimer = setTimeout(() => { st.tlTimer = 0; renderTimeline(); },
        Math.max(0, 1000 - (Date.now() - st.tlAt)));
    }
    const t1 = performance.now();
    st.stats.renders++;
    st.stats.lastRenderMs = t1 - t0;
    st.stats.maxRenderMs = Math.max(st.stats.maxRenderMs, t1 - t0);
    st.stats.lastFlushAt = t1;
    if (st.stats.firstRenderAt === null && st.stats.firstMessageAt !== null) {
      st.stats.firstRenderAt = t1;
      requestAnimationFrame(() => { st.stats.firstFrameAt = performance.now(); });
    }
  }

  function makeRow(n) {
    const tr = document.createElement("tr");
    tr.setAttribute("role", "row");
    tr.dataset.node = n.e.node;
    const cells = {};
    for (const key of COLS) {
      const td = document.createElement("td");
      td.setAttribute("role", "cell");
      td.className = "c-" + key + (key === "foundBy" ? " found" : "");
      td.dataset.label = LABEL[key];
      if (key === "foundBy") td.hidden = !st.foundBy;
      tr.appendChild(td);
      cells[key] = td;
    }
    const pill = document.createElement("span");
    cells.ready.appendChild(pill);
    const reason = document.createElement("b");
    const message = document.createElement("small");
    const box = document.createElement("span"); // one box: a card's label stays beside it
    box.append(reason, message);
    cells.reason.appendChild(box);
    n.tr = tr;
    n.cells = { ...cells, pill, reasonText: reason, messageText: message };
    n.tr.hidden = !matches(n.e.node);
  }

  function setText(el, text) {
    if (el.textContent !== text) el.textContent = text;
  }

  function fillRow(n) {
    const e = n.e, c = n.cells;
    n.tr.dataset.ready = e.ready;
    setText(c.node, e.node);
    n.tr.classList.toggle("self", !!st.info && st.info.node === e.node);
    c.pill.className = "pill s-" + e.ready;
    setText(c.pill, READY_WORD[e.ready] || String(e.ready));
    setText(c.reasonText, e.reason || "");
    setText(c.messageText, e.message || "");
    setText(c.addresses, (e.addresses || []).join(", "));
    setText(c.port, e.port == null ? "–" : String(e.port));
    c.lastSeen.title = e.lastSeen || "";
    setText(c.lastSeen, seenText(e));
    setText(c.managed, e.managed ? "yes" : "no");
    c.managed.title = e.managed ? "written by k3net" : "not k3net's: k3net never modifies it";
    setText(c.foundBy, e.foundBy == null ? "" : String(e.foundBy));
  }

  function seenText(e) {
    const t = Date.parse(e.lastSeen);
    return Number.isNaN(t) ? "–" : ago(agentNow() - t);
  }

  function ipKey(a) {
    const p = /^(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(a || "");
    return p ? "4" + p.slice(1).map((x) => x.padStart(3, "0")).join(".") : "6" + (a || "");
  }

  function sortValue(e, key) {
    switch (key) {
      case "ready": return READY_RANK[e.ready] ?? -1;
      case "addresses": return ipKey((e.addresses || [])[0]);
      case "port": return e.port ?? Infinity;
      case "lastSeen": { const t = Date.parse(e.lastSeen); return Number.isNaN(t) ? -Infinity : t; }
      case "managed": return e.managed ? 1 : 0;
      default: return e[key] == null ? "" : String(e[key]);
    }
  }

  const byName = new Intl.Collator(undefined, { numeric: true }).compare;
  function compare(a, b) {
    const { key, dir } = st.sort;
    const va = sortValue(a.e, key), vb = sortValue(b.e, key);
    let r = typeof va === "string" ? byName(va, vb) : (va < vb ? -1 : va > vb ? 1 : 0);
    if (r === 0 && key !== "node") return byName(a.e.node, b.e.node);
    return r * dir;
  }

  function reorder() {
    const tbody = $("rows");
    const sorted = [...st.nodes.values()].sort(compare);
    if (!tbody.firstChild) {
      const frag = document.createDocumentFragment();
      for (const n of sorted) frag.appendChild(n.tr);
      tbody.appendChild(frag);
      return;
    }
    let ref = tbody.firstChild;
    for (const n of sorted) { // move only the rows that are out of place
      if (n.tr === ref) ref = ref.nextSibling;
      else tbody.insertBefore(n.tr, ref);
    }
  }

  function matches(name) {
    return !st.filter || name.toLowerCase().includes(st.filter);
  }

  function renderCounts() {
    let ready = 0, shown = 0;
    for (const n of st.nodes.values()) {
      if (n.e.ready === "True") ready++;
      if (n.tr && !n.tr.hidden) shown++;
    }
    const total = st.nodes.size;
    let text = `${total} node${total === 1 ? "" : "s"}, ${ready} Ready`;
    if (total - ready) text += `, ${total - ready} not Ready`;
    if (st.filter) text += ` (${shown} shown)`;
    setText($("counts"), text);
    $("empty").hidden = total > 0;
  }

  function setSort(key) {
    st.sort = st.sort.key === key ? { key, dir: -st.sort.dir } : { key, dir: 1 };
    for (const th of document.querySelectorAll("th[data-key]")) {
      if (th.dataset.key === key) th.setAttribute("aria-sort", st.sort.dir > 0 ? "ascending" : "descending");
      else th.removeAttribute("aria-sort");
    }
    st.order = true;
    schedule();
  }

  function setFilter(text) {
    st.filter = text.trim().toLowerCase();
    for (const n of st.nodes.values()) if (n.tr) n.tr.hidden = !matches(n.e.node);
    renderCounts();
  }

  // --- the timeline -------------------------------------------------------------------------

  function addEvent(name, t, kind, ready, reason, note) {
    if (Number.isNaN(t)) return;
    let list = st.timeline.get(name);
    if (!list) st.timeline.set(name, (list = []));
    list.push({ t, kind, ready, reason, note });
    if (list.length > TL_EVENTS) list.splice(0, list.length - TL_EVENTS);
    st.tlDirty = true;
  }

  function renderTimeline() {
    st.tlDirty = false;
    st.tlAt = Date.now();
    const now = agentNow(), keep = now - HOUR, from = now - st.span;
    const rows = [];
    let total = 0;
    for (const [name, list] of [...st.timeline]) {
      // Keep an hour, plus the last event before it (the state the band starts with).
      let k = list.findIndex((ev) => ev.t >= keep);
      if (k < 0) k = list.length;
      if (k > 1) list.splice(0, k - 1);
      if (!list.length || (list[list.length - 1].t < keep && !st.nodes.has(name))) {
        st.timeline.delete(name);
        continue;
      }
      const i = list.findIndex((ev) => ev.t >= from);
      if (i < 0) continue; // nothing in the span shown
      const events = list.slice(i);
      total += events.length;
      rows.push({ name, events, before: i > 0 ? list[i - 1].ready : null });
    }
    rows.sort((a, b) => b.events.length - a.events.length
      || b.events[b.events.length - 1].t - a.events[a.events.length - 1].t);
    const x = (t) => Math.max(0, Math.min(100, ((t - from) / st.span) * 100));
    const frag = document.createDocumentFragment();
    for (const row of rows.slice(0, TL_ROWS)) {
      const div = document.createElement("div");
      div.className = "tl-row";
      div.dataset.node = row.name;
      const label = document.createElement("span");
      label.className = "tl-name";
      label.textContent = row.name;
      const count = document.createElement("small");
      count.textContent = ` ${row.events.length}`;
      count.title = `${row.events.length} events in the last hour`;
      label.appendChild(count);
      const strip = document.createElement("div");
      strip.className = "tl-strip";
      // Bands: the Ready state between events, so flapping shows as stripes.
      let state = row.before, start = from;
      const band = (s, a, b) => {
        if (!s || b <= a) return;
        const el = document.createElement("span");
        el.className = "band s-" + s;
        el.style.left = x(a) + "%";
        el.style.width = (x(b) - x(a)) + "%";
        strip.appendChild(el);
      };
      for (const ev of row.events) {
        band(state, start, ev.t);
        state = ev.ready;
        start = ev.t;
      }
      const cur = st.nodes.get(row.name);
      band(cur ? cur.e.ready : state, start, now);
      for (const ev of row.events) {
        const el = document.createElement("span");
        el.className = "ev " + ev.kind;
        el.dataset.kind = ev.kind;
        el.style.left = x(ev.t) + "%";
        el.title = `${row.name} ${KIND_WORD[ev.kind]} at ${clock(ev.t)}`
          + (ev.reason ? ` (${ev.reason})` : "") + (ev.note ? `, ${ev.note}` : "");
        strip.appendChild(el);
      }
      div.append(label, strip);
      frag.appendChild(div);
    }
    $("tl-rows").replaceChildren(frag);
    let summary = total ? `${total} event${total === 1 ? "" : "s"} on ${rows.length} node${rows.length === 1 ? "" : "s"}`
      : "no changes";
    if (rows.length > TL_ROWS) summary += ` (the ${TL_ROWS} busiest shown)`;
    setText($("tl-summary"), summary);
  }

  // The span shown: 60, 15, 5 or 1 minutes, kept in the address (#span=5m) so a link or a
  // bookmark opens the same view.
  const SPANS = [60, 15, 5, 1];
  function setSpan(minutes, remember) {
    if (!SPANS.includes(minutes)) minutes = 60;
    st.span = minutes * 60e3;
    setText($("tl-h"), minutes === 60 ? "Last hour" : `Last ${minutes} minute${minutes === 1 ? "" : "s"}`);
    const unit = minutes === 1 ? "s" : "min";
    const tick = (f) => { // seconds for 1 min; minutes, or m:ss between whole minutes
      if (minutes === 1) return String(Math.round(60 * f));
      const secs = Math.round(minutes * f * 60);
      return secs % 60 ? `${Math.floor(secs / 60)}:${String(secs % 60).padStart(2, "0")}` : String(secs / 60);
    };
    const labels = [`−${tick(1)} ${unit}`, `−${tick(0.75)}`, `−${tick(0.5)}`, `−${tick(0.25)}`, "now"];
    $("tl-axis").replaceChildren(...labels.map((text) => {
      const el = document.createElement("span");
      el.textContent = text;
      return el;
    }));
    for (const btn of document.querySelectorAll("#spans button")) {
      btn.setAttribute("aria-pressed", String(Number(btn.dataset.span) === minutes));
    }
    if (remember) history.replaceState(null, "", minutes === 60 ? location.pathname + location.search : `#span=${minutes}m`);
    renderTimeline();
  }
  function spanFromHash() {
    const m = /(?:^#|&)span=(\d+)m/.exec(location.hash);
    return m ? Number(m[1]) : 60;
  }

  // --- this agent ---------------------------------------------------------------------------

  async function pollInfo() {
    if (st.polling) return st.polling; // one poll at a time: a slow agent must not pile them up
    st.polling = pollInfoOnce();
    try { return await st.polling; } finally { st.polling = null; }
  }

  async function pollInfoOnce() {
    let info = null;
    try {
      info = await getJSON("info");
      st.infoFails = 0;
      noteSkew(info.ts);
      const changedNode = !st.info || st.info.node !== info.node;
      st.info = info;
      if (changedNode) for (const name of st.nodes.keys()) st.dirty.add(name);
      schedule();
    } catch {
      st.infoFails++;
      // The websocket can look open to a machine that is gone (no traffic when the cluster is
      // quiet): two failed polls in a row close it, and the reconnect loop takes over.
      if (st.infoFails >= 2 && st.ws) dropConnection("the agent does not answer");
    }
    try {
      // Every check, `[+]name ok` or `[-]name failed: reason`: the store's own check for the
      // Store line (/readyz also waits for the mDNS advertisement after a restart), and all of
      // them for Readiness. An agent without ?verbose answers `ok` or one line.
      const r = await get("readyz?verbose");
      const text = (await r.text()).trim();
      const checks = {};
      for (const line of text.split("\n")) {
        const m = /^\[([+-])\](\S+) (.*)$/.exec(line.trim());
        if (m) checks[m[2]] = m[1] === "+" ? null : m[3].replace(/^failed: /, "");
      }
      st.readyz = { ok: r.ok, text, checks };
    } catch {
      st.readyz = null;
    }
    renderAgent();
    return info;
  }

  function renderAgent() {
    const info = st.info, answering = st.infoFails === 0 && info;
    setText($("agent-title"), info ? info.node : "");
    document.title = info ? `k3net · ${info.node}` : "k3net cluster";
    setText($("a-node"), info ? `${info.node} (port ${info.port}, pid ${info.pid})` : "–");
    setText($("a-version"), info && info.version
      ? info.version + (info.commit ? ` (${info.commit})` : "") : "–");
    const store = $("a-store");
    if (!answering) {
      setText(store, (info && info.store ? info.store + ": " : "") + "agent not answering");
      store.className = "bad";
    } else if (!st.readyz) {
      setText(store, `${info.store || "?"}: unknown`);
      store.className = "";
    } else {
      const c = st.readyz.checks;
      const problem = "store" in c ? c.store : (st.readyz.ok ? null : st.readyz.text);
      setText(store, `${info.store || "?"}: ${problem === null ? "answers" : problem}`);
      store.className = problem === null ? "good" : "bad";
    }
    const ready = $("a-ready");
    if (!answering || !st.readyz) {
      setText(ready, "–");
      ready.className = "";
    } else {
      const names = Object.keys(st.readyz.checks);
      const failed = names.filter((n) => st.readyz.checks[n] !== null);
      setText(ready, st.readyz.ok ? `ready${names.length ? " (" + names.join(", ") + ")" : ""}`
        : "not ready: " + (failed.length ? failed.map((n) => `${n} ${st.readyz.checks[n]}`).join("; ")
          : st.readyz.text));
      ready.className = st.readyz.ok ? "good" : "bad";
    }
    setText($("a-subs"), info && info.subscribers != null ? String(info.subscribers) : "–");
    setText($("a-self"), info ? (info.selfUp ? "Ready" : "not Ready yet") : "–");
    setText($("a-addrs"), info ? (info.addrs || []).join(", ") || "–" : "–");
    renderUptime();
  }

  function renderUptime() {
    const info = st.info;
    const t = info ? Date.parse(info.startedAt) : NaN;
    setText($("a-uptime"), Number.isNaN(t) ? "–" : dur(Math.max(0, agentNow() - t)));
  }

  function renderRejected() {
    const r = st.lastRejected;
    const el = $("a-rejected");
    setText(el, r ? `${st.rejected} (last: ${r.node}, ${r.reason})` : String(st.rejected));
    el.title = r && r.message ? r.message : "";
  }

  async function pollSeen() {
    if (!st.ws || document.hidden || !st.nodes.size) return;
    let snap;
    try { snap = await getJSON("events/snapshot"); } catch { return; }
    if (snap.epoch !== st.epoch) return;
    for (const e of snap.nodes || []) {
      const n = st.nodes.get(e.node);
      if (n && n.e.lastSeen !== e.lastSeen) {
        n.e = { ...n.e, lastSeen: e.lastSeen };
        st.dirty.add(e.node);
        if (st.sort.key === "lastSeen") st.order = true;
      }
    }
    schedule();
    pollPeers();
  }

  // How this agent found each peer (mdns, join, scan, store), from its /peers; an agent without
  // /peers (older) leaves the column hidden.
  async function pollPeers() {
    let answer;
    try { answer = await getJSON("peers"); } catch { return; }
    for (const p of answer.peers || []) {
      const n = st.nodes.get(p.name);
      if (n && n.e.foundBy !== p.foundBy) upsert({ ...n.e, foundBy: String(p.foundBy) }, false);
    }
  }

  // Once a second: the "ago" column, the uptime, the countdown; the timeline as time moves.
  function tick() {
    for (const n of st.nodes.values()) if (n.cells && !n.tr.hidden) setText(n.cells.lastSeen, seenText(n.e));
    renderUptime();
    if (document.body.dataset.conn === "down") setConn("down");
    if (st.tlDirty || Date.now() - st.tlAt > 5000) renderTimeline();
  }

  // --- start ----------------------------------------------------------------------------------

  for (const th of document.querySelectorAll("th[data-key]")) {
    th.querySelector("button").addEventListener("click", () => setSort(th.dataset.key));
  }
  $("filter").addEventListener("input", (ev) => setFilter(ev.target.value));
  for (const btn of document.querySelectorAll("#spans button")) {
    btn.addEventListener("click", () => setSpan(Number(btn.dataset.span), true));
  }
  window.addEventListener("hashchange", () => setSpan(spanFromHash(), false));
  $("reconnect").addEventListener("click", () => { st.attempt = 0; connect(); });
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && !st.ws) { st.attempt = 0; connect(); }
  });
  window.addEventListener("online", () => { if (!st.ws) { st.attempt = 0; connect(); } });
  setInterval(tick, 1000);
  setInterval(() => { if (!document.hidden) pollInfo(); }, INFO_EVERY);
  setInterval(pollSeen, SEEN_EVERY);
  renderCounts();
  setSpan(spanFromHash(), false);
  connect();
})();
