/* controlled-friction dashboard: plain JavaScript over the server's JSON API, plots with uPlot.
 * Every piece of text comes from the server (the CLI's view functions) and is inserted with
 * textContent, never as HTML. Live: the list and the Rollout are polled every 2 s, plots every 5 s. */
"use strict";

const POLL_MS = 2000;
const PLOT_MS = 5000;
const ROLE_STYLE = {
  canary: { stroke: "#c0392b", width: 2 },
  stable: { stroke: "#1f5fa8", width: 2 },
  service: { stroke: "#1e8449", width: 2 },
  baseline: { stroke: "#6c6c6c", width: 2, dash: [2, 3] },
  bound: { stroke: "#111111", width: 1.5, dash: [8, 5] },
};
const ACTIONS = {
  approve: { key: "a", label: "Approve", verb: "approve" },
  promote: { key: "p", label: "Promote", verb: "promote" },
  abort: { key: "x", label: "Abort", verb: "abort (roll back)" },
  retry: { key: "r", label: "Retry", verb: "retry" },
};

let me = { user: "?" };
let timers = [];
let view = null; // {kind: "list"} or {kind: "rollout", ns, name, data, charts}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

async function api(path, options) {
  const rsp = await fetch(path, options);
  let body = null;
  try { body = await rsp.json(); } catch (e) { body = { error: `HTTP ${rsp.status}` }; }
  if (!rsp.ok) {
    const err = new Error(body && body.error ? body.error : `HTTP ${rsp.status}`);
    err.status = rsp.status;
    throw err;
  }
  return body;
}

function connection(error) {
  const banner = document.getElementById("conn");
  if (error) {
    banner.textContent = `cannot refresh: ${error.message}`;
    banner.hidden = false;
  } else {
    banner.hidden = true;
    document.getElementById("updated").textContent =
      `updated ${new Date().toLocaleTimeString()} · live every ${POLL_MS / 1000}s`;
  }
}

function every(ms, fn) {
  let busy = false;
  const tick = async () => {
    if (busy) return;
    busy = true;
    try { await fn(); } finally { busy = false; }
  };
  tick();
  timers.push(setInterval(tick, ms));
}

function phaseBadge(phase) {
  return el("span", { class: `phase phase-${phase}`, "data-testid": "phase", text: phase });
}

function fillTable(tbody, rows) {
  tbody.replaceChildren(...rows);
}

// ------------------------------------------------------------------ list of Rollouts

function listView() {
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  const nsSel = el("select", { id: "ns-filter", "aria-keyshortcuts": "/" }, el("option", { value: "", text: "all" }));
  const phaseSel = el("select", { id: "phase-filter" }, el("option", { value: "", text: "all" }));
  const tbody = el("tbody");
  const empty = el("p", { class: "dim", hidden: true });
  const onFilter = () => {
    const q = new URLSearchParams();
    if (nsSel.value) q.set("namespace", nsSel.value);
    if (phaseSel.value) q.set("phase", phaseSel.value);
    history.replaceState(null, "", `#/${q.toString() ? "?" + q : ""}`);
    refresh();
  };
  nsSel.addEventListener("change", onFilter);
  phaseSel.addEventListener("change", onFilter);
  const head = ["Namespace", "Name", "Phase", "Weight", "Step", "Approvals", "Canary", "Stable", "Age", "Message"];
  document.getElementById("main").replaceChildren(
    el("h1", { text: "Rollouts" }),
    el("div", { class: "filters" },
      el("label", { for: "ns-filter" }, "Namespace ", nsSel),
      el("label", { for: "phase-filter" }, "Phase ", phaseSel)),
    el("table", { class: "rollouts", "data-testid": "rollouts" },
      el("thead", {}, el("tr", {}, head.map((h) => el("th", { scope: "col", text: h })))), tbody),
    empty,
  );
  document.title = "Rollouts · controlled-friction";

  function syncOptions(select, values, wanted) {
    const have = [...select.options].slice(1).map((o) => o.value);
    if (wanted && !values.includes(wanted)) values = [...values, wanted];
    if (have.join("\n") !== values.join("\n")) {
      const keep = select.value || wanted || "";
      select.replaceChildren(el("option", { value: "", text: "all" }), ...values.map((v) => el("option", { value: v, text: v })));
      select.value = keep;
    } else if (wanted !== undefined && select.value === "" && wanted) {
      select.value = wanted;
    }
  }

  let first = true;
  async function refresh() {
    const q = new URLSearchParams();
    const ns = first ? params.get("namespace") || "" : nsSel.value;
    const phase = first ? params.get("phase") || "" : phaseSel.value;
    if (ns) q.set("namespace", ns);
    if (phase) q.set("phase", phase);
    try {
      const data = await api(`/api/rollouts?${q}`);
      syncOptions(nsSel, data.namespaces, first ? ns : undefined);
      syncOptions(phaseSel, data.phases, first ? phase : undefined);
      first = false;
      fillTable(tbody, data.items.map((r) => el("tr", { "data-testid": "rollout-row", "data-name": r.name, "data-namespace": r.namespace, "data-phase": r.phase },
        el("td", { text: r.namespace }),
        el("td", {}, el("a", { href: `#/r/${encodeURIComponent(r.namespace)}/${encodeURIComponent(r.name)}`, text: r.name })),
        el("td", {}, phaseBadge(r.phase)),
        el("td", { text: r.weight }), el("td", { text: r.step }),
        el("td", { "data-testid": "approvals", text: r.approvals }),
        el("td", { class: "mono", text: r.canaryRevision }), el("td", { class: "mono", text: r.stableRevision }),
        el("td", { text: r.age }), el("td", { class: "message", text: r.message }))));
      empty.hidden = data.items.length > 0;
      empty.textContent = "No Rollouts match.";
      connection(null);
    } catch (e) { connection(e); }
  }
  view = { kind: "list", refresh };
  every(POLL_MS, refresh);
}

