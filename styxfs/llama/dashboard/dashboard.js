// The dashboard: /api/status every second, drawn into index.html.
"use strict";
const $ = id => document.getElementById(id);
const esc = s => String(s ?? "").replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
const num = (v, digits = 0) => (v === null || v === undefined || v === "") ? "–" : Number(v).toFixed(digits);

function setToken(token) {
  document.cookie = "llamafs_token=" + encodeURIComponent(token) + "; path=/; SameSite=Strict";
}

$("login").addEventListener("submit", e => {
  e.preventDefault();
  setToken($("token").value.trim());
  $("login").hidden = true;
  poll();
});

function row(cells) {
  return cells.map(([v, cls]) => `<td class="${cls || ""}">${v}</td>`).join("");
}

function drawModels(models) {  // several models: a row each, and the nodes grouped by theirs
  $("models-section").hidden = models.length < 2;
  $("models").querySelector("tbody").innerHTML = models.map(m => `<tr data-model="${esc(m.name)}">` + row([
    [esc(m.name)], [`<span class="pill ${esc(m.state)}">${esc(m.state)}</span>`], [esc(m.nodes), "n"],
    [num(m.context), "n"], [esc(m.mode)], [num(m.sessions), "n"],
  ]) + "</tr>").join("");
}

function drawNodes(nodes, byModel) {
  const body = $("nodes").querySelector("tbody");
  if (byModel) nodes = [...nodes].sort((a, b) => String(a.model).localeCompare(String(b.model)));
  body.innerHTML = nodes.map(n => {
    const state = esc(n.state);
    return `<tr class="${state}" data-node="${esc(n.id)}" data-state="${state}">` + row([
      [esc(n.id) + (byModel ? ` <small class="model">${esc(n.model)}</small>` : "")], [`<span class="pill ${state}">${state}</span>`], [esc(n.address)],
      [n.sessions, "n"], [n.inflight, "n"], [n.queue, "n"], [num(n.tokens_per_second, 1), "n"],
      [num(n.latency_ms, 1) + " ms", "n"], [n.failures, "n"], [n.restarts || 0, "n"], [esc(n.error), "error"],
    ]) + "</tr>";
  }).join("");
}

function drawSessions(sessions) {
  const body = $("sessions").querySelector("tbody");
  if (sessions === null) {  // not shown to this viewer
    body.innerHTML = "";
    $("no-sessions").hidden = false;
    $("no-sessions").textContent = "Sessions are shown to the owner only (serve HTTP on loopback, or with a secret).";
    return;
  }
  $("no-sessions").hidden = sessions.length > 0;
  $("no-sessions").textContent = "No sessions.";
  body.innerHTML = sessions.slice(-200).map(s => `<tr data-session="${s.number}">` + row([
    [s.number, "n"], [esc(s.owner)], [esc(s.state)], [esc(s.reason)], [esc(s.node)],
    [num(s.tokens_in), "n"], [num(s.tokens_out), "n"], [num(s.tokens_per_sec, 1), "n"],
    [num(s.ttft, 3), "n"], [num(s.idle, 0) + " s", "n"],
  ]) + "</tr>").join("");
}

function draw(status) {
  const d = status.deployment;
  $("name").textContent = d.name || "llamafs";
  $("role").textContent = [d.role, d.strategy, d.model].filter(Boolean).join(" · ");
  $("version").textContent = "llamafs " + d.version;
  $("t-nodes").textContent = `${d.healthy}/${d.nodes}`;
  $("t-sessions").textContent = d.maxsessions ? `${d.sessions}/${d.maxsessions}` : d.sessions;
  $("t-rate").textContent = num(d.tokens_per_second, 1);
  const ttfts = status.history.map(p => p.ttft).filter(t => t !== null);  // the latest reply's, if none just now
  const ttft = d.ttft_recent ?? (ttfts.length ? ttfts[ttfts.length - 1] : null);
  $("t-ttft").textContent = ttft === null ? "–" : num(ttft * 1000, 0) + " ms";
  $("t-requests").textContent = d.requests_total;
  const models = status.models || [];
  drawModels(models);
  drawNodes(status.nodes, models.length > 1);
  drawSessions(status.sessions);
  const h = status.history;
  drawChart($("c-rate"), h.map(p => p.tokens_per_second), $("v-rate"));
  drawChart($("c-sessions"), h.map(p => p.sessions), $("v-sessions"));
  drawChart($("c-ttft"), h.map(p => p.ttft), $("v-ttft"));
  const link = $("link");
  link.className = "link";
  link.textContent = "updated " + new Date(status.time * 1000).toLocaleTimeString();
  document.body.dataset.updated = String(status.time);
}

let timer = null;
async function poll() {
  clearTimeout(timer);
  try {
    const r = await fetch("/api/status", {cache: "no-store", credentials: "same-origin"});
    if (r.status === 401) {
      $("main").hidden = true;
      $("login").hidden = false;
      $("link").textContent = "token needed";
      return;  // the form polls again
    }
    if (!r.ok) throw new Error(await r.text());
    $("main").hidden = false;
    draw(await r.json());
  } catch (e) {
    const link = $("link");
    link.className = "link lost";
    link.textContent = "no answer: " + e.message;
  }
  timer = setTimeout(poll, 1000);
}
poll();
