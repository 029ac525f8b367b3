// The studio page: plain JavaScript over the HTTP API (README, "Studio"). No build step, no CDN.
"use strict";

const TOKEN = new URLSearchParams(location.search).get("token");
const $ = (id) => document.getElementById(id);
const state = { content: null, styles: [], run: null, events: null, entries: [], total: 0, lastRequest: null };

// -- the API ---------------------------------------------------------------------------------------

function url(path, params) {
  const q = new URLSearchParams(params || {});
  if (TOKEN) q.set("token", TOKEN);
  const s = q.toString();
  return s ? `${path}?${s}` : path;
}

async function api(path, options) {
  const response = await fetch(url(path), options);
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) throw new Error((body && body.error) || `${response.status} ${response.statusText}`);
  return { status: response.status, body };
}

function notice(text) { $("notice").textContent = text || ""; }
function showError(text) { $("error").textContent = text || ""; }

// -- images ----------------------------------------------------------------------------------------

async function upload(file) {
  const form = new FormData();
  form.append("image", file, "upload");
  const { body } = await api("/api/images", { method: "POST", body: form });
  return body.name;
}

function thumb(name, title) {
  const img = document.createElement("img");
  img.src = url(`/api/images/${name}`);
  img.alt = title || name;
  img.title = title || name;
  img.dataset.name = name;
  return img;
}

function drawInputs() {
  const c = $("content-thumbs"), s = $("style-thumbs");
  c.replaceChildren(...(state.content ? [thumb(state.content, "content (click to remove)")] : []));
  s.replaceChildren(...state.styles.map((n) => thumb(n, "style (click to remove)")));
  c.querySelectorAll("img").forEach((img) => img.addEventListener("click", () => { state.content = null; drawInputs(); }));
  s.querySelectorAll("img").forEach((img, k) => img.addEventListener("click", () => { state.styles.splice(k, 1); drawInputs(); }));
}

async function addFiles(role, files) {
  showError("");
  try {
    for (const f of files) {
      const name = await upload(f);
      if (role === "content") state.content = name; else state.styles.push(name);
    }
  } catch (e) { showError(e.message); }
  drawInputs();
  loadLibrary();
}

function setUpDrop(zone, input) {
  const role = zone.dataset.role;
  input.addEventListener("change", () => { addFiles(role, Array.from(input.files)); input.value = ""; });
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault(); zone.classList.remove("over");
    addFiles(role, Array.from(e.dataTransfer.files).slice(0, role === "content" ? 1 : 16));
  });
}

async function loadLibrary() {
  const { body } = await api("/api/images");
  state.library = body;
  $("library-thumbs").replaceChildren(...body.map((i) => {
    const img = thumb(i.name, `${i.width}×${i.height}${i.example ? ` (the example ${i.example})` : ""}`);
    img.addEventListener("click", (e) => {
      if (e.shiftKey) state.styles.push(i.name); else state.content = i.name;
      drawInputs();
    });
    return img;
  }));
}

// -- options ---------------------------------------------------------------------------------------

function strengthChanged() {
  const v = Math.pow(10, Number($("strength").value));
  $("strength-value").textContent = `β = ${v.toPrecision(2)}`;
}

function readOptions() {
  const options = {};
  for (const el of $("options").elements) {
    if (!el.name) continue;
    if (el.type === "checkbox") { if (el.checked) options[el.name] = true; continue; }
    const text = el.value.trim();
    if (text === "") continue;
    if (el.dataset.list) {
      const parts = text.split(",").map((p) => p.trim()).filter((p) => p !== "");
      options[el.name] = el.dataset.list === "number" ? parts.map(Number) : parts;
    } else if (el.type === "number" || el.dataset.kind === "int") options[el.name] = Number.isInteger(Number(text)) ? Number(text) : text;
    else if (el.dataset.kind === "number") options[el.name] = isNaN(Number(text)) ? text : Number(text);
    else options[el.name] = text;
  }
  if ($("strength").dataset.touched) options.style_weight = Number(Math.pow(10, Number($("strength").value)).toPrecision(3));
  return options;
}

function writeOptions(options) {
  for (const el of $("options").elements) {
    if (!el.name || !(el.name in options)) continue;
    const v = options[el.name];
    if (el.type === "checkbox") el.checked = !!v;
    else el.value = Array.isArray(v) ? v.join(",") : v;
  }
  if ("style_weight" in options) {
    $("strength").value = Math.log10(options.style_weight);
    $("strength").dataset.touched = "1";
    strengthChanged();
  }
}

