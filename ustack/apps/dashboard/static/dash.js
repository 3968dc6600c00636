// The ustack dashboard: polls /ustack/status.json once a second and redraws.
// No framework and no build step; uPlot (vendor/, MIT) draws the state chart.
// Every figure the page shows is also written into data-* attributes, so a test
// in a headless browser can read what was drawn.
"use strict";

const POLL_MS = 1000;
const LADDER_MS = 1000;
const PAGE = 50;
const STATES = ["ESTAB", "SYN-RECV", "SYN-SENT", "FIN-WAIT-1", "FIN-WAIT-2", "CLOSING",
                "CLOSE-WAIT", "LAST-ACK", "TIME-WAIT"];
const COLORS = {"ESTAB": "#2e7d32", "SYN-RECV": "#7cb342", "SYN-SENT": "#00897b",
                "FIN-WAIT-1": "#1e88e5", "FIN-WAIT-2": "#3949ab", "CLOSING": "#8e24aa",
                "CLOSE-WAIT": "#d81b60", "LAST-ACK": "#6d4c41", "TIME-WAIT": "#ef6c00"};

const $ = (id) => document.getElementById(id);
const hist = {t: [], states: {}};
let historyMax = 300;
let chart = null;
let offset = 0;
let ladderId = null;
let ladderTimer = null;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) e.append(c instanceof Node ? c : String(c));
  return e;
}

function bytes(n) {
  if (n < 1024) return n + " B";
  if (n < 1048576) return (n / 1024).toFixed(1) + " KiB";
  return (n / 1048576).toFixed(1) + " MiB";
}

function seconds(s) {
  if (s === null || s === undefined) return "";
  if (s < 120) return s.toFixed(1) + " s";
  if (s < 7200) return (s / 60).toFixed(1) + " min";
  return (s / 3600).toFixed(1) + " h";
}

function slug(state) { return state.toLowerCase().replace(/[^a-z0-9]+/g, "-"); }

// ------------------------------------------------------------------ the chart

function mergeHistory(h, max) {
  historyMax = max;
  for (let i = 0; i < h.t.length; i++) {
    if (hist.t.length && h.t[i] <= hist.t[hist.t.length - 1]) continue;
    hist.t.push(h.t[i]);
    for (const s of STATES) (hist.states[s] = hist.states[s] || []).push(h.states[s][i]);
  }
  const extra = hist.t.length - historyMax;
  if (extra > 0) {
    hist.t.splice(0, extra);
    for (const s of STATES) hist.states[s].splice(0, extra);
  }
}

function drawChart() {
  const box = $("chart");
  const data = [hist.t, ...STATES.map((s) => hist.states[s] || [])];
  if (chart === null && typeof uPlot !== "undefined") {
    chart = new uPlot({
      width: Math.max(box.clientWidth, 400), height: 260,
      scales: {x: {time: true}, y: {range: (u, lo, hi) => [0, Math.max(hi * 1.1, 4)]}},
      // Whole seconds on the time axis (uPlot's default shows milliseconds when the
      // ring holds only a few seconds).
      axes: [{space: 80, incrs: [1, 5, 10, 15, 30, 60, 120, 300],
              values: (u, splits) => splits.map((v) => new Date(v * 1000)
                .toLocaleTimeString([], {hour12: false}))},
             {label: "connections"}],
      legend: {show: false},  // the counts row under the chart is the legend
      series: [{label: "time"}, ...STATES.map((s) => ({
        label: s, stroke: COLORS[s], width: 2, points: {show: false}}))],
    }, data, box);
    window.addEventListener("resize", () => chart.setSize(
      {width: Math.max(box.clientWidth, 400), height: 260}));
  } else if (chart !== null) {
    chart.setData(data);
  }
  // What the chart holds, for tests and for screen readers.
  box.setAttribute("data-points", String(hist.t.length));
  const n = hist.t.length;
  for (const s of STATES) {
    const series = hist.states[s] || [];
    box.setAttribute("data-last-" + slug(s), String(n ? series[n - 1] : 0));
    box.setAttribute("data-max-" + slug(s), String(series.reduce((a, b) => Math.max(a, b), 0)));
  }
  if (n > 1) $("history-span").textContent =
    "last " + seconds(hist.t[n - 1] - hist.t[0]);
}

function drawStateCounts(states) {
  const tr = el("tr");
  for (const s of STATES) {
    tr.append(el("td", {"data-state": s, "data-count": String(states[s] || 0)},
      el("span", {class: "swatch"}), s + " ", el("b", {}, String(states[s] || 0))));
  }
  tr.querySelectorAll(".swatch").forEach((sw, i) => { sw.style.background = COLORS[STATES[i]]; });
  $("state-counts").tBodies[0].replaceChildren(tr);
}

// ------------------------------------------------------------------ panels

