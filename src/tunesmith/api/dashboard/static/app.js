// tunesmith dashboard: plain DOM, no framework, no network but this server.
// Every text from the server (dataset examples, model outputs, names) goes into the page as a text
// node (h() below): nothing from data is ever parsed as HTML.
"use strict";

const KEY = "tunesmith-key";
const FINAL = new Set(["succeeded", "failed", "cancelled", "completed", "stopped", "interrupted", "paused"]);
const SVGNS = "http://www.w3.org/2000/svg";
const COLOURS = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2"];
let timer = null;
const runsState = { sort: "created", desc: true, text: "", status: "", selected: new Set() };

// ------------------------------------------------------------------ DOM helpers

function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  for (const kid of kids.flat(Infinity)) {
    if (kid === null || kid === undefined || kid === false) continue;
    el.append(kid instanceof Node ? kid : String(kid)); // a string becomes a text node
  }
  return el;
}

function s(tag, attrs, ...kids) {
  const el = document.createElementNS(SVGNS, tag);
  setAttrs(el, attrs);
  for (const kid of kids.flat(Infinity)) {
    if (kid === null || kid === undefined || kid === false) continue;
    el.append(kid instanceof Node ? kid : String(kid));
  }
  return el;
}

function setAttrs(el, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.setAttribute("class", v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
}

function view(...kids) {
  const main = document.getElementById("view");
  main.replaceChildren(...kids.flat(Infinity).filter((k) => k !== null && k !== undefined && k !== false));
  return main;
}

function fmt(v, digits = 3) {
  if (v === null || v === undefined || v === "") return "–";
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toFixed(digits);
  return String(v);
}

function duration(sec) {
  if (sec === null || sec === undefined) return "–";
  sec = Math.round(sec);
  if (sec < 120) return `${sec} s`;
  if (sec < 7200) return `${Math.floor(sec / 60)} min ${sec % 60} s`;
  return `${Math.floor(sec / 3600)} h ${Math.floor((sec % 3600) / 60)} min`;
}

function bytes(n) {
  if (!n) return "–";
  return n >= 2 ** 30 ? `${(n / 2 ** 30).toFixed(2)} GiB` : `${(n / 2 ** 20).toFixed(0)} MiB`;
}

function badge(status) {
  return h("span", { class: `badge st-${status}`, "data-status": status }, status);
}

function kv(rows) {
  return h("table", { class: "kv" }, rows.filter((r) => r).map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, v instanceof Node ? v : fmt(v)))));
}

// Any JSON value as nested tables (judge and human-review sections, alerts' evidence): text only.
function tree(value, depth = 0) {
  if (value === null || typeof value !== "object") return document.createTextNode(fmt(value));
  if (depth > 3) return document.createTextNode(JSON.stringify(value));
  if (Array.isArray(value)) {
    if (value.every((x) => x === null || typeof x !== "object")) return document.createTextNode(value.map(fmt).join(", "));
    return h("ol", { class: "tree" }, value.slice(0, 50).map((x) => h("li", {}, tree(x, depth + 1))));
  }
  return h("table", { class: "kv" }, Object.entries(value).map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, tree(v, depth + 1)))));
}

function errorBox(message) {
  return h("p", { class: "error", role: "alert" }, message);
}

// ------------------------------------------------------------------ the API, with the key

class Unauthorised extends Error {}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  const key = sessionStorage.getItem(KEY);
  if (key) headers.Authorization = `Bearer ${key}`;
  if (options.json !== undefined) {
    headers["Content-Type"] = "application/json";
    options = { ...options, body: JSON.stringify(options.json) };
  }
  const answer = await fetch(path, { ...options, headers });
  let body = null;
  try { body = await answer.json(); } catch (e) { body = null; }
  if (answer.status === 401) {
    askForKey(key ? "That key was refused. Enter a valid API key." : "This server needs an API key.");
    throw new Unauthorised("key needed");
  }
  if (!answer.ok) throw new Error((body && body.error && body.error.message) || `${answer.status} ${answer.statusText}`);
  return body;
}

function askForKey(message) {
  stopPolling();
  const input = h("input", { type: "password", id: "api-key", autocomplete: "off", placeholder: "sk-…", size: 40 });
  const form = h("form", { id: "key-form", class: "card", onsubmit: (e) => {
    e.preventDefault();
    sessionStorage.setItem(KEY, input.value.trim());
    route();
  } },
    h("h2", {}, "API key"),
    h("p", {}, message),
    h("p", { class: "muted" }, "The key is kept in this browser tab only (sessionStorage) and sent as a Bearer header."),
    h("label", {}, "Key ", input), " ", h("button", { type: "submit" }, "Use key"));
  view(form);
  input.focus();
}

// ------------------------------------------------------------------ charts (hand-written SVG)

function extent(values, pad = 0.05) {
  let lo = Math.min(...values), hi = Math.max(...values);
  if (!isFinite(lo)) return [0, 1];
  if (lo === hi) { lo -= Math.abs(lo) * 0.1 || 1; hi += Math.abs(hi) * 0.1 || 1; }
  const p = (hi - lo) * pad;
  return [lo >= 0 ? Math.max(0, lo - p) : lo - p, hi + p]; // a loss or a share never gets a negative axis from the padding
}

function ticks(lo, hi, n = 5) {
  const step = (hi - lo) / (n - 1);
  return Array.from({ length: n }, (_, i) => lo + i * step);
}

