// The autoresearch dashboard: reads the run through /api/* (read-only) and follows /api/events for changes.
// Everything the run wrote (descriptions, diffs, logs) is untrusted text: it only ever goes into textContent.
"use strict";

(function () {
  // ---- token: from the address's fragment once, then the tab's sessionStorage; sent as a bearer header ----
  const KEY = "autoresearch-token";
  const frag = new URLSearchParams(location.hash.slice(1));
  if (frag.get("token")) {
    sessionStorage.setItem(KEY, frag.get("token"));
    history.replaceState(null, "", location.pathname + location.search);
  }
  const token = sessionStorage.getItem(KEY);
  const headers = token ? { Authorization: "Bearer " + token } : {};

  async function getJSON(url) {
    const r = await fetch(url, { headers, cache: "no-store" });
    if (!r.ok) {
      let msg = r.status + " " + r.statusText;
      try { const b = await r.json(); msg = (b.error && (b.error.message || b.error)) || msg; } catch (_) { /* keep */ }
      throw new Error(msg);
    }
    return r.json();
  }

  // ---- small DOM helpers (text only, never HTML from data) ----
  const $ = (id) => document.getElementById(id);
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function add(parent, ...kids) { for (const k of kids) if (k) parent.appendChild(k); return parent; }
  const fmt = (v, d = 6) => (v === null || v === undefined ? "–" : Number(v).toFixed(d));
  const signed = (v, d = 6) => (v === null || v === undefined ? "–" : (v > 0 ? "+" : "") + Number(v).toFixed(d));
  function dur(s) {
    if (s === null || s === undefined) return "–";
    s = Math.max(0, Math.round(s));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), ss = s % 60;
    return h ? `${h}h ${String(m).padStart(2, "0")}m` : `${m}:${String(ss).padStart(2, "0")}`;
  }
  const hhmm = (iso) => (iso ? String(iso).slice(11, 19) : "");
  function badge(cls, text, title) { const b = el("span", "badge " + cls, text); if (title) b.title = title; return b; }

  // ---- state ----
  const PAGE = 50;
  const state = { summary: null, clockSkew: 0, ledgerVersion: null, offset: 0, selected: null, chart: null,
                  chartData: null, seenIds: new Set(), firstRender: true };
  const better = () => (state.summary && state.summary.direction === "maximize" ? 1 : -1);

  // ---- header and side cards, from the summary ----
  function renderSummary(s) {
    state.summary = s;
    state.clockSkew = s.now - Date.now() / 1000;
    $("tag").textContent = s.tag;
    document.title = `autoresearch · ${s.tag}`;
    const head = $("headline");
    head.replaceChildren();
    const dir = s.direction === "maximize" ? "higher" : "lower";
    if (s.baseline !== null && s.best !== null) {
      const change = s.best - s.baseline;
      const pct = s.baseline ? (100 * change) / Math.abs(s.baseline) : 0;
      const improved = change * better() > 0;
      add(head, el("span", "muted", `${s.metric} (${dir} is better): baseline `), el("b", null, fmt(s.baseline)),
          el("span", "muted", " → best "), el("b", improved ? "good" : null, fmt(s.best)),
          el("span", improved ? "good" : "muted", ` (${signed(change)}, ${signed(pct, 2)}%)`),
          el("span", "muted", s.best_id ? ` at #${s.best_id}` : ""));
    } else {
      add(head, el("span", "muted", `${s.metric} (${dir} is better): no successful baseline yet`));
    }
    if (s.holdout) add(head, el("span", "muted", ` · holdout ${fmt(s.holdout.value)} (#${s.holdout.id})`));
    if (s.noise_floor !== null && s.noise_floor !== undefined) add(head, el("span", "muted", ` · noise floor ±${fmt(s.noise_floor)}`));

    const chips = $("chips");
    chips.replaceChildren();
    const chip = (label, value, cls) => { const c = el("span", "chip " + (cls || "")); add(c, el("b", null, value), document.createTextNode(" " + label)); chips.appendChild(c); };
    const sc = s.status_counts, dc = s.decision_counts;
    chip(s.experiments === 1 ? "experiment" : "experiments", s.experiments);
    chip("kept", dc.keep || 0, "good");
    chip("discarded", dc.discard || 0);
    if (dc.pending) chip("pending", dc.pending);
    for (const k of ["crash", "timeout", "invalid", "confirming"]) if (sc[k]) chip(k === "crash" ? "crashed" : k === "timeout" ? "timed out" : k, sc[k], k === "confirming" ? "" : "bad");
    for (const [k, v] of Object.entries(s.flags || {})) if (k !== "confirmation") chip(k, v, "warn");
    const v = s.violations && s.violations.count;
    if (v) chip(v === 1 ? "violation" : "violations", v, "bad");
    const cost = s.supervisor && s.supervisor.status && s.supervisor.status.cost_usd;
    if (cost) chip("spent", "$" + Number(cost).toFixed(2));

    renderNow(); renderNight(s.supervisor, s.violations); renderAudit(s.audit, s.violations);
    const lv = JSON.stringify(s.version.ledger) + JSON.stringify(s.version.run);
    if (lv !== state.ledgerVersion) { state.ledgerVersion = lv; refreshLedger(); }
  }

  function renderNow() {
    const s = state.summary; if (!s) return;
    const box = $("now"); box.replaceChildren();
    const now = Date.now() / 1000 + state.clockSkew;
    if (!s.slots.length) box.appendChild(el("p", "muted", "Nothing running."));
    for (const slot of s.slots) {
      const total = slot.deadline - slot.started_at, left = slot.deadline - now;
      const div = el("div", "slot");
      add(div, add(el("div"), el("b", null, `#${slot.id} `), el("span", null, slot.description)));
      const bar = el("div", "bar" + (left < 0 ? " late" : "")), fill = el("i");
      fill.style.width = Math.min(100, Math.max(0, (100 * (now - slot.started_at)) / total)) + "%";
      add(div, add(bar, fill), el("div", "muted small", `${dur(now - slot.started_at)} elapsed · ${left >= 0 ? dur(left) + " left of the hard limit" : "past its hard limit by " + dur(-left)}${slot.device ? " · " + slot.device : ""}`));
      box.appendChild(div);
    }
    const lim = s.limits;
    if (lim) {
      const parts = [];
      if (lim.deadline) parts.push(`stops in ${dur(lim.deadline - now)}`);
      if (lim.max_experiments) parts.push(`at ${lim.max_experiments} experiments`);
      if (lim.max_cost_usd) parts.push(`at $${Number(lim.max_cost_usd).toFixed(2)}`);
      if (parts.length) box.appendChild(el("p", "muted small", "Limits: " + parts.join(", ")));
    }
  }

  function stat(parent, label, value, alert) {
    parent.appendChild(add(el("div", "stat" + (alert ? " alert" : "")), el("b", null, value), el("span", null, label)));
  }

  function renderNight(sup, violations) {
    const box = $("night"); box.replaceChildren();
    if (!sup || !sup.present) { box.appendChild(el("p", "muted", "No supervisor on this run (an interactive session, or not started yet).")); return; }
    const st = sup.status || {};
    const line = el("div");
    add(line, el("span", "state st-" + (st.state || "none"), st.state || "unknown"));
    if (st.reason) add(line, el("span", "muted small", " " + st.reason));
    box.appendChild(line);
    if (sup.stale_s !== null && sup.stale_s > 30 && !["STOPPED", "FATAL"].includes(st.state)) box.appendChild(el("p", "warn small", `supervisor.json not updated for ${dur(sup.stale_s)}: is the harness still running?`));
    if (st.fatal_message) box.appendChild(el("p", "bad small", st.fatal_message));
    if (st.stop_reason) box.appendChild(el("p", "muted small", "stopped: " + st.stop_reason));
    const grid = el("div", "stats");
    const ev = sup.events || {};
    stat(grid, "sessions", (st.sessions || []).length || ev.start || 0);
    stat(grid, "restarts", st.restarts ?? ev.restart ?? 0);
    stat(grid, "resumes", st.resumes ?? ev.resume ?? 0);
    stat(grid, "stalls", st.stalls ?? ev.stall ?? 0, (st.stalls ?? ev.stall) > 0);
    stat(grid, "backoffs", st.backoffs ?? ev.backoff ?? 0, (st.backoffs ?? ev.backoff) > 0);
    const nv = violations && violations.count !== null ? violations.count : (st.violations || 0);
    stat(grid, "violations", nv, nv > 0);
    stat(grid, "cost", "$" + Number(st.cost_usd || 0).toFixed(2));
    const tokens = Object.entries(st).filter(([k, v]) => /tokens/.test(k) && typeof v === "number");
    for (const [k, v] of tokens) stat(grid, k.replace(/_/g, " "), v >= 1e6 ? (v / 1e6).toFixed(1) + "M" : v >= 1e3 ? (v / 1e3).toFixed(1) + "k" : v);
    stat(grid, "uptime", dur(st.uptime_s || 0));
    box.appendChild(grid);
    if (sup.recent && sup.recent.length) {
      const ul = el("ul", "events");
      for (const e of sup.recent.slice().reverse()) {
        add(ul, add(el("li"), el("time", null, hhmm(e.time)), el("b", e.status === "error" ? "bad" : null, e.event), el("span", "muted", e.message ? " " + e.message : "")));
      }
      box.appendChild(ul);
    }
  }

  function renderAudit(a, violations) {
    const box = $("audit"); box.replaceChildren();
    if (!a || a.ok === null) { box.appendChild(el("p", "muted", "No audit log yet.")); return; }
    box.appendChild(el("div", "verdict " + (a.ok ? "ok" : "broken"), a.ok ? `✔ chain intact · ${a.records} records` : `✘ chain broken${a.first_bad_line ? " at line " + a.first_bad_line : ""}`));
    if (!a.ok) box.appendChild(el("p", "bad small", a.message));
    if (a.checked_at) box.appendChild(el("div", "muted small", "chain checked at " + new Date(a.checked_at * 1000).toLocaleTimeString()));
    const tools = Object.entries(a.tool_calls || {});
    if (tools.length) {
      const statuses = [...new Set(tools.flatMap(([, m]) => Object.keys(m)))].sort((x, y) => (x === "ok" ? -1 : y === "ok" ? 1 : x.localeCompare(y)));
      const t = el("table", "mini"), hr = el("tr");
      add(hr, el("th", null, "tool call"), ...statuses.map((s) => el("th", "num", s)));
      add(t, add(el("thead"), hr));
      const tb = el("tbody");
      for (const [tool, m] of tools) add(tb, add(el("tr"), el("td", null, tool), ...statuses.map((s) => el("td", "num" + (s !== "ok" && m[s] ? " bad" : ""), m[s] || ""))));
      box.appendChild(add(t, tb));
    } else box.appendChild(el("p", "muted small", "No tool calls recorded."));
    if (a.refusals) box.appendChild(el("p", "warn small", `${a.refusals} refused or blocked ${a.refusals === 1 ? "action" : "actions"}`));
    if (violations && violations.recent && violations.recent.length) {
      box.appendChild(el("h3", null, "Violations"));
      const ul = el("ul", "events");
      for (const v of violations.recent.slice().reverse()) add(ul, add(el("li"), el("time", null, hhmm(v.time)), el("span", "bad", v.path || ""), el("span", "muted", " " + (v.detail || ""))));
      box.appendChild(ul);
    }
  }

  // ---- the chart ----
  const STRIP = 0.11; // share of the plot height below the metric scale, for runs without a metric
  const COLORS = { best: "#1565c0", kept: "#2e7d32", disc: "#9aa1ad", pend: "#f9a825", crash: "#c62828",
                   timeout: "#ef6c00", invalid: "#6a1b9a", hold: "#8e24aa", warn: "#e65100", conf: "#0d47a1" };

  function runningBest(c) {
    // The server sends only the corners of the step line: [id, value] where the best changes.
    const out = new Array(c.ids.length).fill(null);
    let k = -1;
    for (let i = 0; i < c.ids.length; i++) {
      while (k + 1 < c.best_steps.length && c.best_steps[k + 1][0] <= c.ids[i]) k++;
      if (k >= 0) out[i] = c.best_steps[k][1];
    }
    return out;
  }

  function chartSeries(c) {
    const n = c.ids.length, [lo, hi] = c.range || [0, 1];
    const kept = new Array(n).fill(null), disc = new Array(n).fill(null), pend = new Array(n).fill(null);
    const off = [], fails = [], flagged = [];
    for (let i = 0; i < n; i++) {
      const m = c.metric[i], s = c.status[i], d = c.decision[i];
      if (s === "c" || s === "t" || s === "i") { if (m === null) { fails.push(i); continue; } }
      if (m === null) continue;
      if (m < lo || m > hi) { off.push(i); continue; }
      (d === "k" ? kept : d === "p" ? pend : disc)[i] = m;
      if (c.flags && c.flags[i] & 3) flagged.push(i);
    }
    return { kept, disc, pend, off, fails, flagged };
  }

  function drawChart(c) {
    const box = $("chart");
    if (state.chart) { state.chart.destroy(); state.chart = null; }
    box.replaceChildren();
    const note = $("chart-note"); note.textContent = "";
    if (!c.ids.length || !c.range) { box.appendChild(el("p", "muted", c.ids.length ? "No result with a metric yet." : "No experiments yet.")); box.dataset.drawn = "empty"; return; }
    const s = chartSeries(c);
    const [lo, hi] = c.range, stripLo = lo - ((hi - lo) * STRIP) / (1 - STRIP);
    const best = c.best.map((v) => (v === null ? null : Math.min(hi, Math.max(lo, v))));
    const series = [{ label: "#" },
      { label: "running best", stroke: COLORS.best, width: 2, paths: uPlot.paths.stepped({ align: 1 }), points: { show: false }, value: (u, v) => fmt(v) },
      { label: "kept", stroke: COLORS.kept, fill: COLORS.kept, paths: () => null, points: { show: true, size: 9, width: 1, stroke: "#fff", fill: COLORS.kept }, value: (u, v) => fmt(v) },
      { label: "discarded", stroke: COLORS.disc, paths: () => null, points: { show: true, size: 6, width: 1, stroke: COLORS.disc, fill: "#cfd3da" }, value: (u, v) => fmt(v) },
      { label: "pending", stroke: COLORS.pend, paths: () => null, points: { show: true, size: 8, width: 2, stroke: COLORS.pend, fill: "#fff" }, value: (u, v) => fmt(v) }];
    const data = [c.ids, best, s.kept, s.disc, s.pend];
    let holdRange = null;  // another split, another level: a scale of its own (right), over the metric's band
    if (c.holdout) {
      const hv = c.holdout.filter((v) => v !== null);
      const pad = ((Math.max(...hv) - Math.min(...hv)) || Math.abs(hv[0]) * 0.01 || 0.01) * 0.4;
      const top = Math.max(...hv) + pad, bottom = Math.min(...hv) - pad;
      holdRange = [bottom - ((top - bottom) * STRIP) / (1 - STRIP), top];
      series.push({ label: "holdout", scale: "hold", stroke: COLORS.hold, width: 1.5, dash: [5, 4], spanGaps: true, points: { show: true, size: 4 }, value: (u, v) => fmt(v) });
      data.push(c.holdout);
    }
    const labels = Object.entries(c.labels).map(([id, text]) => [Number(id), text]);
    const idx = new Map(c.ids.map((id, i) => [id, i]));
    const opts = {
      width: Math.max(300, box.clientWidth), height: 380,
      scales: { x: { time: false, range: (u, a, b) => (a <= c.ids[0] && b >= c.ids[c.ids.length - 1] ? [c.ids[0] - 0.5, c.ids[c.ids.length - 1] + 0.5] : [a, b]) }, y: { range: () => [stripLo, hi] },
                ...(holdRange ? { hold: { range: () => holdRange } } : {}) },
      axes: [{ label: "experiment", size: 40, values: (u, vals) => vals.map((v) => (Number.isInteger(v) ? v : "")) },
             { label: state.summary ? state.summary.metric : "metric", size: 70,
               values: (u, vals) => vals.map((v) => (v < lo - 1e-12 ? "" : v.toPrecision(5))) },
             ...(holdRange ? [{ scale: "hold", side: 1, label: "holdout", size: 64, stroke: COLORS.hold, grid: { show: false },
                                values: (u, vals) => vals.map((v) => (v < holdRange[0] + (holdRange[1] - holdRange[0]) * STRIP ? "" : v.toPrecision(5))) }] : [])],
      cursor: { points: { size: 8 } },
      legend: { show: false },
      series,
      hooks: {
        drawClear: [(u) => drawBands(u, c, lo, hi, stripLo)],
        draw: [(u) => drawOverlays(u, c, s, lo, hi, stripLo, labels, idx)],
        setCursor: [(u) => showHover(c, u.cursor.idx)],
      },
    };
    state.chart = new uPlot(opts, data, box);
    state.chart.over.addEventListener("click", () => {
      const i = state.chart.cursor.idx;
      if (i !== null && i !== undefined) select(c.ids[i]);
    });
    if (s.off.length) note.textContent = `· ${s.off.length} result${s.off.length === 1 ? "" : "s"} outside the focused range, drawn as ▲ at the edge`;
    renderKey(c, s);
    box.dataset.drawn = String(c.ids.length);
  }

  const STATUS_WORDS = { o: "ok", c: "crash", t: "timeout", i: "invalid", f: "confirming" };
  const DECISION_WORDS = { k: "kept", d: "discarded", p: "pending" };
  function showHover(c, i) {
    const h = $("chart-hover");
    if (i === null || i === undefined) { h.textContent = "Hover a point to see it; click to open it."; return; }
    const m = c.metric[i], label = c.labels[String(c.ids[i])];
    h.textContent = `#${c.ids[i]} · ${STATUS_WORDS[c.status[i]] || "?"}${m !== null ? " " + fmt(m) : ""} · ${DECISION_WORDS[c.decision[i]]}` +
      ` · best so far ${fmt(c.best[i])}${label ? " · " + label : ""}`;
  }

  function renderKey(c, s) {
    const k = $("chart-key"); k.replaceChildren();
    const item = (cls, text) => k.appendChild(el("span", cls, text));
    item("k-best", "running best"); item("k-kept", "kept (labelled)"); item("k-disc", "discarded");
    if (s.pend.some((v) => v !== null)) item("k-pend", "pending");
    if (c.status.includes("c")) item("k-crash", "crash");
    if (c.status.includes("t")) item("k-timeout", "timeout");
    if (c.status.includes("i")) item("k-invalid", "invalid");
    if (s.off.length) item("k-off", "off the chart");
    if (s.flagged.length) item("k-flag", "unverified / unsealed");
    if (c.noise_floor) item("k-noise", "noise floor");
    if (c.holdout) item("k-hold", "holdout (right scale)");
  }

  function drawBands(u, c, lo, hi, stripLo) {
    const ctx = u.ctx, { left, top, width, height } = u.bbox;
    const y0 = u.valToPos(lo, "y", true), yb = u.valToPos(stripLo, "y", true);
    ctx.save();
    ctx.fillStyle = "#f6f0f0";
    ctx.fillRect(left, y0, width, yb - y0);
    ctx.strokeStyle = "#d9c9c9"; ctx.setLineDash([4, 3]); ctx.beginPath(); ctx.moveTo(left, y0); ctx.lineTo(left + width, y0); ctx.stroke();
    ctx.setLineDash([]);
    ctx.fillStyle = "#a08080"; ctx.font = `${11 * devicePixelRatio}px system-ui, sans-serif`; ctx.textBaseline = "middle";
    ctx.fillText("no metric: crash / timeout / invalid", left + 6 * devicePixelRatio, (y0 + yb) / 2 - 7 * devicePixelRatio);
    if (c.noise_floor) {
      ctx.fillStyle = "rgba(21,101,192,0.13)";
      for (let i = 0; i < c.ids.length; i++) {
        const b = c.best[i]; if (b === null) continue;
        const x1 = u.valToPos(c.ids[i], "x", true), x2 = i + 1 < c.ids.length ? u.valToPos(c.ids[i + 1], "x", true) : left + width;
        const ya = u.valToPos(Math.min(hi, b + c.noise_floor), "y", true), yz = u.valToPos(Math.max(lo, b - c.noise_floor), "y", true);
        ctx.fillRect(x1, ya, x2 - x1, yz - ya);
      }
    }
    ctx.restore();
    void top; void height;
  }

  function drawOverlays(u, c, s, lo, hi, stripLo, labels, idx) {
    const ctx = u.ctx, r = devicePixelRatio, { left, top, width } = u.bbox;
    const y0 = u.valToPos(lo, "y", true), yb = u.valToPos(stripLo, "y", true), ymid = (y0 + yb) / 2 + 5 * r;
    const inX = (x) => x >= left - 1 && x <= left + width + 1;
    ctx.save();
    for (const i of s.fails) {
      const x = u.valToPos(c.ids[i], "x", true); if (!inX(x)) continue;
      const st = c.status[i];
      if (st === "c") { ctx.strokeStyle = COLORS.crash; ctx.lineWidth = 2 * r; const d = 4 * r; ctx.beginPath(); ctx.moveTo(x - d, ymid - d); ctx.lineTo(x + d, ymid + d); ctx.moveTo(x + d, ymid - d); ctx.lineTo(x - d, ymid + d); ctx.stroke(); }
      else if (st === "t") { ctx.fillStyle = COLORS.timeout; const d = 5 * r; ctx.beginPath(); ctx.moveTo(x, ymid - d); ctx.lineTo(x + d, ymid); ctx.lineTo(x, ymid + d); ctx.lineTo(x - d, ymid); ctx.closePath(); ctx.fill(); }
      else { ctx.fillStyle = COLORS.invalid; const d = 3.5 * r; ctx.fillRect(x - d, ymid - d, 2 * d, 2 * d); }
    }
    for (const i of s.off) {
      const x = u.valToPos(c.ids[i], "x", true); if (!inX(x)) continue;
      const above = c.metric[i] > hi, y = above ? top + 5 * r : y0 - 5 * r, d = 4.5 * r;
      ctx.fillStyle = c.decision[i] === "k" ? COLORS.kept : COLORS.disc;
      ctx.beginPath();
      if (above) { ctx.moveTo(x, y - d); ctx.lineTo(x + d, y + d); ctx.lineTo(x - d, y + d); } else { ctx.moveTo(x, y + d); ctx.lineTo(x + d, y - d); ctx.lineTo(x - d, y - d); }
      ctx.closePath(); ctx.fill();
    }
    ctx.strokeStyle = COLORS.warn; ctx.lineWidth = 2 * r;
    for (const i of s.flagged) {
      const x = u.valToPos(c.ids[i], "x", true), y = u.valToPos(c.metric[i], "y", true); if (!inX(x)) continue;
      ctx.beginPath(); ctx.arc(x, y, 7.5 * r, 0, 2 * Math.PI); ctx.stroke();
    }
    // Labels of kept changes, the most recent first, skipped where they would overlap one already written.
    ctx.font = `${11 * r}px system-ui, sans-serif`; ctx.textBaseline = "alphabetic";
    const boxes = [];
    const free = (b) => b.x1 >= left && b.x2 <= left + width && b.y1 >= top && b.y2 <= y0 - 2 * r && !boxes.some((o) => b.x1 < o.x2 && b.x2 > o.x1 && b.y1 < o.y2 && b.y2 > o.y1);
    for (const [id, text] of labels.slice().reverse()) {
      const i = idx.get(id); const m = c.metric[i];
      if (m === null || m < lo || m > hi) continue;
      const x = u.valToPos(id, "x", true), y = u.valToPos(m, "y", true); if (!inX(x)) continue;
      const w = ctx.measureText(text).width, h = 13 * r;
      const spots = [[x + 6 * r, y - 6 * r], [x - w - 6 * r, y - 6 * r], [x + 6 * r, y + h + 2 * r], [x - w - 6 * r, y + h + 2 * r], [x - w / 2, y - 12 * r]];
      for (const [tx, ty] of spots) {
        const b = { x1: tx - 2 * r, x2: tx + w + 2 * r, y1: ty - h + 2 * r, y2: ty + 3 * r };
        if (!free(b)) continue;
        boxes.push(b);
        ctx.lineWidth = 3 * r; ctx.strokeStyle = "rgba(255,255,255,0.9)"; ctx.strokeText(text, tx, ty);
        ctx.fillStyle = "#1b4d1e"; ctx.fillText(text, tx, ty);
        break;
      }
    }
    ctx.restore();
  }

  // ---- the table ----
  function filters() {
    const p = new URLSearchParams({ offset: state.offset, limit: PAGE });
    const st = $("f-status").value, de = $("f-decision").value, q = $("f-q").value.trim();
    if (st) p.set("status", st); if (de) p.set("decision", de); if (q) p.set("q", q);
    return p;
  }

  async function loadTable() {
    const page = await getJSON("/api/experiments?" + filters());
    const tb = $("experiments").tBodies[0];
    tb.replaceChildren();
    const firstLoad = state.seenIds.size === 0;
    for (const r of page.rows) {
      const tr = el("tr"); tr.dataset.id = r.id;
      if (r.id === state.selected) tr.classList.add("selected");
      if (!firstLoad && !state.seenIds.has(r.id)) tr.classList.add("fresh");
      state.seenIds.add(r.id);
      const change = el("td", "change");
      const text = el("span", "text", r.baseline ? "baseline" : r.description); text.title = r.description;
      change.appendChild(text);
      const tags = el("div");
      for (const f of r.flags) tags.appendChild(badge("f-" + f, f === "confirmation" ? `confirms #${r.confirms}` : f));
      if (r.seed !== null && r.seed !== undefined) tags.appendChild(badge("f-other", "seed " + r.seed));
      if (r.device) tags.appendChild(badge("f-other", r.device));
      if (tags.childNodes.length) change.appendChild(tags);
      add(tr, el("td", "num", r.id), add(el("td"), badge("s-" + r.status, r.status)), el("td", "num", fmt(r.metric)),
          el("td", "num " + (r.delta !== null && r.delta * better() > 0 ? "good" : ""), signed(r.delta)),
          add(el("td"), badge("d-" + r.decision, r.decision === "keep" ? "kept" : r.decision === "discard" ? "discarded" : "pending")), change);
      tr.addEventListener("click", () => select(r.id));
      tb.appendChild(tr);
    }
    $("count").textContent = page.total === page.all ? `· ${page.all}` : `· ${page.total} of ${page.all} match`;
    const last = Math.min(page.offset + page.rows.length, page.total);
    $("page").textContent = page.total ? `${page.offset + 1}–${last} of ${page.total}, newest first` : "nothing matches";
    $("newer").disabled = page.offset === 0;
    $("older").disabled = last >= page.total;
    $("experiments").dataset.rows = String(page.rows.length);
  }

  // ---- the detail panel ----
  function diffPre(text) {
    const pre = el("pre", "diff");
    for (const line of (text || "").split("\n")) {
      const cls = line.startsWith("+++") || line.startsWith("---") || line.startsWith("diff ") || line.startsWith("index ") ? "meta"
        : line.startsWith("+") ? "add" : line.startsWith("-") ? "del" : line.startsWith("@@") ? "hunk" : null;
      pre.appendChild(cls ? el("span", cls, line) : document.createTextNode(line + "\n"));
    }
    return pre;
  }

  async function select(id) {
    state.selected = id;
    for (const tr of $("experiments").tBodies[0].rows) tr.classList.toggle("selected", Number(tr.dataset.id) === id);
    const box = $("detail");
    let d;
    try { d = await getJSON("/api/experiments/" + id); } catch (e) { box.replaceChildren(el("p", "bad", String(e.message))); return; }
    if (state.selected !== id) return;
    $("detail-id").textContent = "#" + d.id;
    box.replaceChildren();
    const title = el("p", "detail-title", d.baseline ? "baseline" : d.description);
    add(box, title);
    const tags = el("div");
    add(tags, badge("s-" + d.status, d.status), document.createTextNode(" "), badge("d-" + d.decision, d.decision === "keep" ? "kept" : d.decision === "discard" ? "discarded" : "pending"));
    for (const f of d.flags) add(tags, document.createTextNode(" "), badge("f-" + f, f === "confirmation" ? `confirms #${d.confirms}` : f));
    box.appendChild(tags);
    const dl = el("dl", "facts");
    const fact = (k, v) => { if (v === null || v === undefined || v === "") return; add(dl, el("dt", null, k), el("dd", null, v)); };
    fact((state.summary && state.summary.metric) || "metric", fmt(d.metric)); fact("vs best before", signed(d.delta));
    fact("holdout", d.holdout !== null ? fmt(d.holdout) : null); fact("decision reason", d.decision_reason);
    fact("failure", d.failure); fact("seed", d.seed); fact("device", d.device);
    fact("time", `${dur(d.duration_s)} total${d.train_s ? ", " + dur(d.train_s) + " training" : ""}${d.eval_s ? ", " + dur(d.eval_s) + " evaluation" : ""}`);
    fact("peak memory", d.peak_memory_mb ? `${Math.round(d.peak_memory_mb)} MB` : null);
    fact("finished", d.finished_at); fact("commit", (d.kept_commit || d.commit || "").slice(0, 12));
    box.appendChild(dl);
    if (d.hypothesis) add(box, el("h3", null, "Hypothesis"), el("p", null, d.hypothesis));
    if (d.confirmations && d.confirmations.length) {
      const ul = el("ul", "events");
      for (const c of d.confirmations) add(ul, add(el("li"), el("b", null, `#${c.id} `), el("span", null, `${c.status} ${fmt(c.metric)}${c.seed !== null ? " seed " + c.seed : ""}`)));
      add(box, el("h3", null, "Confirmation runs"), ul);
    }
    add(box, el("h3", null, "Diff"), d.diff ? diffPre(d.diff) : el("p", "muted", "No change (the baseline runs the code as it was)."));
    const keys = Object.keys(d.metrics || {});
    if (keys.length) {
      const t = el("table", "mini"), tb = el("tbody");
      for (const k of keys.sort()) add(tb, add(el("tr"), el("td", null, k), el("td", "num", d.metrics[k])));
      add(box, el("h3", null, "All metrics"), add(t, tb));
    }
    add(box, el("h3", null, "Log tail"), el("pre", "log", d.log_tail || "(empty)"));
    box.dataset.id = String(d.id);
  }

  // ---- loading, and following the run ----
  let ledgerBusy = null, ledgerAgain = false;
  async function refreshLedger() {
    if (ledgerBusy) { ledgerAgain = true; return; }
    ledgerBusy = (async () => {
      try {
        const [c] = await Promise.all([getJSON("/api/chart"), loadTable()]);
        c.best = runningBest(c);
        state.chartData = c;
        drawChart(c);
        if (state.selected !== null) await select(state.selected);
        if (state.firstRender) { state.firstRender = false; document.body.dataset.readyMs = String(Math.round(performance.now())); document.body.dataset.ready = "1"; }
      } catch (e) { setLive("off", "error: " + e.message); }
    })();
    await ledgerBusy; ledgerBusy = null;
    if (ledgerAgain) { ledgerAgain = false; refreshLedger(); }
  }

  function setLive(cls, text) { const l = $("live"); l.className = "live " + cls; l.textContent = text; }

  async function follow() {
    let wait = 1000;
    for (;;) {
      try {
        const r = await fetch("/api/events", { headers: { ...headers, Accept: "text/event-stream" }, cache: "no-store" });
        if (!r.ok) {
          let msg = r.status + ""; try { const b = await r.json(); msg = (b.error && (b.error.message || b.error)) || msg; } catch (_) { /* keep */ }
          setLive("off", msg); if (r.status === 401 || r.status === 403 || r.status === 421) return;
          throw new Error(msg);
        }
        setLive("on", "live"); wait = 1000;
        const reader = r.body.getReader(), dec = new TextDecoder();
        let buf = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += dec.decode(value, { stream: true }).replace(/\r\n/g, "\n");
          let cut;
          while ((cut = buf.indexOf("\n\n")) >= 0) {
            const block = buf.slice(0, cut); buf = buf.slice(cut + 2);
            let event = "message", data = "";
            for (const line of block.split("\n")) {
              if (line.startsWith("event:")) event = line.slice(6).trim();
              else if (line.startsWith("data:")) data += line.slice(5).replace(/^ /, "");
            }
            if (event === "summary" && data) renderSummary(JSON.parse(data));
          }
        }
        setLive("off", "reconnecting…");
      } catch (e) { setLive("off", "reconnecting…"); }
      await new Promise((res) => setTimeout(res, wait));
      wait = Math.min(wait * 2, 10000);
    }
  }

  function start() {
    let timer = null;
    const reload = () => { state.offset = 0; loadTable().catch((e) => setLive("off", e.message)); };
    $("f-status").addEventListener("change", reload);
    $("f-decision").addEventListener("change", reload);
    $("f-q").addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(reload, 200); });
    $("newer").addEventListener("click", () => { state.offset = Math.max(0, state.offset - PAGE); loadTable(); });
    $("older").addEventListener("click", () => { state.offset += PAGE; loadTable(); });
    let resize = null;
    window.addEventListener("resize", () => { clearTimeout(resize); resize = setTimeout(() => state.chartData && drawChart(state.chartData), 150); });
    setInterval(renderNow, 1000);
    getJSON("/api/summary").then(renderSummary).catch((e) => setLive("off", e.message));  // not waiting for the stream
    follow();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start); else start();
})();