// -- runs ------------------------------------------------------------------------------------------

async function start(request) {
  showError("");
  try {
    const { body } = await api("/api/runs", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(request),
    });
    state.lastRequest = request;
    await select(body.id);
    loadRuns();
  } catch (e) { showError(e.message); }
}

function startFromForm(e) {
  e.preventDefault();
  if (!state.content || !state.styles.length) { showError("pick a content image and at least one style image"); return; }
  start({ content: state.content, styles: state.styles.slice(), options: readOptions() });
}

async function select(id) {
  if (state.events) state.events.close();
  state.run = id; state.entries = []; state.total = 0;
  $("study").hidden = true;
  const { body } = await api(`/api/runs/${id}`);
  state.lastRequest = { content: body.content, styles: body.styles, options: body.options || {} };
  $("run-title").textContent = `Run ${id}`;
  document.querySelectorAll("#runs li").forEach((li) => li.classList.toggle("selected", li.dataset.id === id));
  showRun(body);
  follow(id);
}

function follow(id) {
  const events = new EventSource(url(`/api/runs/${id}/events`));
  let status = null, pictured = false;
  state.events = events;
  events.addEventListener("state", (e) => {
    if (state.run !== id) return;
    const m = JSON.parse(e.data);
    state.entries = state.entries.slice(0, m.from).concat(m.entries);
    showRun(m);
    if (m.status !== status || (m.progress && !pictured)) loadRuns();  // the history shows the new status and thumbnail
    status = m.status; pictured = pictured || !!m.progress;
    if (!["queued", "running"].includes(m.status)) events.close();
  });
  events.addEventListener("end", () => events.close());
}

