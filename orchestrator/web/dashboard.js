// The line dashboard: one tile per station, line totals, the job panel, a failure Pareto, the
// quarantined boards and a searchable board table with each board's history, kept live by the
// daemon's server-sent events (/api/v1/events). Text from the daemon only ever goes in as text.
"use strict";

const tiles = new Map();
const $ = (id) => document.getElementById(id);

function make(parent, tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  parent.appendChild(node);
  return node;
}

function token() {
  return $("token").value || sessionStorage.getItem("orchestrator-token") || "";
}

async function act(station, action, body) {
  const response = await fetch(`/api/v1/stations/${encodeURIComponent(station)}/${action}`, {
    method: "POST",
    headers: { "Authorization": `Bearer ${token()}`, "Content-Type": "application/json" },
    body: JSON.stringify(body || {}),
  });
  if (response.ok) {
    $("message").textContent = `${station}: ${action} done`;
  } else {
    const problem = await response.json().catch(() => ({}));
    $("message").textContent = `${station}: ${action} refused: ${problem.detail || response.status}`;
  }
  if (action === "retry" || action === "release") refreshBoards();
  return response.ok;
}

function release(station, uid) {
  const reason = prompt(`Release the quarantined board ${uid || ""} on ${station}: why?`.replace("  ", " "));
  if (reason) act(station, "release", uid ? { uid, reason } : { reason });
}

// "2026-12-03T06:15:02.125Z" -> "2026-12-03 06:15:02"
const when = (iso) => (iso ? iso.replace("T", " ").slice(0, 19) : "");

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  if (seconds < 60) return `${seconds} s`;
  const hours = Math.floor(seconds / 3600);
  const minutes = Math.round((seconds % 3600) / 60);
  return hours ? `${hours} h ${minutes} min` : `${minutes} min`;
}

function cells(row, values) {
  for (const value of values) make(row, "td", null, value === null || value === undefined ? "" : String(value));
}

let boardsAsked = 0;

async function loadBoards() {
  const params = new URLSearchParams({ search: $("board-search").value.trim(), limit: "100" });
  if ($("board-outcome").value) params.set("outcome", $("board-outcome").value);
  const mine = ++boardsAsked;
  const response = await fetch(`/api/v1/boards?${params}`);
  const body = await response.json().catch(() => ({}));
  if (mine !== boardsAsked) return; // a later search has answered, or will
  const rows = $("boards").tBodies[0];
  rows.textContent = "";
  if (!response.ok) {
    make(make(rows, "tr", "none"), "td", null, body.detail || `error ${response.status}`).colSpan = 7;
    return;
  }
  for (const b of body.boards) {
    const row = make(rows, "tr", b.outcome ? b.outcome.toLowerCase() : "running");
    row.dataset.uid = b.uid;
    row.tabIndex = 0;
    cells(row, [b.uid, b.station, b.outcome || "in progress", b.failed_step, b.reason, when(b.finished), b.duration_s]);
    row.addEventListener("click", () => loadHistory(b.uid));
    row.addEventListener("keydown", (event) => { if (event.key === "Enter") loadHistory(b.uid); });
  }
  if (!body.boards.length) make(make(rows, "tr", "none"), "td", null, "no board").colSpan = 7;
  $("boards-more").textContent = body.more ? "the latest 100 shown: search to narrow" : "";
}

async function loadHistory(uid) {
  const response = await fetch(`/api/v1/boards/${encodeURIComponent(uid)}/history`);
  const h = await response.json().catch(() => ({}));
  $("history").hidden = false;
  $("history").dataset.uid = uid;
  for (const row of $("boards").tBodies[0].rows) row.classList.toggle("selected", row.dataset.uid === uid);
  const rows = $("history-steps").tBodies[0];
  rows.textContent = "";
  if (!response.ok) {
    $("history-title").textContent = `${uid}: ${h.detail || response.status}`;
    return;
  }
  const images = [h.bootloader && `bootloader ${h.bootloader.version}`, h.application && `application ${h.application.version}`];
  const shown = [h.outcome || "in progress", h.reason, ...images].filter(Boolean).join(" · ");
  $("history-title").textContent = `${uid} on ${h.station}: ${shown}`;
  for (const a of h.attempts) {
    const row = make(rows, "tr", a.step ? (a.outcome || "open") : "decision");
    row.dataset.step = a.step;
    const name = a.step ? `${a.step} ${a.name}` : `${a.name} (was ${a.outcome})`;
    cells(row, [name, a.attempt, a.station, when(a.started), a.duration_s, a.step ? a.outcome || "unfinished" : "", a.error, a.notes.join(", ")]);
  }
}

