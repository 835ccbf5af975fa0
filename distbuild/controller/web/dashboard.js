// The distbuild dashboard: draws each page from the controller's JSON and keeps it up to
// date from server-sent events. Read-only; text goes in with textContent, never as HTML.
"use strict";

const params = new URLSearchParams(location.search);

function el(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

function link(text, href) { return el("a", text, {href}); }

function when(stamp) {
  if (!stamp) return "-";
  return new Date(stamp * 1000).toISOString().replace("T", " ").slice(0, 19);
}

function ago(stamp, now) {
  if (!stamp) return "-";
  return duration(Math.max(0, (now || Date.now() / 1000) - stamp)) + " ago";
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  const s = Math.round(seconds);
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
  return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
}

function badge(state) {
  return el("span", state, {class: "badge " + String(state).replace(/ /g, "-")});
}

function requestLink(rid) { return link(rid, "/request?id=" + encodeURIComponent(rid)); }

function stepLink(rid, step) {
  return link(step, "/step?request=" + encodeURIComponent(rid) + "&step=" +
              encodeURIComponent(step));
}

function fill(tbody, rows, cells) {
  tbody.replaceChildren();
  for (const row of rows) {
    const tr = el("tr");
    for (const cell of cells(row)) {
      const td = el("td");
      if (cell instanceof Node) td.appendChild(cell); else td.textContent = cell;
      tr.appendChild(td);
    }
    tbody.appendChild(tr);
  }
}

function follow(url, handlers) {
  const live = document.getElementById("live");
  const source = new EventSource(url);
  source.onopen = () => live.classList.remove("off");
  source.onerror = () => live.classList.add("off");
  for (const [event, fn] of Object.entries(handlers)) {
    source.addEventListener(event, (e) => fn(JSON.parse(e.data)));
  }
  return source;
}

// -- the farm ------------------------------------------------------------------------------

function drawFarm(farm) {
  const now = farm.time;
  fill(document.querySelector("#workers tbody"), farm.workers, (w) => [
    w.name, badge(w.state), w.arch, w.labels.join(", ") || "-", w.busy + "/" + w.slots,
    w.steps.map((s) => s.step + " (" + duration(s.seconds) + ")").join(", ") || "-",
    when(w.connected_since), ago(w.last_heartbeat, now)]);
  fill(document.querySelector("#running tbody"), farm.running, (s) => [
    s.request ? stepLink(s.request, s.step) : s.step, s.worker,
    s.request ? requestLink(s.request) : "-", duration(s.seconds)]);
  fill(document.querySelector("#queue tbody"), farm.queue, (q) => [
    q.position, q.request ? stepLink(q.request, q.step) : q.step, q.arch,
    q.request ? requestLink(q.request) : "-", q.reason]);
  document.getElementById("queue-summary").textContent =
    farm.queue.length + " ready, " + farm.waiting + " waiting on dependencies";
  fill(document.querySelector("#requests tbody"), farm.requests, (r) => [
    requestLink(r.id), r.system, badge(r.state), r.built + "/" + r.unbuilt, when(r.created),
    duration(r.duration), r.initiator]);
}

// -- a request -----------------------------------------------------------------------------

const graph = {index: null, view: null};

function colour() {
  if (!graph.index || !graph.view) return;
  for (const step of graph.view.steps) {
    const g = document.getElementById("step-" + graph.index[step.step]);
    if (!g) continue;
    const state = step.state.replace(/ /g, "-");
    if (g.dataset.state !== state) {
      g.classList.remove("state-" + g.dataset.state);
      g.classList.add("state-" + state);
      g.dataset.state = state;
    }
  }
}

function loadGraph(rid) {
  fetch("/api/graph?id=" + encodeURIComponent(rid)).then((r) => r.json().then((body) => {
    const box = document.getElementById("graph");
    if (!r.ok) {
      box.replaceChildren(el("p", body.error, {class: "muted"}));
      if (r.status === 404) setTimeout(() => loadGraph(rid), 2000);  // still graphing
      return;
    }
    box.innerHTML = body.svg;  // SVG from the controller's own dot run
    const svg = box.querySelector("svg");
    const fit = document.getElementById("fit");
    // Full size is readable (and scrolls); "fit" shrinks a big graph to the page, for a view
    // of the whole build. A graph smaller than the page is never enlarged.
    let fitted = false;
    fit.onclick = () => {
      fitted = !fitted;
      svg.style.maxWidth = fitted ? "100%" : "none";
      svg.style.height = fitted ? "auto" : "";
      fit.textContent = fitted ? "full size" : "fit to width";
    };
    graph.index = {};
    body.ids.forEach((id, i) => { graph.index[id] = i; });
    box.querySelectorAll("g.step").forEach((g) => {
      const id = body.ids[Number(g.id.slice(5))];
      g.dataset.step = id;
      g.addEventListener("click", () => {
        location.href = "/step?request=" + encodeURIComponent(rid) + "&step=" +
          encodeURIComponent(id);
      });
    });
    colour();
  })).catch(() => setTimeout(() => loadGraph(rid), 2000));
}

function drawRequest(view) {
  if (!view) return;
  graph.view = view;
  document.getElementById("system").textContent = view.system;
  const state = document.getElementById("state");
  state.textContent = view.state;
  state.className = "badge " + view.state;
  const need = view.unbuilt || 0;
  document.getElementById("progress").textContent =
    "built " + view.built + " of " + need + " to build (" + view.total + " steps)";
  document.getElementById("bar").style.width = (need ? 100 * view.built / need : 100) + "%";
  document.getElementById("duration").textContent = duration(view.duration) +
    (view.ended ? "" : " so far");
  const counts = {};
  for (const s of view.steps) counts[s.state] = (counts[s.state] || 0) + 1;
  document.getElementById("counts").textContent =
    Object.entries(counts).map(([k, v]) => v + " " + k).join(", ");
  document.getElementById("reason").textContent = view.reason || "";
  const artifacts = document.getElementById("artifacts");
  artifacts.replaceChildren(...view.artifacts.map((url) => el("div", url, {class: "muted"})));
  const failure = document.getElementById("failure");
  failure.hidden = !view.failure;
  if (view.failure) {
    const a = document.getElementById("failure-step");
    a.textContent = view.failure.step;
    a.href = "/step?request=" + encodeURIComponent(view.id) + "&step=" +
      encodeURIComponent(view.failure.step);
    document.getElementById("failure-reason").textContent = view.failure.reason;
    document.getElementById("failure-log").textContent = view.failure.lines.join("\n");
  }
  drawChecks(view.verifications || []);
  const shown = view.steps.filter((s) => s.state !== "cached" || view.steps.length < 60);
  fill(document.querySelector("#steps tbody"), shown, (s) => [
    stepLink(view.id, s.step), badge(s.state), s.worker || "-", when(s.started),
    duration(s.duration), s.attempts || "-"]);
  colour();
}

function differing(check) {
  // One line per member that differs: path, then each side's size and sha256.
  const side = (e) => e ? e.size + " bytes " + (e.sha256 || "-").slice(0, 16) : "absent";
  const lines = [];
  for (const d of Object.values(check.differences || {}))
    for (const f of d.files || [])
      lines.push(f.path + ": " + side(f.stored) + " / " + side(f.rebuilt));
  return lines.join("\n") || check.reason || "-";
}

function drawChecks(checks) {
  document.getElementById("verify").hidden = checks.length === 0;
  fill(document.querySelector("#checks tbody"), checks, (c) => [
    c.step, badge(c.state), c.built_by || "-", c.verified_by || "-",
    el("pre", differing(c), {class: "diff"})]);
}

// -- a step --------------------------------------------------------------------------------

function followLog(rid, step) {
  const log = document.getElementById("log");
  const state = document.getElementById("state");
  let job = null;
  let shown = 0;
  const setState = (text) => {
    state.textContent = text;
    state.className = "badge " + text;
  };
  const source = follow("/events/log?request=" + encodeURIComponent(rid) + "&step=" +
         encodeURIComponent(step), {
    attempt: (a) => {
      if (a.job !== job) { log.textContent = ""; shown = 0; job = a.job; }
      setState(a.state);
      document.getElementById("attempt").textContent =
        a.job ? "attempt " + a.attempt + " on " + a.worker + " (job " + a.job + ")" : "";
    },
    lines: (chunk) => {
      if (chunk.first + chunk.lines.length <= shown) return;  // a reconnect resends
      const fresh = chunk.lines.slice(Math.max(0, shown - chunk.first));
      log.appendChild(document.createTextNode(fresh.join("\n") + "\n"));
      shown = chunk.first + chunk.lines.length;
      log.scrollTop = log.scrollHeight;
    },
    done: (d) => setState(d.outcome),
    missing: (m) => {  // no such request or step: asking again would not help
      source.close();
      setState("unknown");
      log.textContent = m.message;
    },
  });
}

// -- start ---------------------------------------------------------------------------------

const page = document.body.dataset.page;
if (page === "farm") {
  fetch("/api/farm").then((r) => r.json()).then(drawFarm);
  follow("/events/farm", {farm: drawFarm});
} else if (page === "request") {
  const rid = params.get("id") || "";
  document.getElementById("rid").textContent = rid;
  document.title = "distbuild: request " + rid;
  loadGraph(rid);
  follow("/events/request?id=" + encodeURIComponent(rid), {request: drawRequest});
} else if (page === "step") {
  const rid = params.get("request") || "";
  const step = params.get("step") || "";
  const a = document.getElementById("rid");
  a.textContent = rid;
  a.href = "/request?id=" + encodeURIComponent(rid);
  document.getElementById("step").textContent = step;
  document.title = "distbuild: " + step;
  followLog(rid, step);
}