function seconds(s) {
  if (s == null || !isFinite(s)) return "–";
  return s < 90 ? `${s.toFixed(1)} s` : `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
}

function showRun(m) {
  const id = state.run;
  if (m.history && !m.entries) state.entries = m.history;
  if (m.total) state.total = m.total;
  const p = m.progress || state.entries[state.entries.length - 1];
  $("status").textContent = m.status;
  $("status").className = `status-${m.status}`;
  $("scale").textContent = p ? `${p.scale + 1} (${p.size} px)` : "–";
  $("iteration").textContent = p ? `${p.iteration} / ${state.total || "?"}` : "–";
  $("evaluations").textContent = p ? p.evaluations : "–";
  $("elapsed").textContent = p ? seconds(p.seconds) : "–";
  const left = p && state.total && p.iteration ? (p.seconds / p.iteration) * (state.total - p.iteration) : null;
  $("remaining").textContent = m.status === "running" ? seconds(left) : "–";
  showError(m.error || "");
  const active = ["queued", "running"].includes(m.status);
  $("stop").disabled = !active;
  $("again").disabled = false;
  $("study-button").disabled = !p;
  if (p) $("picture").src = url(`/api/runs/${id}/image`, { v: `${p.iteration}-${m.status}` });
  const ended = !active;
  for (const [a, path] of [["download-png", "image"], ["download-manifest", "manifest"]]) {
    $(a).href = url(`/api/runs/${id}/${path}`, { download: 1 });
    $(a).classList.toggle("disabled", !(ended && m.status !== "failed") && !(path === "image" && p && !active));
  }
  drawChart();
}

// -- the loss chart (log scale; a canvas, no library) ----------------------------------------------

const SERIES = [["loss", "#222"], ["content", "#3b7ddd"], ["style", "#d9534f"], ["tv", "#5cb85c"]];

function drawChart() {
  const canvas = $("chart"), ctx = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height, pad = 36;
  ctx.clearRect(0, 0, W, H);
  const pts = state.entries;
  canvas.dataset.points = String(pts.length);
  if (!pts.length) return;
  const vals = pts.flatMap((e) => SERIES.map(([k]) => e[k]).filter((v) => v > 0));
  const lo = Math.log10(Math.min(...vals)), hi = Math.log10(Math.max(...vals)) + 1e-9;
  const n = Math.max(state.total, pts[pts.length - 1].iteration, 2);
  const x = (i) => pad + ((W - pad - 8) * i) / n, y = (v) => H - pad / 2 - ((H - pad) * (Math.log10(v) - lo)) / (hi - lo || 1);
  ctx.font = "11px sans-serif"; ctx.fillStyle = "#666";
  ctx.fillText(`1e${hi.toFixed(1)}`, 2, 12); ctx.fillText(`1e${lo.toFixed(1)}`, 2, H - pad / 2);
  SERIES.forEach(([key, colour], k) => {
    ctx.strokeStyle = colour; ctx.beginPath();
    let open = false;
    for (const e of pts) {
      if (!(e[key] > 0)) continue;
      if (open) ctx.lineTo(x(e.iteration), y(e[key])); else { ctx.moveTo(x(e.iteration), y(e[key])); open = true; }
    }
    ctx.stroke();
    ctx.fillStyle = colour; ctx.fillText(key, pad + 60 * k, H - 2);
  });
}

// -- study -----------------------------------------------------------------------------------------

async function study(refresh) {
  const id = state.run;
  $("study").hidden = false;
  $("study-note").textContent = "computing on a worker…";
  try {
    const response = await fetch(url(`/api/runs/${id}/study`, refresh ? { refresh: 1 } : {}));
    const body = await response.json();
    if (!response.ok) throw new Error(body.error);
    const status = response.status;
    if (state.run !== id) return;
    if (status === 202) { setTimeout(() => study(false), 1000); return; }
    showStudy(id, body);
  } catch (e) { $("study-note").textContent = e.message; }
}

function showStudy(id, s) {
  $("study-note").textContent = `At iteration ${s.iteration}, ${s.size[0]}×${s.size[1]} px: −dL/dx of each weighted term alone (red: brighter, blue: darker), each scaled to its own 99th percentile.`;
  $("study-pictures").replaceChildren(...s.gradients.map((g) => {
    const fig = document.createElement("figure"), img = document.createElement("img"), cap = document.createElement("figcaption");
    img.src = url(`/api/runs/${id}/study/${g.image}`, { v: s.picture }); img.alt = g.term; cap.textContent = g.term;
    fig.append(img, cap); return fig;
  }));
  $("study-table").tBodies[0].replaceChildren(...s.terms.map((t) => {
    const tr = document.createElement("tr");
    for (const v of [t.term, t.layer || "", t.weight.toPrecision(3), t.value.toPrecision(4), t.weighted.toPrecision(4), `${(100 * t.share).toFixed(1)} %`]) {
      const td = document.createElement("td"); td.textContent = v; tr.append(td);
    }
    return tr;
  }));
}

// -- history ---------------------------------------------------------------------------------------

async function loadRuns() {
  const { body } = await api("/api/runs");
  $("runs").replaceChildren(...body.map((r) => {
    const li = document.createElement("li"), img = document.createElement("img"), text = document.createElement("span");
    li.dataset.id = r.id;
    li.classList.toggle("selected", r.id === state.run);
    if (r.has_image) img.src = url(`/api/runs/${r.id}/image`, { v: r.updated });
    img.alt = "";
    const o = r.args || {};
    text.innerHTML = "";
    const status = document.createElement("b"); status.textContent = r.status; status.className = `status-${r.status}`;
    text.append(status, ` ${o.size || ""} px, ${o.iterations || ""} it, β ${o.style_weight != null ? Number(o.style_weight).toPrecision(2) : ""}, ${o.color || ""}`);
    text.title = r.id;
    li.append(img, text);
    li.addEventListener("click", () => select(r.id));
    return li;
  }));
}

// -- wiring ----------------------------------------------------------------------------------------

function wire() {
  setUpDrop($("content-drop"), $("content-file"));
  setUpDrop($("style-drop"), $("style-file"));
  $("strength").addEventListener("input", () => { $("strength").dataset.touched = "1"; strengthChanged(); });
  strengthChanged();
  $("options").addEventListener("submit", startFromForm);
  $("example").addEventListener("click", () => {
    const ex = state.library || [];
    state.content = (ex.find((i) => i.example === "content") || {}).name || null;
    state.styles = ex.filter((i) => i.example === "style").map((i) => i.name);
    drawInputs();
  });
  $("stop").addEventListener("click", async () => {
    try { await api(`/api/runs/${state.run}/stop`, { method: "POST" }); } catch (e) { showError(e.message); }
  });
  $("again").addEventListener("click", () => {
    if (!state.lastRequest) return;
    state.content = state.lastRequest.content; state.styles = state.lastRequest.styles.slice();
    writeOptions(state.lastRequest.options || {});
    drawInputs();
    notice("the inputs and options of that run are back in the form: change what you like and Start");
  });
  $("study-button").addEventListener("click", () => study(true));
}

async function boot() {
  wire();
  try {
    await Promise.all([loadLibrary(), loadRuns()]);
    document.body.dataset.ready = "true";
  } catch (e) { showError(e.message); }
}

boot();
