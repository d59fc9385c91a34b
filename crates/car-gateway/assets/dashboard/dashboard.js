// The dashboard page (PROTOCOL.md §17): read-only, host token from the URL fragment (kept
// in sessionStorage, the fragment dropped), data from /api/ (every duration and status is
// computed by the server), live updates over the WebSocket endpoint as a host.
"use strict";

const TOKEN_KEY = "car.host_token";
const PAGE = 50;
// Live events arrive in bursts (a run records many turns); redraw at most this often.
const REDRAW_MS = 250;

const $ = (sel) => document.querySelector(sel);
const state = { token: null, runs: [], before: null, selected: null, timers: {} };

function takeToken() {
  const match = /(?:^#|&)host_token=([^&]+)/.exec(location.hash);
  if (match) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

async function api(path) {
  const response = await fetch(path, { headers: { Authorization: `Bearer ${state.token}` } });
  if (response.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin("That token was refused.");
    throw new Error("unauthorized");
  }
  if (!response.ok) throw new Error(`${path}: ${response.status}`);
  return response.json();
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "style") Object.assign(node.style, value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child ?? "");
  return node;
}

function when(ts) {
  return ts ? new Date(ts).toLocaleString() : "";
}

function ms(value) {
  if (value == null) return "";
  if (value < 1000) return `${value} ms`;
  if (value < 60000) return `${(value / 1000).toFixed(1)} s`;
  if (value < 3600000) return `${Math.floor(value / 60000)} min ${Math.round((value % 60000) / 1000)} s`;
  return `${(value / 3600000).toFixed(1)} h`;
}

function later(name, fn) {
  if (state.timers[name]) return;
  state.timers[name] = setTimeout(() => { state.timers[name] = null; fn(); }, REDRAW_MS);
}

// ---- runs ---------------------------------------------------------------------------

function query(before) {
  const params = new URLSearchParams({ limit: String(PAGE) });
  const status = $("#f-status").value;
  const agent = $("#f-agent").value.trim();
  if (status) params.set("status", status);
  if (agent) params.set("agent_id", agent);
  if (before) params.set("before", before);
  return `/api/runs?${params}`;
}

async function loadRuns(more = false) {
  const page = await api(query(more ? state.before : null));
  state.runs = more ? state.runs.concat(page.runs) : page.runs;
  state.before = page.runs.length === PAGE ? page.runs[page.runs.length - 1].run_id : null;
  drawRuns();
}

function drawRuns() {
  const text = $("#f-intent").value.trim().toLowerCase();
  const body = $("#runs tbody");
  body.replaceChildren();
  for (const run of state.runs) {
    if (text && !run.intent.toLowerCase().includes(text)) continue;
    const row = el("tr", { "data-run": run.run_id },
      el("td", { class: `status ${run.status}` }, run.status.replace("_", " ")),
      el("td", {}, run.agent_id),
      el("td", { class: "intent", title: run.intent }, run.intent),
      el("td", {}, when(run.started_at)),
      el("td", {}, ms(run.duration_ms)),
      el("td", {}, String(run.turn_count)));
    if (run.run_id === state.selected) row.classList.add("selected");
    row.addEventListener("click", () => openRun(run.run_id));
    body.append(row);
  }
  $("#more").hidden = !state.before;
}

// ---- one run's timeline ---------------------------------------------------------------

async function openRun(runId) {
  if (state.selected !== runId && live.socket && state.selected) {
    live.send("runs.unsubscribe", { run_id: state.selected });
  }
  state.selected = runId;
  drawRuns();
  await drawRun();
  if (live.socket) live.send("runs.subscribe", { run_id: runId });
}

function describe(item) {
  const d = item.detail || {};
  switch (item.kind) {
    case "started": return `started: ${d.intent ?? ""}`;
    case "turn": return `turn ${d.index}${d.tool ? ` · ${d.tool}` : ""}`;
    case "model_turn": return `model turn ${d.index}${d.model_id ? ` · ${d.model_id}` : ""}`;
    case "tool_call": return `${d.tool} #${d.attempt} · ${d.status}`;
    case "approval": return `approval ${d.action ?? ""} · ${d.status}${d.resolution ? ` (${d.resolution})` : ""}`;
    case "ended": return `ended · ${d.termination?.kind ?? ""}`;
    default: return item.kind;
  }
}

async function drawRun() {
  const runId = state.selected;
  if (!runId) return;
  const view = await api(`/api/runs/${encodeURIComponent(runId)}`);
  if (runId !== state.selected) return;
  const s = view.summary;
  $("#run-panel").hidden = false;
  $("#run-title").textContent = `${s.intent}`;
  $("#run-summary").replaceChildren(
    el("span", { class: `status ${s.status}` }, s.status.replace("_", " ")),
    ` · ${s.agent_id} · ${s.turn_count} turns · started ${when(s.started_at)}`,
    s.duration_ms != null ? ` · ${ms(s.duration_ms)}` : "",
    s.termination_kind ? ` · ${s.termination_kind}` : "");
  const items = view.timeline;
  const start = Date.parse(s.started_at);
  const last = Math.max(start + 1, ...items.map((i) => Date.parse(i.ended_at ?? i.at)));
  const span = last - start;
  const pos = (ts) => `${(100 * (Date.parse(ts) - start)) / span}%`;
  const axis = $("#axis");
  axis.replaceChildren();
  for (let k = 0; k <= 4; k++) {
    axis.append(el("span", { style: { left: `${k * 25}%` } }, ms(Math.round((span * k) / 4))));
  }
  const list = $("#timeline");
  list.replaceChildren();
  list.dataset.run = runId;
  for (const item of items) {
    const status = item.detail?.status ?? "";
    const bar = el("div", { class: `bar ${item.kind} ${status}`, style: { left: pos(item.at) } });
    if (item.ended_at) bar.style.width = `calc(${pos(item.ended_at)} - ${pos(item.at)})`;
    const lane = el("div", { class: "lane" }, bar);
    if (item.duration_ms != null) {
      lane.append(el("span", { class: "label", style: { left: `calc(${pos(item.at)} + 4px)` } }, ms(item.duration_ms)));
    }
    const title = `${when(item.at)}${item.duration_ms != null ? ` · ${ms(item.duration_ms)}` : ""}`;
    list.append(el("li", { "data-kind": item.kind, title }, el("span", { class: "what" }, describe(item)), lane));
  }
}

// ---- approvals and stats --------------------------------------------------------------

async function loadApprovals() {
  const { approvals } = await api("/api/approvals?status=pending");
  $("#approvals-count").textContent = `(${approvals.length})`;
  $("#approvals").replaceChildren(...approvals.map((a) =>
    el("li", {}, `${a.action}`, a.agent_id ? ` · ${a.agent_id}` : "", a.run_id ? ` · run ${a.run_id}` : "",
      ` · asked ${when(a.created_at)}`)));
}

async function loadStats() {
  const s = await api("/api/stats");
  $("#stats").textContent = `v${s.version} · ${s.runs.in_progress} running · ${s.approvals_pending} pending approvals · ${s.sessions_open} sessions · seq ${s.head_seq}`;
}

// ---- live, over the WebSocket as a host -------------------------------------------------

const live = {
  socket: null,
  next: 1,
  send(method, params) {
    this.socket?.send(JSON.stringify({ jsonrpc: "2.0", id: this.next++, method, params }));
  },
  connect() {
    const url = document.querySelector('meta[name="car-ws"]').content;
    const socket = new WebSocket(url);
    socket.addEventListener("open", () => {
      this.socket = socket;
      this.send("session.auth", { host_token: state.token });
      this.send("server.handshake", { protocol_version: 2 });
      this.send("host.subscribe", {});
      if (state.selected) this.send("runs.subscribe", { run_id: state.selected });
      $("#live").textContent = "live";
      $("#live").className = "live on";
    });
    socket.addEventListener("message", (message) => {
      const frame = JSON.parse(message.data);
      if (frame.method === "host.event") {
        later("runs", () => loadRuns().catch(console.error));
        later("approvals", () => loadApprovals().catch(console.error));
        later("stats", () => loadStats().catch(console.error));
      } else if (frame.method === "runs.trace.event" && frame.params?.run_id === state.selected) {
        later("run", () => drawRun().catch(console.error));
        later("runs", () => loadRuns().catch(console.error));
      }
    });
    socket.addEventListener("close", () => {
      this.socket = null;
      $("#live").textContent = "offline";
      $("#live").className = "live off";
      setTimeout(() => this.connect(), 2000);
    });
  },
};

// ---- start ----------------------------------------------------------------------------

function showLogin(message) {
  $("#app").hidden = true;
  $("#login").hidden = false;
  if (message) $("#login .hint").textContent = message;
}

async function openApp() {
  $("#login").hidden = true;
  $("#app").hidden = false;
  await Promise.all([loadRuns(), loadApprovals(), loadStats()]);
  document.body.dataset.ready = "true";
  live.connect();
  // A link to one run: `/?run=<run_id>`.
  const linked = new URLSearchParams(location.search).get("run");
  if (linked) await openRun(linked);
}

document.addEventListener("DOMContentLoaded", () => {
  state.token = takeToken();
  $("#login").addEventListener("submit", (event) => {
    event.preventDefault();
    state.token = $("#token").value.trim();
    sessionStorage.setItem(TOKEN_KEY, state.token);
    openApp().catch(console.error);
  });
  $("#filters").addEventListener("input", (event) => {
    if (event.target.id === "f-intent") drawRuns();
    else later("runs", () => loadRuns().catch(console.error));
  });
  $("#more").addEventListener("click", () => loadRuns(true).catch(console.error));
  if (state.token) openApp().catch(console.error);
  else showLogin();
});