function drawTimeWait(tw) {
  const dl = $("tw-costs");
  dl.replaceChildren(
    el("dt", {}, "records"), el("dd", {id: "tw-records", "data-value": tw.records},
      `${tw.records} (tcp_max_tw_buckets ${tw.max_buckets})`),
    el("dt", {}, "memory held"), el("dd", {id: "tw-bytes", "data-value": tw.bytes},
      `${bytes(tw.bytes)} (${tw.record_bytes} B a record, measured)`),
    el("dt", {}, "lifetime"), el("dd", {}, `2·MSL = ${2 * tw.tcp_msl} s`),
    el("dt", {}, "tcp_tw_reuse"), el("dd", {}, `${tw.tcp_tw_reuse} ` +
      ["(never reused)", "(reused with timestamps)", "(reused toward loopback only)"][tw.tcp_tw_reuse]),
    el("dt", {}, "ip_local_port_range"), el("dd", {},
      `${tw.port_range[0]}–${tw.port_range[1]} (${tw.port_range_size} ports)`));
  const rows = tw.destinations.map((d) => el("tr", {"data-dest": d.dest,
      "data-time-wait": d.time_wait, "data-free": d.free},
    el("td", {}, d.dest), el("td", {class: "num"}, d.time_wait), el("td", {class: "num"}, d.live),
    el("td", {class: "num"}, d.free),
    el("td", {}, el("span", {class: "barbox"}, el("span", {class: "bar"})), d.used_pct + "%")));
  rows.forEach((r, i) => { r.querySelector(".bar").style.width =
    Math.min(100, tw.destinations[i].used_pct) + "%"; });
  $("tw-ports").tBodies[0].replaceChildren(...rows);
  $("tw-ports-help").textContent = tw.destinations.length
    ? `Ports of ip_local_port_range our own connects toward a destination cannot take: ` +
      `at 0 free, the next connect() to it fails with EADDRNOTAVAIL` +
      (tw.tcp_tw_reuse === 1 ? " (unless tcp_tw_reuse takes a TIME-WAIT over)." : ".") +
      (tw.destinations_total > tw.destinations.length
        ? ` ${tw.destinations_total} destinations, the busiest shown.` : "")
    : "No TIME-WAIT on an ephemeral port: the stack opened no connection it closed first.";
}

function drawLeaks(leaks) {
  $("leak-threshold").textContent = `older than ${leaks.threshold} s`;
  $("leak-summary").textContent = leaks.count
    ? `${leaks.count} probable leak${leaks.count > 1 ? "s" : ""} ` +
      `(${leaks.close_wait} in CLOSE-WAIT in all)`
    : `none (${leaks.close_wait} in CLOSE-WAIT, all younger than ${leaks.threshold} s)`;
  $("leak-summary").setAttribute("data-count", String(leaks.count));
  $("leaks").tBodies[0].replaceChildren(...leaks.flagged.map((l) => {
    const tr = el("tr", {class: "leak", "data-peer": l.peer, "data-local": l.local,
        "data-age": l.age},
      el("td", {}, l.peer), el("td", {}, l.local), el("td", {class: "age"}, seconds(l.age)));
    tr.addEventListener("click", () => openLadder(l.id));
    return tr;
  }));
}

function drawCounters(counters) {
  const groups = new Map();
  for (const c of counters) {
    if (!groups.has(c.group)) groups.set(c.group, []);
    groups.get(c.group).push(c);
  }
  const box = $("counters");
  const parts = [];
  for (const [g, cs] of groups) {
    const tbody = el("tbody", {}, ...cs.map((c) => el("tr",
      {class: c.moved ? "moved" : "still", "data-name": c.name, "data-rate": c.rate_window},
      el("td", {}, c.name), el("td", {class: "num"}, c.value),
      el("td", {class: "num", title: "over the last second"}, c.rate.toFixed(1) + "/s"),
      el("td", {class: "num", title: "over the last 10 s"}, c.rate_window.toFixed(1) + "/s"))));
    parts.push(el("div", {class: "counter-group", "data-group": g}, el("h3", {}, g),
      el("table", {class: "compact"}, el("thead", {}, el("tr", {}, el("th", {}, "counter"),
        el("th", {}, "total"), el("th", {}, "1 s"), el("th", {}, "10 s"))), tbody)));
  }
  box.replaceChildren(...parts);
}