// ------------------------------------------------------------------ one Rollout

function section(id, title, ...body) {
  return el("section", { id, "aria-labelledby": `${id}-h` }, el("h2", { id: `${id}-h`, text: title }), ...body);
}

function rolloutView(ns, name) {
  const buttons = Object.entries(ACTIONS).map(([action, a]) =>
    el("button", { type: "button", id: `btn-${action}`, "data-action": action, "aria-keyshortcuts": a.key,
                   onclick: () => confirmAction(action) }, a.label, " ", el("kbd", { text: a.key })));
  document.getElementById("main").replaceChildren(
    el("p", {}, el("a", { href: "#/", text: "← all Rollouts" }), el("span", { class: "dim", text: "  (g)" })),
    el("h1", {}, `${ns}/${name} `, el("span", { id: "phase-slot" })),
    el("p", { id: "message", "data-testid": "message" }),
    el("div", { class: "actions", role: "group", "aria-label": "Actions" }, buttons),
    el("div", { id: "action-result", "data-testid": "action-result", role: "alert", hidden: true }),
    el("div", { class: "grid" },
      section("summary", "Now", el("dl", { id: "facts" })),
      section("change", "What changes (stable → canary)",
        el("p", { id: "diff-summary", class: "strong", "data-testid": "diff-summary" }),
        el("dl", { id: "change-facts" }),
        el("pre", { id: "diff-lines", "data-testid": "diff-lines" }))),
    section("approvals", "Approvals", el("div", { id: "approvals-body", "data-testid": "approvals" })),
    section("steps", "Steps", el("ol", { id: "steps-list", class: "timeline" })),
    section("plots", "Canary vs stable (Prometheus, the operator's own queries)",
      el("p", { id: "plots-note", class: "dim" }), el("div", { id: "plots-body", class: "plots" })),
    section("measurements", "Measurements (last per metric)", el("table", {},
      el("thead", {}, el("tr", {}, ["metric", "verdict", "value", "bound", "streak", "measured", "message"].map((h) => el("th", { scope: "col", text: h })))),
      el("tbody", { id: "measurements-body" }))),
    section("events", "Events", el("table", {},
      el("thead", {}, el("tr", {}, ["age", "type", "reason", "count", "message"].map((h) => el("th", { scope: "col", text: h })))),
      el("tbody", { id: "events-body" }))),
  );
  document.title = `${ns}/${name} · controlled-friction`;
  view = { kind: "rollout", ns, name, data: null, charts: {} };
  const base = `/api/rollouts/${encodeURIComponent(ns)}/${encodeURIComponent(name)}`;
  const current = view;
  async function refresh() {
    try {
      const d = await api(base);
      if (view !== current) return;
      current.data = d;
      renderRollout(d);
      connection(null);
    } catch (e) { connection(e); }
  }
  async function refreshPlots() {
    try {
      const p = await api(`${base}/series`);
      if (view !== current) return;
      renderPlots(current, p);
    } catch (e) {
      document.getElementById("plots-note").textContent = `plots unavailable: ${e.message}`;
    }
  }
  current.refresh = refresh;
  every(POLL_MS, refresh);
  every(PLOT_MS, refreshPlots);
  timers.push(setInterval(tickCountdowns, 1000));
}