async function loadQuarantined() {
  const response = await fetch("/api/v1/boards?outcome=QUARANTINE&limit=500");
  if (!response.ok) return;
  const { boards } = await response.json();
  const list = $("quarantined");
  list.textContent = "";  // emptied and filled in one task: never seen empty between the two
  for (const b of boards) {
    const item = make(list, "li");
    item.dataset.uid = b.uid;
    const uid = make(item, "a", "uid", b.uid);
    uid.href = "#history";
    uid.addEventListener("click", () => loadHistory(b.uid));
    make(item, "span", "where", ` ${b.station} · step ${b.failed_step}`);
    make(item, "div", "reason", b.reason || "");
    make(item, "button", "release", "release").addEventListener("click", () => release(b.station, b.uid));
  }
  if (!list.children.length) make(list, "li", "none", "none");
}

function refreshBoards() {
  loadBoards();
  loadQuarantined();
  if (!$("history").hidden) loadHistory($("history").dataset.uid);
}

function renderJob(job) {
  $("verdict").hidden = !job.verdict;
  $("verdict").textContent = job.verdict || "";
  const known = job.state !== "unknown";
  $("job-quota").textContent = known ? `${job.used} of ${job.quantity} used, ${job.left} left` : "-";
  $("job-progress").textContent = known ? String(job.in_progress) : "-";
  $("job-time-left").textContent = known ? duration(job.time_left_s) : "-";
  const problem = job.problem || (known ? "" : "the cloud has not answered yet");
  $("job-problem").textContent = known && job.state !== "open" ? `the job is ${job.state}` : problem;
}

function tile(name) {
  if (tiles.has(name)) return tiles.get(name);
  const node = make($("stations"), "article", "tile");
  node.dataset.station = name;
  const top = make(node, "div", "top");
  make(top, "span", "name", name);
  const parts = { node, state: make(top, "span", "state") };
  parts.uid = make(node, "div", "uid");
  parts.step = make(node, "div", "step");
  parts.bar = make(make(node, "div", "bar"), "span");
  parts.error = make(node, "div", "error");
  // The whole text without hovering: a click (or Enter) on the text opens it, another closes it.
  parts.error.tabIndex = 0;
  const toggle = () => node.classList.toggle("open");
  parts.error.addEventListener("click", toggle);
  parts.error.addEventListener("keydown", (event) => { if (event.key === "Enter") toggle(); });
  const bottom = make(node, "div", "bottom");
  parts.counts = make(bottom, "span", "counts");
  const buttons = make(bottom, "span", "buttons");
  parts.pause = make(buttons, "button", "pause", "pause");
  parts.pause.addEventListener("click", () => act(name, parts.pause.textContent));
  parts.retry = make(buttons, "button", "retry", "retry");
  parts.retry.addEventListener("click", () => act(name, "retry"));
  parts.release = make(buttons, "button", "release", "release");
  parts.release.addEventListener("click", () => release(name, ""));
  tiles.set(name, parts);
  return parts;
}