// series: [{name, points: [[x, y], ...]}]; each point is a <circle class="pt" data-series=name>.
function lineChart(series, { id, xLabel = "step", yLabel = "loss", width = 640, height = 260 } = {}) {
  const m = { l: 56, r: 16, t: 28, b: 40 };
  const all = series.flatMap((x) => x.points);
  const svg = s("svg", { id, class: "chart", viewBox: `0 0 ${width} ${height}`, width, height, role: "img", "aria-label": `${yLabel} by ${xLabel}` });
  if (!all.length) {
    svg.append(s("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "muted" }, "no points yet"));
    return svg;
  }
  const [x0, x1] = extent(all.map((p) => p[0]), 0.02), [y0, y1] = extent(all.map((p) => p[1]));
  const X = (x) => m.l + ((x - x0) / (x1 - x0)) * (width - m.l - m.r);
  const Y = (y) => height - m.b - ((y - y0) / (y1 - y0)) * (height - m.t - m.b);
  for (const t of ticks(y0, y1)) {
    svg.append(s("line", { x1: m.l, x2: width - m.r, y1: Y(t), y2: Y(t), class: "grid" }));
    svg.append(s("text", { x: m.l - 6, y: Y(t) + 4, "text-anchor": "end", class: "tick" }, t.toPrecision(3)));
  }
  const xs = all.map((p) => p[0]), xmin = Math.min(...xs), xmax = Math.max(...xs);
  const xstep = Math.max(1, Math.ceil((xmax - xmin) / 5)); // steps are whole numbers: ticks at a whole stride
  const xt = Array.from({ length: Math.floor((xmax - xmin) / xstep) + 1 }, (_, i) => xmin + i * xstep);
  for (const t of xt) svg.append(s("text", { x: X(t), y: height - m.b + 16, "text-anchor": "middle", class: "tick" }, fmt(t)));
  svg.append(s("text", { x: (width + m.l) / 2, y: height - 6, "text-anchor": "middle", class: "axis" }, xLabel));
  svg.append(s("text", { x: 14, y: height / 2, transform: `rotate(-90 14 ${height / 2})`, "text-anchor": "middle", class: "axis" }, yLabel));
  series.forEach((line, i) => {
    const colour = line.colour || COLOURS[i % COLOURS.length];
    const g = s("g", { class: "series", "data-series": line.name, "data-points": line.points.length });
    g.append(s("polyline", { points: line.points.map((p) => `${X(p[0])},${Y(p[1])}`).join(" "), fill: "none", stroke: colour, "stroke-width": 2 }));
    for (const p of line.points) g.append(s("circle", { class: "pt", "data-series": line.name, cx: X(p[0]), cy: Y(p[1]), r: 3, fill: colour }, s("title", {}, `${line.name} step ${p[0]}: ${fmt(p[1], 4)}`)));
    svg.append(g);
    svg.append(s("rect", { x: m.l + 10 + i * 130, y: 4, width: 10, height: 10, fill: colour }));
    svg.append(s("text", { x: m.l + 24 + i * 130, y: 13, class: "legend" }, line.name));
  });
  return svg;
}

// groups: metric names; series: model names; value(group, series) -> {mean, low, high} or undefined.
function barChart(groups, series, value, { id, width = 0, height = 260 } = {}) {
  const m = { l: 48, r: 16, t: 24, b: 70 };
  width = width || Math.max(640, 60 + groups.length * Math.max(60, series.length * 22));
  const vals = groups.flatMap((g) => series.map((x) => value(g, x)).filter(Boolean));
  const top = Math.max(1, ...vals.map((v) => v.high ?? v.mean));
  const svg = s("svg", { id, class: "chart", viewBox: `0 0 ${width} ${height}`, width, height, role: "img" });
  const gw = (width - m.l - m.r) / Math.max(1, groups.length), bw = (gw * 0.8) / Math.max(1, series.length);
  const Y = (y) => height - m.b - (y / top) * (height - m.t - m.b);
  const counts = vals.length && vals.every((v) => Number.isInteger(v.mean) && v.low === undefined); // a histogram: whole numbers
  for (const t of counts ? [...new Set(ticks(0, top, Math.min(5, top + 1)).map(Math.round))] : ticks(0, top)) {
    svg.append(s("line", { x1: m.l, x2: width - m.r, y1: Y(t), y2: Y(t), class: "grid" }));
    svg.append(s("text", { x: m.l - 6, y: Y(t) + 4, "text-anchor": "end", class: "tick" }, counts ? String(t) : t.toFixed(2)));
  }
  groups.forEach((g, gi) => {
    series.forEach((name, si) => {
      const v = value(g, name);
      if (!v) return;
      const x = m.l + gi * gw + gw * 0.1 + si * bw, colour = COLOURS[si % COLOURS.length];
      svg.append(s("rect", { class: "bar", x, y: Y(v.mean), width: bw - 2, height: Math.max(0, Y(0) - Y(v.mean)), fill: colour }, s("title", {}, `${name} ${g}: ${fmt(v.mean)} [${fmt(v.low)}, ${fmt(v.high)}]`)));
      if (v.low !== undefined) {
        const cx = x + (bw - 2) / 2;
        svg.append(s("line", { x1: cx, x2: cx, y1: Y(v.low), y2: Y(v.high), class: "err" }));
        svg.append(s("line", { x1: cx - 4, x2: cx + 4, y1: Y(v.low), y2: Y(v.low), class: "err" }));
        svg.append(s("line", { x1: cx - 4, x2: cx + 4, y1: Y(v.high), y2: Y(v.high), class: "err" }));
      }
    });
    const lx = m.l + gi * gw + gw / 2, ly = height - m.b + 14;
    svg.append(s("text", { x: lx, y: ly, "text-anchor": "end", transform: `rotate(-30 ${lx} ${ly})`, class: "tick" }, g.length > 24 ? g.slice(0, 23) + "…" : g));
  });
  series.forEach((name, i) => {
    svg.append(s("rect", { x: m.l + i * 150, y: 4, width: 10, height: 10, fill: COLOURS[i % COLOURS.length] }));
    svg.append(s("text", { x: m.l + 14 + i * 150, y: 13, class: "legend" }, name.length > 22 ? name.slice(0, 21) + "…" : name));
  });
  return svg;
}

function histogram(hist, { id, width = 640, height = 220 } = {}) {
  const splits = Object.keys(hist.counts || {});
  const n = (hist.edges || []).length - 1;
  const groups = Array.from({ length: Math.max(0, n) }, (_, i) => `${hist.edges[i]}`);
  return barChart(groups, splits, (g, sp) => {
    const c = hist.counts[sp][groups.indexOf(g)];
    return c ? { mean: c } : undefined;
  }, { id, height });
}

// ------------------------------------------------------------------ polling

function stopPolling() {
  if (timer) clearTimeout(timer);
  timer = null;
}

function poll(fn, ms) {
  stopPolling();
  timer = setTimeout(fn, ms);
}

// ------------------------------------------------------------------ pages: runs and jobs

async function runsPage() {
  const { data } = await api("/ui/api/runs");
  const state = runsState, selected = runsState.selected; // kept across the page's own refreshes
  const body = h("tbody");
  const cols = [
    ["status", "status"], ["id", "run / job"], ["base_model", "base model"], ["method", "method"], ["dataset", "dataset@version"],
    ["metric", "key metric"], ["best_val_loss", "best val loss"], ["cost", "cost"], ["seconds", "duration"], ["created", "created"],
  ];
  const key = (r, c) => c === "metric" ? (r.headline ? r.headline.tuned : null) : r[c];
  const compareButton = h("button", { id: "compare-selected", disabled: selected.size < 2 || selected.size > 4, onclick: () => { location.hash = `#/compare?runs=${[...selected].map(encodeURIComponent).join(",")}`; } }, "Compare selected");
  function draw() {
    const text = state.text.toLowerCase();
    const rows = data.filter((r) => (!state.status || r.status === state.status) &&
      (!text || [r.id, r.job_id, r.name, r.base_model, r.method, r.dataset, r.status].some((v) => v && String(v).toLowerCase().includes(text))));
    rows.sort((a, b) => {
      const x = key(a, state.sort), y = key(b, state.sort);
      const c = x === y ? 0 : x === null || x === undefined ? 1 : y === null || y === undefined ? -1 : x < y ? -1 : 1;
      return state.desc ? -c : c;
    });
    body.replaceChildren(...rows.map((r) => h("tr", { "data-id": r.id },
      h("td", {}, r.run_id ? h("input", { type: "checkbox", class: "pick", "aria-label": `select ${r.run_id}`, checked: selected.has(r.run_id), onchange: (e) => {
        e.target.checked ? selected.add(r.run_id) : selected.delete(r.run_id);
        compareButton.disabled = selected.size < 2 || selected.size > 4;
      } }) : null),
      h("td", {}, badge(r.status)),
      h("td", {}, h("a", { href: `#/run/${encodeURIComponent(r.id)}`, class: "run-link" }, r.name && r.job_id ? `${r.id} (${r.name})` : r.id), r.job_id && r.run_id ? h("div", { class: "muted small" }, r.job_id) : null),
      h("td", {}, r.base_model), h("td", {}, r.method),
      h("td", {}, r.dataset, r.dataset_version ? h("span", { class: "muted" }, `@${r.dataset_version.slice(0, 8)}`) : null),
      h("td", {}, r.headline ? `${r.headline.metric} ${fmt(r.headline.tuned)} (base ${fmt(r.headline.base)})` : "–"),
      h("td", {}, fmt(r.best_val_loss, 4)), h("td", {}, r.cost === null ? "–" : r.cost.toFixed(4)), h("td", {}, duration(r.seconds)),
      h("td", { class: "small" }, (r.created || "").replace("T", " ").replace("+00:00", "Z")))));
    document.getElementById("row-count").textContent = `${rows.length} of ${data.length}`;
  }
  const statuses = [...new Set(data.map((r) => r.status))].sort();
  const head = h("tr", {}, h("th", {}, ""), cols.map(([c, label]) => h("th", { class: "sortable", "data-sort": c, onclick: () => {
    state.desc = state.sort === c ? !state.desc : false;
    state.sort = c;
    draw();
  } }, label)));
  view(
    h("h1", {}, "Runs & jobs"),
    h("div", { class: "toolbar" },
      h("input", { id: "filter", type: "search", value: state.text, placeholder: "filter by id, model, dataset…", oninput: (e) => { state.text = e.target.value; draw(); } }),
      h("select", { id: "status-filter", onchange: (e) => { state.status = e.target.value; draw(); } }, h("option", { value: "" }, "any status"), statuses.map((st) => h("option", { value: st, selected: st === state.status }, st))),
      h("span", { id: "row-count", class: "muted" }), compareButton, h("a", { href: "#/new", class: "button" }, "New job")),
    h("table", { id: "runs", class: "grid" }, h("thead", {}, head), body),
  );
  draw();
  if (data.some((r) => !FINAL.has(r.status))) poll(() => route(), 3000);
}

async function runPage(ref) {
  const d = await api(`/ui/api/runs/${encodeURIComponent(ref)}`);
  const job = d.job;
  const act = (what) => async () => {
    try {
      await api(`/v1/fine_tuning/jobs/${encodeURIComponent(job.id)}/${what}`, { method: "POST" });
      route();
    } catch (e) {
      if (!(e instanceof Unauthorised)) document.getElementById("action-error").replaceChildren(errorBox(e.message));
    }
  };
  const status = d.status;
  const buttons = job ? h("div", { class: "toolbar" },
    h("button", { id: "cancel", onclick: act("cancel"), disabled: FINAL.has(status) && status !== "paused" }, "Cancel"),
    h("button", { id: "pause", onclick: act("pause"), disabled: status !== "running" }, "Pause"),
    h("button", { id: "resume", onclick: act("resume"), disabled: status !== "paused" }, "Resume"),
    h("span", { id: "action-error" })) : null;
  const est = d.estimate, actual = d.actual;
  const estimateTable = est || actual ? h("table", { class: "grid", id: "estimate-vs-actual" },
    h("thead", {}, h("tr", {}, h("th", {}, ""), h("th", {}, "estimate (before)"), h("th", {}, "actual"))),
    h("tbody", {},
      h("tr", {}, h("th", {}, "optimizer steps"), h("td", {}, est ? fmt(est.total_steps) : "–"), h("td", {}, actual ? fmt(actual.steps) : "–")),
      h("tr", {}, h("th", {}, "training time"), h("td", {}, est ? duration(est.total_seconds) : "–"), h("td", {}, actual ? duration(actual.seconds) : "–")),
      h("tr", {}, h("th", {}, "peak memory"), h("td", {}, est ? bytes(est.peak_memory_bytes) : "–"), h("td", {}, actual ? bytes(actual.peak_memory_bytes) : "–")),
      h("tr", {}, h("th", {}, "tokens"), h("td", {}, est ? fmt(est.tokens_per_epoch * est.epochs) : "–"), h("td", {}, actual ? fmt(actual.tokens) : "–")),
      h("tr", {}, h("th", {}, "cost"), h("td", {}, est && est.cost !== null ? est.cost.toFixed(4) : "–"), h("td", {}, actual && actual.cost !== null ? actual.cost.toFixed(4) : "–")))) : null;
  const checkpoints = (d.checkpoints || []);
  view(
    h("p", {}, h("a", { href: "#/runs" }, "← runs")),
    h("h1", {}, d.run_id || (job && job.id) || ref, " ", h("span", { id: "status" }, badge(status))),
    d.why ? h("p", { class: "muted" }, d.why) : null,
    job && job.error ? errorBox(`${job.error.code}: ${job.error.message}`) : null,
    buttons,
    h("div", { class: "cols" },
      h("section", { class: "card" }, h("h2", {}, "Loss"),
        lineChart([{ name: "train", points: d.curves.train }, { name: "validation", points: d.curves.validation }], { id: "loss-chart" })),
      h("section", { class: "card" }, h("h2", {}, "Summary"), kv([
        job ? ["job", job.id] : null, job ? ["model", job.fine_tuned_model || "–"] : null,
        ["base model", d.info ? d.info.base_model : job ? job.model : "–"], ["method", d.info ? d.info.method : "lora"],
        ["dataset", d.info ? `${d.info.dataset}@${d.info.dataset_version}` : job ? job.training_file : "–"],
        ["best step", d.info ? d.info.best_step : null], ["best val loss", d.info ? d.info.best_val_loss : null],
        ["stop reason", d.info ? d.info.stop_reason : null], ["parent run", d.info ? d.info.parent_run : null],
        d.info && d.info.study ? ["study", `${d.info.study.name} trial ${d.info.study.trial}`] : null,
      ]), d.evaluated ? h("p", {}, h("a", { href: `#/eval/${encodeURIComponent(d.run_id)}`, id: "eval-link" }, "Evaluation →")) : null)),
    h("section", { class: "card" }, h("h2", {}, "Estimate vs actual"), estimateTable || h("p", { class: "muted" }, "no estimate recorded")),
    h("section", { class: "card" }, h("h2", {}, "Checkpoints"), checkpoints.length ? h("table", { class: "grid", id: "checkpoints" },
      h("thead", {}, h("tr", {}, h("th", {}, "step"), h("th", {}, "model id"), h("th", {}, "valid loss"), h("th", {}, ""))),
      h("tbody", {}, checkpoints.map((c) => h("tr", {}, h("td", {}, fmt(c.step_number)), h("td", {}, c.fine_tuned_model_checkpoint || "(run folder)"),
        h("td", {}, c.metrics ? fmt(c.metrics.valid_loss, 4) : "–"),
        h("td", {}, c.fine_tuned_model_checkpoint ? h("a", { href: `#/playground?model=${encodeURIComponent(c.fine_tuned_model_checkpoint)}` }, "chat") : null))))) : h("p", { class: "muted" }, "none yet")),
    h("section", { class: "card" }, h("h2", {}, "Events"), (d.events || []).length ? null : h("p", { class: "muted" }, "none recorded"), h("ol", { id: "events", class: "events" },
      (d.events || []).map((e) => h("li", { class: `lv-${e.level}` }, e.created_at ? h("span", { class: "muted small" }, new Date(e.created_at * 1000).toLocaleTimeString() + " ") : null, e.message)))),
    d.config ? h("section", { class: "card" }, h("h2", {}, "Resolved config"), h("pre", { id: "config" }, d.config)) : null,
  );
  if (!FINAL.has(status) || (job && job.status === "running")) poll(() => route(), 1500);
}

// ------------------------------------------------------------------ page: start a job

async function newJobPage() {
  const [session, files, sets] = await Promise.all([api("/ui/api/session"), api("/v1/files?purpose=fine-tune"), api("/ui/api/datasets")]);
  const fileSelect = h("select", { id: "training-file" }, files.data.map((f) => h("option", { value: f.id }, `${f.filename} (${f.id}, ${f.bytes} bytes)`)));
  const datasetSelect = h("select", { id: "dataset" }, sets.data.map((d) => h("option", { value: d.name }, `${d.name}@${(d.version || "").slice(0, 8)} (${d.counts.train || 0} train)`)));
  const upload = h("input", { type: "file", id: "upload", accept: ".jsonl,.json,.csv,.parquet" });
  const source = { kind: files.data.length || !sets.data.length ? "file" : "dataset" };
  const radio = (kind, label) => h("label", {}, h("input", { type: "radio", name: "source", value: kind, checked: source.kind === kind, onchange: () => { source.kind = kind; reset(); } }), " ", label);
  const num = (id, value, attrs = {}) => h("input", { id, value, size: 8, ...attrs });
  const fields = {
    model: h("select", { id: "base-model" }, session.bases.map((b) => h("option", { value: b }, b))),
    epochs: num("epochs", "auto"), batch: num("batch-size", "auto"), lr: num("lr-multiplier", "auto"),
    seq: num("max-seq-len", "", { placeholder: "default" }), suffix: num("suffix", "", { placeholder: "optional" }),
    price: num("price", "", { placeholder: "optional" }), evaluate: h("input", { type: "checkbox", id: "evaluate", checked: true }),
  };
  const out = h("div", { id: "estimate" });
  const start = h("button", { id: "start", disabled: true, onclick: () => startJob() }, "Start job");
  function reset() { start.disabled = true; out.replaceChildren(); }
  for (const el of Object.values(fields)) el.addEventListener("change", reset);
  [fileSelect, datasetSelect].forEach((el) => el.addEventListener("change", reset));
  const auto = (v, parse) => (v.trim() === "" || v.trim() === "auto" ? "auto" : parse(v));
  function settings() {
    return {
      model: fields.model.value,
      n_epochs: auto(fields.epochs.value, parseInt), batch_size: auto(fields.batch.value, parseInt), learning_rate_multiplier: auto(fields.lr.value, parseFloat),
      max_seq_len: fields.seq.value.trim() ? parseInt(fields.seq.value) : null, price_per_hour: fields.price.value.trim() ? parseFloat(fields.price.value) : null,
    };
  }
  async function doUpload() {
    if (!upload.files.length) return;
    const form = new FormData();
    form.append("purpose", "fine-tune");
    form.append("file", upload.files[0]);
    try {
      const f = await api("/v1/files", { method: "POST", body: form });
      fileSelect.prepend(h("option", { value: f.id, selected: true }, `${f.filename} (${f.id}, ${f.bytes} bytes)`));
      fileSelect.value = f.id;
      source.kind = "file";
      document.querySelector("input[name=source][value=file]").checked = true;
      reset();
    } catch (e) { if (!(e instanceof Unauthorised)) out.replaceChildren(errorBox(e.message)); }
  }
  async function estimate() {
    out.replaceChildren(h("p", { class: "muted", id: "estimating" }, "Measuring a few real steps on this machine…"));
    const body = { ...settings(), ...(source.kind === "file" ? { training_file: fileSelect.value } : { dataset: datasetSelect.value }) };
    try {
      const e = await api("/ui/api/estimate", { method: "POST", json: body });
      out.replaceChildren(h("h3", {}, "Estimate"), kv([
        ["time", duration(e.total_seconds)], ["peak memory", `${bytes(e.peak_memory_bytes)} (${e.memory_measure})`],
        ["cost", e.cost === null ? "give a price per hour to see it" : e.cost.toFixed(4)],
        ["optimizer steps", `${e.total_steps} (${e.steps_per_epoch} per epoch × ${e.epochs})`], ["examples", e.examples],
        ["tokens per epoch", e.tokens_per_epoch], ["device", e.device],
      ]), h("p", { class: "muted" }, "Model loading and checkpoints are not included. Confirm to start the job."));
      out.firstChild.id = "estimate-title";
      start.disabled = false;
    } catch (e) { if (!(e instanceof Unauthorised)) out.replaceChildren(errorBox(e.message)); }
  }
  async function startJob() {
    start.disabled = true;
    const st = settings();
    try {
      let files = { training_file: fileSelect.value, validation_file: null };
      if (source.kind === "dataset") files = await api(`/ui/api/datasets/${encodeURIComponent(datasetSelect.value)}/files`, { method: "POST" });
      const body = {
        model: st.model, training_file: files.training_file,
        method: { type: "supervised", supervised: { hyperparameters: { n_epochs: st.n_epochs, batch_size: st.batch_size, learning_rate_multiplier: st.learning_rate_multiplier } } },
        evaluation: { enabled: fields.evaluate.checked },
      };
      if (files.validation_file) body.validation_file = files.validation_file;
      if (fields.suffix.value.trim()) body.suffix = fields.suffix.value.trim();
      if (st.max_seq_len) body.max_seq_len = st.max_seq_len;
      if (st.price_per_hour) body.budget = { price_per_hour: st.price_per_hour };
      const job = await api("/v1/fine_tuning/jobs", { method: "POST", json: body });
      location.hash = `#/run/${encodeURIComponent(job.id)}`;
    } catch (e) {
      start.disabled = false;
      if (!(e instanceof Unauthorised)) out.append(errorBox(e.message));
    }
  }
  view(
    h("h1", {}, "Start a fine-tuning job"),
    h("section", { class: "card" }, h("h2", {}, "Data"),
      h("p", {}, radio("file", "an uploaded file"), " ", fileSelect, " or upload ", upload, " ", h("button", { id: "upload-button", onclick: doUpload }, "Upload")),
      h("p", {}, radio("dataset", "a prepared dataset"), " ", datasetSelect)),
    h("section", { class: "card" }, h("h2", {}, "Model and method"), kv([
      ["base model", fields.model], ["method", h("select", { id: "method" }, h("option", { value: "supervised" }, "supervised (LoRA)"))],
      ["epochs", fields.epochs], ["batch size", fields.batch], ["learning-rate multiplier", fields.lr], ["max sequence length", fields.seq],
      ["suffix", fields.suffix], ["price per hour", fields.price], ["evaluate after training", fields.evaluate],
    ])),
    h("div", { class: "toolbar" }, h("button", { id: "estimate-button", onclick: estimate }, "Estimate"), start),
    out,
  );
}

// ------------------------------------------------------------------ pages: datasets

async function datasetsPage() {
  const { data } = await api("/ui/api/datasets");
  view(h("h1", {}, "Datasets"), h("table", { class: "grid", id: "datasets" },
    h("thead", {}, h("tr", {}, ["name", "version", "format", "train / validation / test", "removed (dedup)", "PII", "warnings", "runs"].map((c) => h("th", {}, c)))),
    h("tbody", {}, data.map((d) => h("tr", {},
      h("td", {}, h("a", { href: `#/dataset/${encodeURIComponent(d.name)}` }, d.name), d.parent_dataset ? h("div", { class: "muted small" }, `from ${d.parent_dataset}`) : null),
      h("td", {}, (d.version || "").slice(0, 12)), h("td", {}, d.format),
      h("td", {}, `${d.counts.train || 0} / ${d.counts.validation || 0} / ${d.counts.test || 0}`),
      h("td", {}, `${d.dedup.exact} exact, ${d.dedup.near} near`),
      h("td", {}, d.pii.mode === "off" ? "not scanned" : `${d.pii.examples_affected ?? 0} example(s)`),
      h("td", {}, d.warnings.length), h("td", {}, d.runs.length))))));
}

function messageList(messages) {
  return h("div", { class: "messages" }, (messages || []).map((m) => h("div", { class: `msg role-${m.role}` }, h("b", {}, m.role), " ", typeof m.content === "string" ? m.content : JSON.stringify(m.content))));
}

async function datasetPage(name, params) {
  const tok = params.get("tokenizer");
  const d = await api(`/ui/api/datasets/${encodeURIComponent(name)}${tok ? `?tokenizer=${encodeURIComponent(tok)}` : ""}`);
  const splits = Object.entries(d.counts);
  view(
    h("p", {}, h("a", { href: "#/datasets" }, "← datasets")),
    h("h1", {}, d.name, " ", h("span", { class: "muted" }, `@${d.version}`)),
    h("div", { class: "cols" },
      h("section", { class: "card" }, h("h2", {}, "Splits"), kv(splits.map(([k, v]) => [k, v]).concat([["source", d.source], ["format", d.format], ["lineage", d.parent_dataset ? `${d.parent_dataset} (${d.source_kind})` : d.source_kind]]))),
      h("section", { class: "card" }, h("h2", {}, "Validation report"), kv([
        ["duplicates removed", `${d.dedup.exact} exact, ${d.dedup.near} near`],
        ["personal data", d.pii.mode === "off" ? "not scanned (pii off)" : `${d.pii.examples_affected ?? 0} example(s), mode ${d.pii.mode}`],
        ...Object.entries(d.pii.counts || {}).map(([k, v]) => [`  ${k}`, v]),
        ["leaked into train, removed", `${d.removed.validation_leaked_into_train || 0} validation, ${d.removed.test_leaked_into_train || 0} test`],
        ["lines skipped", d.skipped],
      ]), h("table", { class: "grid" }, h("thead", {}, h("tr", {}, h("th", {}, "step"), h("th", {}, "in"), h("th", {}, "out"))),
        h("tbody", {}, d.steps.map((st) => h("tr", {}, h("td", {}, st.step), h("td", {}, fmt(st.examples_in)), h("td", {}, fmt(st.examples_out)))))),
        d.warnings.length ? h("ul", { class: "warnings" }, d.warnings.map((w) => h("li", {}, w))) : null)),
    h("section", { class: "card" }, h("h2", {}, "Token lengths"),
      d.histogram ? [h("p", { class: "muted" }, `tokens per example with the ${d.histogram.tokenizer} tokenizer (chat template included); mean ${fmt(d.histogram.mean, 1)}, max ${fmt(d.histogram.max)}. `,
        h("select", { id: "tokenizer", onchange: (e) => { location.hash = `#/dataset/${encodeURIComponent(name)}?tokenizer=${encodeURIComponent(e.target.value)}`; } },
          d.tokenizers.map((t) => h("option", { value: t, selected: t === tok }, t)))), histogram(d.histogram, { id: "token-histogram" })]
        : h("p", { class: "muted" }, "no tokenizer available")),
    h("section", { class: "card" }, h("h2", {}, "Sample of examples"), h("div", { id: "sample" }, d.sample.map((ex) => h("div", { class: "example" },
      h("div", { class: "muted small" }, `${ex.split} · ${ex.id || ""}`), ex.messages ? messageList(ex.messages) : h("pre", {}, JSON.stringify(ex, null, 1)))))),
  );
}

// ------------------------------------------------------------------ pages: evaluation and compare

function interval(iv) {
  return iv ? `${fmt(iv.mean)} [${fmt(iv.low)}, ${fmt(iv.high)}]` : null;
}

async function evalPage(run) {
  const e = await api(`/ui/api/runs/${encodeURIComponent(run)}/evaluation`);
  const models = Object.keys(e.models);
  const bounded = e.metrics.filter((m) => models.some((x) => e.models[x].intervals[m] && e.models[x].intervals[m].high <= 1.0001));
  view(
    h("p", {}, h("a", { href: `#/run/${encodeURIComponent(run)}` }, "← run")),
    h("h1", {}, `Evaluation of ${run}`, " ", h("span", { class: "muted" }, `${e.split} split`)),
    h("ul", { class: "verdicts" }, e.verdicts.map((v) => h("li", {}, v))),
    h("section", { class: "card" }, h("h2", {}, "Per metric (mean, 95% bootstrap interval)"),
      bounded.length ? barChart(bounded, models, (m, x) => e.models[x].intervals[m], { id: "metric-bars" }) : null,
      h("table", { class: "grid", id: "metrics" }, h("thead", {}, h("tr", {}, h("th", {}, "metric"), models.map((x) => h("th", {}, x)))),
        h("tbody", {}, e.metrics.map((m) => h("tr", { class: m === e.headline ? "headline" : null }, h("th", {}, m),
          models.map((x) => h("td", {}, interval(e.models[x].intervals[m]) || fmt(e.models[x].metrics[m])))))))),
    Object.entries(e.versus).map(([other, byMetric]) => h("section", { class: "card" }, h("h2", {}, `tuned vs ${other}`),
      h("table", { class: "grid versus" }, h("thead", {}, h("tr", {}, ["metric", other, "tuned", "delta", "95% CI", "test", "p", "significant", "improved", "regressed"].map((c) => h("th", {}, c)))),
        h("tbody", {}, Object.entries(byMetric).map(([m, c]) => h("tr", { class: c.significant ? (c.delta > 0 === (c.direction !== "lower") ? "better" : "worse") : null },
          h("th", {}, m), h("td", {}, fmt(c.mean_a)), h("td", {}, fmt(c.mean_b)), h("td", {}, fmt(c.delta)), h("td", {}, `${fmt(c.ci_low)} to ${fmt(c.ci_high)}`),
          h("td", {}, c.test), h("td", {}, fmt(c.p_value, 3)), h("td", {}, c.significant ? "yes" : "no"), h("td", {}, fmt(c.improved)), h("td", {}, fmt(c.regressed)))))),
      sideBySide(other, e.examples[other]))),
    e.forgetting ? h("section", { class: "card", id: "forgetting" }, h("h2", {}, "Forgetting probe (general skills)"), kv([
      ["base score", e.forgetting.base ? e.forgetting.base.score : null], ["tuned score", e.forgetting.tuned ? e.forgetting.tuned.score : null],
      ["drop", e.forgetting.drop], ["threshold", e.forgetting.threshold], ["warning", e.forgetting.warning ? "yes: the tuned model lost general skills" : "no"],
    ]), e.forgetting.drop_per_category ? tree({ "drop per category": e.forgetting.drop_per_category }) : null) : null,
    e.judge ? h("section", { class: "card", id: "judge" }, h("h2", {}, "Judge verdicts"), tree(e.judge)) : null,
    e.human_review ? h("section", { class: "card", id: "human-review" }, h("h2", {}, "Human review"), tree(e.human_review)) : null,
  );
}

function sideBySide(other, found) {
  if (!found || (!found.better.length && !found.worse.length)) return h("p", { class: "muted" }, "No example changed between the two.");
  const block = (title, rows, cls) => rows.length ? [h("h3", {}, `${title} (${found.metric})`), rows.map((r) => h("div", { class: `pair ${cls}` },
    h("div", { class: "prompt" }, h("b", {}, r.id), " ", r.prompt), h("div", { class: "ref" }, h("b", {}, "reference "), r.reference),
    h("div", { class: "sides" }, h("div", {}, h("b", {}, `${other} (${fmt(r.other_score)})`), h("pre", {}, r.other ?? "")), h("div", {}, h("b", {}, `tuned (${fmt(r.tuned_score)})`), h("pre", {}, r.tuned ?? "")))))] : [];
  return h("div", { class: "examples" }, block("Got better", found.better, "better"), block("Got worse", found.worse, "worse"));
}

async function comparePage(params) {
  const chosen = (params.get("runs") || "").split(",").filter(Boolean);
  if (chosen.length < 2) {
    const { data } = await api("/ui/api/runs");
    const picks = new Set();
    const go = h("button", { id: "compare-go", disabled: true, onclick: () => { location.hash = `#/compare?runs=${[...picks].map(encodeURIComponent).join(",")}`; } }, "Compare");
    view(h("h1", {}, "Compare runs"), h("p", {}, "Pick two to four runs evaluated on the same split."),
      h("ul", { class: "plain" }, data.filter((r) => r.run_id).map((r) => h("li", {}, h("label", {}, h("input", { type: "checkbox", value: r.run_id, onchange: (e) => {
        e.target.checked ? picks.add(r.run_id) : picks.delete(r.run_id);
        go.disabled = picks.size < 2 || picks.size > 4;
      } }), " ", r.run_id, " ", h("span", { class: "muted" }, `${r.dataset}@${(r.dataset_version || "").slice(0, 8)}${r.headline ? "" : " (no evaluation of its own)"}`))))), go);
    return;
  }
  const c = await api(`/ui/api/compare?${chosen.map((r) => `run=${encodeURIComponent(r)}`).join("&")}`);
  const scored = c.runs.filter((r) => r.metrics);
  const bounded = c.metrics.filter((m) => scored.some((r) => r.intervals[m] && r.intervals[m].high <= 1.0001));
  view(
    h("h1", {}, "Compare runs"),
    c.same_split ? h("p", { class: "ok" }, `Same examples: ${c.splits.join(", ")}`) : errorBox(`These runs were scored on different examples (${c.splits.join("; ")}): the numbers are not comparable.`),
    c.runs.filter((r) => r.error).map((r) => errorBox(`${r.run_id}: ${r.error}`)),
    c.runs.filter((r) => r.scored_in).map((r) => h("p", { class: "muted" }, `${r.run_id}: scored in the evaluation of ${r.scored_in}`)),
    bounded.length ? barChart(bounded, scored.map((r) => r.run_id), (m, id) => scored.find((r) => r.run_id === id).intervals[m], { id: "compare-bars" }) : null,
    h("table", { class: "grid", id: "compare" }, h("thead", {}, h("tr", {}, h("th", {}, "metric"), scored.map((r) => h("th", {}, h("a", { href: `#/run/${encodeURIComponent(r.run_id)}` }, r.run_id))))),
      h("tbody", {}, ["best_val_loss"].concat(c.metrics).map((m) => h("tr", {}, h("th", {}, m),
        scored.map((r) => h("td", {}, m === "best_val_loss" ? fmt(r.best_val_loss, 4) : interval(r.intervals[m]) || fmt(r.metrics[m]))))))),
    h("section", { class: "card" }, h("h2", {}, "Training loss"), lineChart(scored.map((r) => ({ name: r.run_id.slice(-14), points: r.curve })), { id: "compare-loss" })),
  );
}

// ------------------------------------------------------------------ page: playground

async function playgroundPage(params) {
  const { data } = await api("/ui/api/models");
  const wanted = params.get("model");
  const panes = [0, 1].map((i) => {
    const select = h("select", { id: `model-${i}` }, i === 1 ? h("option", { value: "" }, "(none)") : null,
      data.map((m) => h("option", { value: m.id, selected: (i === 0 && m.id === wanted) || null }, `${m.id} (${m.kind})`)));
    if (i === 1 && data.length > 1) select.value = data.find((m) => m.kind !== "base")?.id || data[1].id;
    const log = h("div", { class: "chat-log", id: `chat-${i}` });
    return { select, log, history: [] };
  });
  const input = h("textarea", { id: "prompt", rows: 3, placeholder: "Say something…" });
  const maxTokens = h("input", { id: "max-tokens", value: "32", size: 4 });
  const temperature = h("input", { id: "temperature", value: "0", size: 4 });
  async function send(e) {
    e.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    input.value = "";
    await Promise.all(panes.filter((p) => p.select.value).map(async (p) => {
      p.history.push({ role: "user", content: text });
      p.log.append(h("div", { class: "msg role-user" }, h("b", {}, "user"), " ", text));
      const pending = h("div", { class: "msg role-assistant pending" }, h("b", {}, "assistant"), " …");
      p.log.append(pending);
      try {
        const answer = await api("/v1/chat/completions", { method: "POST", json: {
          model: p.select.value, messages: p.history, max_tokens: parseInt(maxTokens.value) || 32, temperature: parseFloat(temperature.value) || 0 } });
        const content = answer.choices[0].message.content || "";
        p.history.push({ role: "assistant", content });
        pending.replaceChildren(h("b", {}, "assistant"), " ", h("span", { class: "answer" }, content), h("span", { class: "muted small" }, ` (${answer.usage.completion_tokens} tokens)`));
        pending.classList.remove("pending");
      } catch (err) {
        pending.replaceChildren(errorBox(err.message));
      }
    }));
  }
  const clear = () => panes.forEach((p) => { p.history = []; p.log.replaceChildren(); });
  view(
    h("h1", {}, "Playground"),
    h("p", { class: "muted" }, "Chat with any base model, fine-tuned model, checkpoint or run through this server's /v1/chat/completions; the second pane answers the same messages."),
    h("div", { class: "cols" }, panes.map((p, i) => h("section", { class: "card" }, h("h2", {}, `Model ${i + 1} `, p.select), p.log))),
    h("form", { id: "chat-form", onsubmit: send }, input, h("div", { class: "toolbar" }, h("label", {}, "max tokens ", maxTokens), h("label", {}, "temperature ", temperature),
      h("button", { type: "submit", id: "send" }, "Send"), h("button", { type: "button", onclick: clear }, "Clear"))),
  );
}

// ------------------------------------------------------------------ page: alerts

async function alertsPage() {
  const { data } = await api("/ui/api/alerts");
  view(h("h1", {}, "Alerts"), h("p", { class: "muted" }, "From the monitor (tunesmith monitor), newest first."),
    data.length ? h("table", { class: "grid", id: "alerts" },
      h("thead", {}, h("tr", {}, ["time", "model", "check", "value", "baseline", "threshold", "message", "evidence"].map((c) => h("th", {}, c)))),
      h("tbody", {}, data.map((a) => h("tr", { class: "alert-row" },
        h("td", { class: "small" }, typeof a.time === "number" ? new Date(a.time * 1000).toISOString().replace(".000Z", "Z") : fmt(a.time)),
        h("td", {}, a.model, a.run_id && a.run_id !== a.model ? h("div", { class: "muted small" }, a.run_id) : null), h("td", {}, a.check),
        h("td", {}, fmt(a.value)), h("td", {}, fmt(a.baseline)), h("td", {}, fmt(a.threshold)), h("td", {}, a.message),
        h("td", {}, h("details", {}, h("summary", {}, `${(a.examples || []).length} example(s), ${(a.request_ids || []).length} request(s)`),
          (a.examples || []).map((x) => h("div", { class: "pair" }, h("div", { class: "muted small" }, x.id, " ", x.why), h("div", { class: "prompt" }, tree(x.prompt)), h("pre", {}, x.answer ?? ""))))))))) : h("p", { id: "no-alerts" }, "No alerts."));
}

// ------------------------------------------------------------------ router

async function route() {
  stopPolling();
  const [path, query] = (location.hash.replace(/^#/, "") || "/runs").split("?");
  const params = new URLSearchParams(query || "");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.nav === (parts[0] === "run" ? "runs" : parts[0] === "dataset" ? "datasets" : parts[0] === "eval" ? "compare" : parts[0])));
  document.getElementById("forget-key").hidden = !sessionStorage.getItem(KEY);
  try {
    switch (parts[0]) {
      case "run": return await runPage(parts[1]);
      case "new": return await newJobPage();
      case "datasets": return await datasetsPage();
      case "dataset": return await datasetPage(parts[1], params);
      case "eval": return await evalPage(parts[1]);
      case "compare": return await comparePage(params);
      case "playground": return await playgroundPage(params);
      case "alerts": return await alertsPage();
      default: return await runsPage();
    }
  } catch (e) {
    if (!(e instanceof Unauthorised)) view(h("h1", {}, "Something went wrong"), errorBox(e.message));
  }
}

document.getElementById("forget-key").addEventListener("click", () => { sessionStorage.removeItem(KEY); route(); });
window.addEventListener("hashchange", route);
route();