function dlRows(dl, rows) {
  dl.replaceChildren(...rows.filter((r) => r).flatMap(([k, v, testid]) =>
    [el("dt", { text: k }), el("dd", { "data-testid": testid || null }, v)]));
}

function fmtLeft(seconds) {
  const s = Math.max(0, Math.ceil(seconds));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60), r = s % 60;
  return r ? `${m}m${r}s` : `${m}m`;
}

function tickCountdowns() {
  for (const span of document.querySelectorAll("[data-deadline]")) {
    const left = (Number(span.dataset.deadline) - Date.now()) / 1000;
    span.textContent = left > 0 ? `${fmtLeft(left)} left` : "time done";
  }
}

function renderRollout(d) {
  document.getElementById("phase-slot").replaceChildren(phaseBadge(d.phase));
  document.getElementById("message").textContent = d.message || "";
  const rev = d.actedRevision;
  for (const [action] of Object.entries(ACTIONS)) {
    const b = document.getElementById(`btn-${action}`);
    const ok = action === "retry" ? d.phase === "RolledBack" && !!rev : !!d.hasCanary;
    b.disabled = !ok;
    b.title = ok ? `${ACTIONS[action].verb} revision ${rev}` : (action === "retry" ? "only a rolled-back revision can be retried" : "no canary in progress");
  }
  const appr = d.approvals;
  dlRows(document.getElementById("facts"), [
    ["Stable revision", d.stableRevision],
    ["Canary revision", d.canaryRevision, "canary-revision"],
    ["Template revision", d.templateRevision || "-"],
    ["Weight", `${d.weight} step weight${d.effectiveWeight !== null ? `, ${d.effectiveWeight}% effective` : ""}`],
    ["Step", d.stepText],
    ["Approvals", appr ? appr.summary : "-"],
    ["Policies", (d.policies || []).join(", ") || "none match"],
    d.frozen ? ["Frozen", d.frozen] : null,
    d.pendingAction ? ["Pending action", d.pendingAction] : null,
    d.statusProblem ? ["Status", d.statusProblem] : null,
  ]);
  // what changes
  const diff = d.diff;
  document.getElementById("diff-summary").textContent = diff ? diff.summary : `diff unavailable: ${d.diffError}`;
  dlRows(document.getElementById("change-facts"), [
    ["Change record", d.changeRecord || "— none given", "change-record"],
    ["Author", (d.author || "— not recorded by the webhook") + (d.changeAuthor && d.changeAuthor !== d.author ? ` (change author: ${d.changeAuthor})` : ""), "author"],
    diff ? ["Revisions", `${diff.stableRevision || "-"} → ${diff.canaryRevision || "-"}`] : null,
  ]);
  const pre = document.getElementById("diff-lines");
  pre.replaceChildren(...(d.diffLines || []).map((line) => el("span", { class: `diff-${line[0] === "+" ? "add" : line[0] === "-" ? "del" : "chg"}`, text: line + "\n" })));
  pre.hidden = !(d.diffLines || []).length;
  // approvals
  const body = document.getElementById("approvals-body");
  if (!appr) body.replaceChildren(el("p", { text: "-" }));
  else {
    const who = appr.approvers.length
      ? el("ul", {}, appr.approvers.map((a) => el("li", { "data-testid": "approver" }, el("strong", { text: a.user }), ` approved ${a.ago} ago`, el("span", { class: "dim", text: a.time ? ` (${a.time})` : "" }))))
      : el("p", { class: "dim", text: appr.summary === "-" ? "no approvals required" : "nobody yet" });
    const needs = [];
    if (appr.more !== null && appr.summary !== "-") needs.push(el("p", { "data-testid": "approvals-more", text: `${appr.summary} counted; ${appr.more} more needed${appr.groups.length ? ` from ${appr.groups.join(", ")}` : ""}` }));
    if (appr.needs) needs.push(el("p", { class: "dim", text: `gate: ${appr.needs}` }));
    if (d.author) needs.push(el("p", { class: "dim", text: `${d.author} (the author) cannot approve this revision.` }));
    body.replaceChildren(who, ...needs);
  }
  // steps
  document.getElementById("steps-list").replaceChildren(...(d.steps || []).map((s) => {
    const by = s.addedBy.length ? s.addedBy.map((a) => `${a.policy}: ${a.rule}`).join("; ") : "rollout spec";
    const li = el("li", { class: `step step-${s.state}`, "data-testid": "step", "aria-current": s.state === "current" ? "step" : null },
      el("span", { class: "step-state", text: s.state === "current" ? "▶ now" : s.state === "done" ? "✓ done" : "· next" }), " ",
      el("strong", { text: `${s.index}. ${s.kind}` }), ` — ${s.summary}`,
      s.state === "current" && s.remainingSeconds !== null
        ? el("span", { class: "countdown", "data-testid": "countdown", "data-deadline": String(Date.now() + s.remainingSeconds * 1000), text: `${fmtLeft(s.remainingSeconds)} left` }) : null,
      el("div", { class: "dim", text: `added by ${by}` }));
    return li;
  }));
  if (!(d.steps || []).length) document.getElementById("steps-list").replaceChildren(el("li", { class: "dim", text: "no effective plan yet" }));
  // measurements & events
  fillTable(document.getElementById("measurements-body"), (d.measurements || []).map((m) => el("tr", {},
    el("td", { text: m.metric }), el("td", {}, el("span", { class: `verdict verdict-${m.verdict || "none"}`, text: m.verdict || "not measured yet" })),
    el("td", { text: m.value }), el("td", { text: m.bound }), el("td", { text: m.streak }), el("td", { text: m.measured }),
    el("td", { class: "message", text: m.message }))));
  fillTable(document.getElementById("events-body"), (d.events || []).slice().reverse().map((e) => el("tr", { class: e.type === "Warning" ? "warning" : "" },
    el("td", { text: e.age }), el("td", { text: e.type }), el("td", { text: e.reason }), el("td", { text: String(e.count) }),
    el("td", { class: "message", text: e.message }))));
}