function renderStation(s) {
  const t = tile(s.name);
  t.node.className = `tile ${s.state}`;
  t.state.textContent = s.stopping ? `${s.state}, stopping` : s.state;
  t.uid.textContent = s.uid || "no board";
  const step = s.step ? `${s.step} ${s.step_name}` : "";
  if (s.state === "pass") t.step.textContent = "provisioned";
  else if (s.state === "fail" || s.state === "quarantine") t.step.textContent = `stopped at ${step}`;
  else t.step.textContent = s.step ? `${step}${s.attempt > 1 ? ` (try ${s.attempt})` : ""}` : "";
  t.bar.style.width = `${Math.round(100 * (s.state === "provisioning" || s.state === "paused" ? s.progress : 0))}%`;
  // A finished board's tile says why it stopped; a running one, its last error (none for a PASS).
  const finished = s.state === "fail" || s.state === "quarantine";
  const text = finished && s.reason ? s.reason : s.state === "pass" ? "" : s.last_error || "";
  t.error.textContent = text;
  t.error.title = text;
  t.counts.textContent = "";
  make(t.counts, "b", "count-pass", `✔ ${s.counts.PASS}`);
  make(t.counts, "b", "count-fail", `✘ ${s.counts.FAIL + s.counts.QUARANTINE}`);
  t.pause.textContent = s.paused ? "resume" : "pause";
  t.retry.hidden = s.state !== "fail";
  t.release.hidden = s.state !== "quarantine";
}

function renderPareto(failures) {
  const list = $("pareto");
  list.textContent = "";
  const total = failures.reduce((sum, f) => sum + f.count, 0);
  let running = 0;
  for (const f of failures) {
    running += f.count;
    const item = make(list, "li");
    item.dataset.step = f.step;
    make(item, "span", "name", `${f.step} ${f.name}`).title = f.name;
    make(item, "span", "count", `${f.count} · ${Math.round((100 * running) / total)}%`);
    make(item, "span", "pbar").style.width = `${Math.round((100 * f.count) / failures[0].count)}%`;
  }
  if (!failures.length) make(list, "li", "none", "no failures");
}

function render(snapshot) {
  $("line").textContent = snapshot.line;
  $("job").textContent = snapshot.job_id;
  $("notice").hidden = !snapshot.notice;
  $("notice").textContent = snapshot.notice || "";
  const totals = snapshot.totals;
  $("total-pass").textContent = totals.pass;
  $("total-fail").textContent = totals.fail;
  $("total-quarantine").textContent = totals.quarantine;
  $("total-yield").textContent = totals.yield === null ? "-" : `${(100 * totals.yield).toFixed(1)}%`;
  $("total-rate").textContent = totals.boards_per_hour;
  const names = new Set(snapshot.stations.map((s) => s.name));
  for (const [name, parts] of tiles) {
    if (!names.has(name)) {
      parts.node.remove();
      tiles.delete(name);
    }
  }
  snapshot.stations.forEach(renderStation);
  renderPareto(totals.failures_by_step);
  if (snapshot.job) renderJob(snapshot.job);
  const finished = `${totals.finished}/${totals.quarantine}`;
  if (finished !== render.finished) { // a board finished, or went back to the line
    render.finished = finished;
    refreshBoards();
  }
  document.body.dataset.updated = String(snapshot.time);
}

let events = null;

function connect() {
  events = new EventSource("/api/v1/events");
  events.addEventListener("status", (event) => render(JSON.parse(event.data)));
  events.addEventListener("board", (event) => {
    const board = JSON.parse(event.data);
    if (board.outcome !== "PASS") $("message").textContent = `${board.station}: ${board.uid} ${board.outcome}`;
  });
  events.onopen = () => { $("link").className = "link up"; $("link").textContent = "live"; };
  events.onerror = () => { $("link").className = "link down"; $("link").textContent = "reconnecting"; };
}

window.addEventListener("DOMContentLoaded", () => {
  $("token").value = sessionStorage.getItem("orchestrator-token") || "";
  $("token").addEventListener("change", () => sessionStorage.setItem("orchestrator-token", $("token").value));
  let typing = null;
  $("board-search").addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(loadBoards, 150); });
  $("board-outcome").addEventListener("change", loadBoards);
  connect();
});
// Layout checks with a synthetic line: live updates stop so they do not redraw the real one.
window.renderSnapshot = (snapshot) => {
  if (events) events.close();
  render(snapshot);
};