function drawTable(t) {
  const tbody = $("connections").tBodies[0];
  tbody.replaceChildren(...t.rows.map((r) => {
    const tr = el("tr", {class: "st-" + r.state + (r.id && r.id === ladderId ? " selected" : ""),
        "data-state": r.state, "data-local": r.local, "data-peer": r.peer},
      el("td", {}, r.state), el("td", {}, r.local), el("td", {}, r.peer),
      el("td", {class: "num"}, r.recv_q), el("td", {class: "num"}, r.send_q),
      el("td", {}, r.timer), el("td", {class: "num"},
        r.state_age !== undefined && r.state_age !== null
          ? `${seconds(r.age)} (${seconds(r.state_age)} in state)` : seconds(r.age)));
    if (r.id) {
      tr.setAttribute("data-id", r.id);
      tr.addEventListener("click", () => openLadder(r.id));
    }
    return tr;
  }));
  const last = Math.min(t.offset + t.rows.length, t.total);
  let info = t.total ? `${t.offset + 1}–${last} of ${t.total}` : "no connection matches";
  if (t.tw_scanned < t.tw_records)
    info += ` (the filter looked at the first ${t.tw_scanned} of ${t.tw_records} TIME-WAIT records)`;
  $("page-info").textContent = info;
  $("page-info").setAttribute("data-total", String(t.total));
  $("prev").disabled = t.offset === 0;
  $("next").disabled = last >= t.total;
}

// ------------------------------------------------------------------ polling

function query() {
  const q = new URLSearchParams();
  const f = $("filter").value.trim();
  if (f) q.set("filter", f);
  const s = $("state").value;
  if (s) q.set("state", s);
  q.set("offset", String(offset));
  q.set("limit", String(PAGE));
  if (hist.t.length) q.set("since", String(hist.t[hist.t.length - 1]));
  return q.toString();
}

async function poll() {
  try {
    const resp = await fetch("/ustack/status.json?" + query(), {cache: "no-store"});
    const text = await resp.text();
    if (resp.status === 400) {
      $("table-error").textContent = text.trim();
    } else if (!resp.ok) {
      throw new Error(`HTTP ${resp.status}`);
    } else {
      $("table-error").textContent = "";
      const s = JSON.parse(text);
      $("address").textContent = s.address;
      $("clock").textContent = new Date(s.now * 1000).toLocaleTimeString();
      mergeHistory(s.history, s.history_max);
      drawChart();
      drawStateCounts(s.states);
      drawTimeWait(s.time_wait);
      drawLeaks(s.leaks);
      drawCounters(s.counters);
      drawTable(s.table);
      $("conn-state").textContent = "live";
      document.body.setAttribute("data-polls",
        String(Number(document.body.getAttribute("data-polls") || 0) + 1));
    }
  } catch (err) {
    $("conn-state").textContent = "daemon unreachable: " + err.message;
  }
  setTimeout(poll, POLL_MS);
}

// ------------------------------------------------------------------ ladder

async function refreshLadder() {
  if (ladderId === null) return;
  const id = ladderId;
  try {
    const resp = await fetch(`/ustack/ladder/${encodeURIComponent(id)}.svg`, {cache: "no-store"});
    const text = await resp.text();
    if (id !== ladderId) return;
    if (resp.ok) {
      // Inline, so the arrows and states are part of the page (and of a test's DOM).
      $("ladder").innerHTML = text.replace(/^<\?xml[^>]*>\s*/, "");
    } else {
      $("ladder").textContent = text;
    }
  } catch (err) {
    $("ladder").textContent = "ladder unavailable: " + err.message;
  }
  ladderTimer = setTimeout(refreshLadder, LADDER_MS);
}

function openLadder(id) {
  ladderId = id;
  clearTimeout(ladderTimer);
  $("ladder-panel").hidden = false;
  $("ladder-panel").setAttribute("data-id", id);
  $("ladder-title").textContent = id.replace("-", " ↔ ");
  $("plot-link").href = `/ustack/plot/${encodeURIComponent(id)}.svg`;
  $("ladder").textContent = "loading…";
  const url = new URL(window.location.href);
  url.searchParams.set("conn", id);
  history.replaceState(null, "", url);
  refreshLadder();
}

function closeLadder() {
  ladderId = null;
  clearTimeout(ladderTimer);
  $("ladder-panel").hidden = true;
  const url = new URL(window.location.href);
  url.searchParams.delete("conn");
  history.replaceState(null, "", url);
}

// ------------------------------------------------------------------ start

function start() {
  const params = new URLSearchParams(window.location.search);
  if (params.get("filter")) $("filter").value = params.get("filter");
  if (params.get("state")) $("state").value = params.get("state");
  $("table-form").addEventListener("submit", (e) => { e.preventDefault(); offset = 0; });
  $("filter").addEventListener("change", () => { offset = 0; });
  $("state").addEventListener("change", () => { offset = 0; });
  $("prev").addEventListener("click", () => { offset = Math.max(0, offset - PAGE); });
  $("next").addEventListener("click", () => { offset += PAGE; });
  $("ladder-close").addEventListener("click", closeLadder);
  if (params.get("conn")) openLadder(params.get("conn"));
  poll();
}

start();