function fmtValue(unit, v) {
  if (v === null || v === undefined) return "–";
  if (unit === "ratio") return `${(v * 100).toPrecision(3)}%`;
  return Number(v).toPrecision(3);
}

function renderPlots(current, p) {
  const note = document.getElementById("plots-note");
  const holder = document.getElementById("plots-body");
  if (p.error || p.note) {
    note.textContent = p.error || p.note;
    if (!p.panels.length) { holder.replaceChildren(); current.charts = {}; return; }
  } else {
    note.textContent = `revision ${p.canaryRevision}, ${new Date(p.from * 1000).toLocaleTimeString()}–${new Date(p.to * 1000).toLocaleTimeString()}, step ${p.step}s, from ${p.prometheus}`;
  }
  const seen = new Set();
  for (const panel of p.panels) {
    const key = `${panel.metric}|${panel.title}`;
    seen.add(key);
    let entry = current.charts[key];
    const shape = (panel.series || []).map((s) => s.label).join("|");
    if (!entry || entry.shape !== shape) {
      if (entry) { entry.chart && entry.chart.destroy(); entry.fig.remove(); }
      const target = el("div", { class: "chart" });
      const caption = el("figcaption", { text: panel.title });
      const summary = el("p", { class: "plot-summary" });
      const fig = el("figure", { "data-testid": "plot", "data-metric": panel.metric, tabindex: "0", "aria-label": panel.title }, caption, target, summary);
      holder.append(fig);
      entry = { fig, target, summary, shape, chart: null };
      current.charts[key] = entry;
      if (window.uPlot && panel.series) {
        const opts = {
          width: Math.max(300, (fig.clientWidth || 600) - 20), height: 220,
          scales: { x: { time: true } },
          series: [{}, ...panel.series.map((s) => ({ label: s.label, spanGaps: false, points: { show: false }, ...ROLE_STYLE[s.role],
                                                     value: (u, v) => fmtValue(panel.unit, v) }))],
          axes: [{}, { size: 72, values: (u, vals) => vals.map((v) => fmtValue(panel.unit, v)) }],
        };
        entry.chart = new uPlot(opts, [panel.x, ...panel.series.map((s) => s.values)], target);
      }
    } else if (entry.chart) {
      entry.chart.setData([panel.x, ...panel.series.map((s) => s.values)]);
    }
    const parts = (panel.series || []).map((s) => {
      const last = [...s.values].reverse().find((v) => v !== null && v !== undefined);
      return `${s.label}: ${s.points} points, last ${fmtValue(panel.unit, last)}`;
    });
    entry.summary.textContent = panel.error ? `error: ${panel.error}` : parts.join(" · ");
    for (const s of panel.series || []) entry.fig.dataset[`points${s.role[0].toUpperCase()}${s.role.slice(1)}`] = String(s.points);
  }
  for (const [key, entry] of Object.entries(current.charts)) {
    if (!seen.has(key)) { entry.chart && entry.chart.destroy(); entry.fig.remove(); delete current.charts[key]; }
  }
}

// ------------------------------------------------------------------ actions

function confirmAction(action) {
  if (!view || view.kind !== "rollout" || !view.data) return;
  const d = view.data;
  const rev = d.actedRevision;
  if (!rev) return;
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-title").textContent = `${ACTIONS[action].label} ${d.namespace}/${d.name}`;
  document.getElementById("confirm-text").textContent =
    `${ACTIONS[action].verb[0].toUpperCase()}${ACTIONS[action].verb.slice(1)} revision ${rev} of ${d.namespace}/${d.name} as ${me.user}?`;
  const details = document.getElementById("confirm-details");
  dlRows(details, [
    ["Change", d.diff ? d.diff.summary : (d.diffError || "-")],
    ["Change record", d.changeRecord || "— none given"],
    ["Author", d.author || "-"],
    ["Phase", d.phase],
  ]);
  const yes = document.getElementById("confirm-yes");
  yes.textContent = `Yes, ${ACTIONS[action].verb} ${rev}`;
  dialog.returnValue = "";
  dialog.onclose = async () => {
    if (dialog.returnValue !== "yes") return;
    await perform(action, d.namespace, d.name, rev);
  };
  dialog.showModal();
  document.getElementById("confirm-cancel").focus();
}

async function perform(action, ns, name, revision) {
  const box = document.getElementById("action-result");
  box.hidden = false;
  box.className = "banner";
  box.textContent = `${action} of ${revision}: sending as ${me.user}…`;
  try {
    const res = await api(`/api/rollouts/${encodeURIComponent(ns)}/${encodeURIComponent(name)}/${action}`, {
      method: "POST", headers: { "Content-Type": "application/json", "X-CF-Dashboard": "1" },
      body: JSON.stringify({ revision }),
    });
    box.className = "banner ok";
    box.textContent = res.message + (res.hint ? ` — ${res.hint}` : "");
  } catch (e) {
    box.className = "banner error";
    box.replaceChildren(el("strong", { text: `${action} refused: ` }), el("span", { "data-testid": "refusal", text: e.message }));
  }
  if (view && view.refresh) view.refresh();
}

// ------------------------------------------------------------------ routing and keys

function route() {
  for (const t of timers) clearInterval(t);
  timers = [];
  const path = location.hash.replace(/^#/, "").split("?")[0];
  const m = path.match(/^\/r\/([^/]+)\/([^/]+)$/);
  if (m) rolloutView(decodeURIComponent(m[1]), decodeURIComponent(m[2]));
  else listView();
  document.getElementById("main").focus({ preventScroll: true });
}

document.addEventListener("keydown", (ev) => {
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const confirmOpen = document.getElementById("confirm").open;
  if (confirmOpen) {
    if (ev.key === "y") { ev.preventDefault(); document.getElementById("confirm").close("yes"); }
    return;
  }
  if (document.getElementById("help").open) return;
  const t = ev.target;
  if (t && (t.tagName === "INPUT" || t.tagName === "SELECT" || t.tagName === "TEXTAREA")) return;
  if (ev.key === "?") { ev.preventDefault(); document.getElementById("help").showModal(); return; }
  if (ev.key === "g") { ev.preventDefault(); location.hash = "#/"; return; }
  if (ev.key === "/" && view && view.kind === "list") { ev.preventDefault(); document.getElementById("ns-filter").focus(); return; }
  if (view && view.kind === "rollout") {
    for (const [action, a] of Object.entries(ACTIONS)) {
      if (ev.key === a.key) {
        const b = document.getElementById(`btn-${action}`);
        if (b && !b.disabled) { ev.preventDefault(); confirmAction(action); }
        return;
      }
    }
  }
});

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", async () => {
  document.getElementById("help-button").addEventListener("click", () => document.getElementById("help").showModal());
  try {
    me = await api("/api/whoami");
    document.getElementById("whoami").textContent =
      `acting as ${me.user}${me.context ? ` (context ${me.context})` : ""} — every action is made with these credentials`;
  } catch (e) { connection(e); }
  route();
});
