// The training page: a form -> POST /api/train/start; Server-Sent Events from /api/train/events -> charts,
// filters and the 50 digits' top-3 bars of each run. Plain browser JavaScript, no build step, nothing fetched
// from other sites. State is mirrored in data-* attributes for tests: body[data-state] (idle | running |
// paused | finished | stopped | failed), #loss[data-updates|data-points], .run[data-name|data-state],
// .digits[data-top] (every digit's guesses), .f-test[data-accuracy], #live-label[data-label].
"use strict";

const COLORS = ["#2563eb", "#dc2626"]; // one per run of a pair
const form = document.getElementById("form");
const errorEl = document.getElementById("error");
const runsEl = document.getElementById("runs");
const lossCanvas = document.getElementById("loss");
const accCanvas = document.getElementById("acc");
const compare = document.getElementById("compare");
const compareLr = document.getElementById("compare-lr");
const buttons = Object.fromEntries(["start", "pause", "resume", "stop"].map((id) => [id, document.getElementById(id)]));
const panels = new Map(); // run name -> its panel's elements
let digits = null; // {side, labels, pixels: Uint8Array} from /api/train/digits

// ---- the form
async function loadOptions() {
  const res = await fetch("/api/train/options");
  const options = await res.json();
  const preset = document.getElementById("preset");
  for (const name of options.presets) preset.add(new Option(name, name));
  for (const [name, s] of Object.entries(options.settings)) {
    const input = form.elements[name];
    input.value = s.default;
    input.title = s.help;
  }
  document.getElementById("where").textContent = `Runs are saved in ${options.runs_dir}/ on the server.`;
}

compare.addEventListener("change", () => { compareLr.disabled = !compare.checked; });

function settings() {
  const body = {};
  for (const name of ["lr", "init_std", "batch_size", "epochs", "seed"]) {
    const text = form.elements[name].value.trim();
    if (text !== "") body[name] = Number.isFinite(Number(text)) ? Number(text) : text;
  }
  const preset = form.elements.preset.value;
  if (preset) body.preset = preset;
  if (compare.checked) body.compare_lr = Number(compareLr.value);
  return body;
}

async function post(path, body) {
  showError("");
  try {
    const res = await fetch(path, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body ?? {}),
    });
    const answer = await res.json().catch(() => ({}));
    if (!res.ok) showError(answer.detail || `HTTP ${res.status}`);
    return res.ok ? answer : null;
  } catch (err) {
    showError(`server unreachable (${err.message})`);
    return null;
  }
}

function showError(text) {
  errorEl.textContent = text;
  errorEl.hidden = !text;
}

form.addEventListener("submit", async (e) => {
  e.preventDefault();
  const started = await post("/api/train/start", settings());
  if (started) {
    for (const name of panels.keys()) if (!started.runs.includes(name)) dropPanel(name);
    resetCharts();
  }
});
for (const action of ["pause", "resume", "stop"]) {
  buttons[action].addEventListener("click", () => post(`/api/train/${action}`));
}

// ---- live updates
function listen() {
  const source = new EventSource("/api/train/events");
  source.onmessage = (e) => render(JSON.parse(e.data));
}

function render(status) {
  const runs = status.runs;
  const states = runs.map((r) => r.state);
  const live = states.some((s) => s === "running" || s === "starting");
  const state = live ? "running" : states.includes("paused") ? "paused" : states[0] || "idle";
  document.body.dataset.state = state;
  buttons.start.disabled = status.busy;
  buttons.pause.disabled = state !== "running";
  buttons.resume.disabled = state !== "paused";
  buttons.stop.disabled = !status.busy;
  runs.forEach((run, i) => renderRun(run, COLORS[i % COLORS.length]));
  if (runs.length) drawCharts(runs);
  offerRuns(runs);
}

// ---- charts: the loss every 50 steps and the validation accuracy per epoch, one colour per run
let lastLoss = "";
let lastAcc = "";
function resetCharts() { lastLoss = lastAcc = ""; }

function drawCharts(runs) {
  const epochs = Math.max(...runs.map((r) => r.epochs));
  const loss = runs.map((r, i) => ({ color: COLORS[i], points: r.loss }));
  const acc = runs.map((r, i) => ({ color: COLORS[i], points: r.rows.map((row) => [row.epoch, row.val_accuracy]) }));
  const lossKey = JSON.stringify(loss.map((s) => s.points.length));
  if (lossKey !== lastLoss) {
    lastLoss = lossKey;
    const top = Math.min(3, Math.max(0.5, ...runs.flatMap((r) => r.loss.map((p) => p[1] ?? 0))));
    chart(lossCanvas, loss, { xmax: epochs, ymin: 0, ymax: top, format: (v) => v.toFixed(2) });
  }
  const accKey = JSON.stringify(acc.map((s) => s.points.length));
  if (accKey !== lastAcc) {
    lastAcc = accKey;
    const low = Math.min(0.8, ...acc.flatMap((s) => s.points.map((p) => p[1] ?? 1)));
    chart(accCanvas, acc, { xmax: epochs, ymin: Math.floor(low * 10) / 10, ymax: 1,
      format: (v) => `${Math.round(v * 100)}%`, dots: true });
  }
}

function chart(canvas, series, o) {
  const ctx = canvas.getContext("2d");
  const W = canvas.width;
  const H = canvas.height;
  const L = 44;
  const B = 20;
  const xmin = o.xmin ?? 0;
  const x = (v) => L + (W - L - 8) * (v - xmin) / Math.max(1e-9, o.xmax - xmin);
  const y = (v) => 6 + (H - B - 6) * (1 - (Math.min(o.ymax, Math.max(o.ymin, v)) - o.ymin) / (o.ymax - o.ymin));
  ctx.clearRect(0, 0, W, H);
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = "#6b7280";
  ctx.strokeStyle = "#e3e6eb";
  for (let k = 0; k <= 4; k++) { // horizontal grid lines and their values
    const v = o.ymin + (o.ymax - o.ymin) * k / 4;
    ctx.beginPath(); ctx.moveTo(L, y(v)); ctx.lineTo(W - 8, y(v)); ctx.stroke();
    ctx.fillText(o.format(v), 2, y(v) + 4);
  }
  const step = Math.max(1, Math.ceil(o.xmax / 10));
  for (let e = Math.ceil(xmin); e <= o.xmax; e += step) ctx.fillText(String(e), x(e) - 3, H - 5);
  for (const s of series) {
    ctx.strokeStyle = ctx.fillStyle = s.color;
    ctx.lineWidth = 2;
    ctx.beginPath();
    let pen = false;
    for (const [px, py] of s.points) {
      if (py === null) { pen = false; continue; } // not finite: a diverged run
      if (pen) ctx.lineTo(x(px), y(py)); else ctx.moveTo(x(px), y(py));
      pen = true;
    }
    ctx.stroke();
    if (o.dots) for (const [px, py] of s.points) if (py !== null) ctx.fillRect(x(px) - 2.5, y(py) - 2.5, 5, 5);
  }
  const points = series.reduce((n, s) => n + s.points.length, 0);
  canvas.dataset.points = points;
  canvas.dataset.updates = Number(canvas.dataset.updates) + 1;
}

// ---- one panel per run
function panel(run, color) {
  if (panels.has(run.name)) return panels.get(run.name);
  const node = document.getElementById("run-template").content.firstElementChild.cloneNode(true);
  node.dataset.name = run.name;
  node.querySelector(".swatch").style.background = color;
  node.querySelector(".run-label").textContent = run.label;
  const q = (sel) => node.querySelector(sel);
  const p = { node, q, digits: q(".digits"), conv1: q("canvas.conv1"), conv2: q("canvas.conv2"), cells: [] };
  q(".set-lr").addEventListener("submit", (e) => {  // plain SGD: a new lr from the next epoch on
    e.preventDefault();
    const text = e.target.elements.new_lr.value.trim();
    post("/api/train/lr", { run: run.name, lr: Number.isFinite(Number(text)) ? Number(text) : text });
  });
  runsEl.appendChild(node);
  panels.set(run.name, p);
  buildDigits(p);
  return p;
}

function dropPanel(name) {
  panels.get(name).node.remove();
  panels.delete(name);
}

function renderRun(run, color) {
  const p = panel(run, color);
  p.node.dataset.state = run.state;
  const pct = (v) => (v === null || v === undefined ? "–" : `${(100 * v).toFixed(2)}%`);
  const last = run.rows[run.rows.length - 1];
  p.q(".f-state").textContent = run.state + (run.error ? `: ${run.error}` : "");
  p.q(".f-epoch").textContent = `${run.epoch ?? 0} of ${run.epochs} (step ${run.step ?? 0} of ${run.steps_per_epoch})`;
  p.q(".f-lr").textContent = (run.lr === undefined ? "–" : run.lr.toPrecision(3)) +
    (run.lr_next ? ` (${run.lr_next} from the next epoch)` : "");
  p.q(".set-lr").hidden = !run.lr_settable || !["running", "paused", "starting"].includes(run.state);
  p.q(".f-speed").textContent = run.images_per_second ? run.images_per_second.toLocaleString("en") : "–";
  p.q(".f-val").textContent = last ? pct(last.val_accuracy) : "–";
  p.q(".f-dead").textContent = last?.dead_channels ? `conv1 ${last.dead_channels.conv1}, conv2 ${last.dead_channels.conv2}` : "–";
  p.q(".f-folder").textContent = run.folder;
  const test = p.q(".f-test");
  test.textContent = run.result ? pct(run.result.test_accuracy) : "–";
  if (run.result) test.dataset.accuracy = run.result.test_accuracy;
  if (run.filters) drawFilters(p, run.filters);
  if (run.top3) drawTop3(p, run.top3);
}

// ---- filters: blue negative, red positive, white zero; one scale per layer
function drawFilters(p, filters) {
  const k = Math.round(Math.sqrt(filters.conv1[0].length)); // the kernel's side, 5
  const inputs = filters.conv1.length; // conv2 reads one map per conv1 filter
  paintGrid(p.conv1, filters.conv1, k, filters.conv1.length, 1, 9, 1);
  paintGrid(p.conv2, filters.conv2, k, filters.conv2.length / inputs, inputs, 4, inputs);
}

// kernels[n] goes to column floor(n / per), row n % per (per = 1: one row, left to right)
function paintGrid(canvas, kernels, k, cols, rows, scale, per) {
  const gap = 2;
  canvas.width = cols * (k * scale + gap) - gap;
  canvas.height = rows * (k * scale + gap) - gap;
  const ctx = canvas.getContext("2d");
  const max = Math.max(1e-6, ...kernels.flat().map(Math.abs));
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  kernels.forEach((w, n) => {
    const ox = (per === 1 ? n : Math.floor(n / per)) * (k * scale + gap);
    const oy = (per === 1 ? 0 : n % per) * (k * scale + gap);
    w.forEach((v, i) => {
      const t = Math.min(1, Math.abs(v) / max);
      const shade = Math.round(255 * (1 - t));
      ctx.fillStyle = v >= 0 ? `rgb(255,${shade},${shade})` : `rgb(${shade},${shade},255)`;
      ctx.fillRect(ox + (i % k) * scale, oy + Math.floor(i / k) * scale, scale, scale);
    });
  });
}

// ---- the 50 digits with their top-3 bars (green: the right digit)
async function ensureDigits() {
  if (digits) return;
  const d = await (await fetch("/api/train/digits")).json();
  const raw = atob(d.pixels);
  digits = { side: d.side, labels: d.labels, pixels: Uint8Array.from(raw, (c) => c.charCodeAt(0)) };
  for (const p of panels.values()) buildDigits(p);
}

function buildDigits(p) {
  if (!digits || p.cells.length) return;
  const side = digits.side;
  digits.labels.forEach((label, n) => {
    const cell = document.createElement("div");
    cell.className = "digit-cell";
    const c = document.createElement("canvas");
    c.width = c.height = side;
    const image = c.getContext("2d").createImageData(side, side);
    for (let i = 0; i < side * side; i++) {
      const v = digits.pixels[n * side * side + i];
      image.data.set([v, v, v, 255], 4 * i);
    }
    c.getContext("2d").putImageData(image, 0, 0);
    cell.appendChild(c);
    const bars = [0, 1, 2].map(() => {
      const row = document.createElement("div");
      row.className = "guess";
      row.innerHTML = '<span class="d"></span><span class="track"><span class="fill"></span></span>';
      cell.appendChild(row);
      return { d: row.querySelector(".d"), fill: row.querySelector(".fill"), row };
    });
    p.digits.appendChild(cell);
    p.cells.push({ label, bars, cell });
  });
}

function drawTop3(p, top3) {
  if (!p.cells.length) return;
  top3.forEach((guesses, n) => {
    const cell = p.cells[n];
    guesses.forEach(([d, prob], i) => {
      const bar = cell.bars[i];
      bar.d.textContent = d;
      bar.fill.style.width = `${Math.round(100 * prob)}%`;
      bar.row.classList.toggle("right", d === cell.label);
    });
    cell.cell.classList.toggle("wrong", guesses[0][0] !== cell.label);
  });
  p.digits.dataset.top = top3.map((g) => g.map(([d, prob]) => `${d}:${prob}`).join(",")).join(";");
}

loadOptions().catch((err) => showError(`cannot read the settings (${err.message})`));
ensureDigits().catch((err) => showError(`cannot read the test digits (${err.message})`));
listen();

// ---- draw against the live model: the pad as PNG -> POST /api/train/predict?run=NAME (its current weights)
const livePad = document.getElementById("livepad");
const livePen = livePad.getContext("2d");
const against = document.getElementById("against");
const liveLabel = document.getElementById("live-label");
const liveAbout = document.getElementById("live-about");
let liveStroke = null;
let liveInk = false;
let liveBusy = false;

function clearLivePad() {
  livePen.fillStyle = "#000";
  livePen.fillRect(0, 0, livePad.width, livePad.height);
  liveInk = false;
  liveLabel.textContent = "?";
  liveLabel.dataset.label = "";
}

function livePoint(e) {
  const r = livePad.getBoundingClientRect();
  return [(e.clientX - r.left) * livePad.width / r.width, (e.clientY - r.top) * livePad.height / r.height];
}

livePad.addEventListener("pointerdown", (e) => {
  livePad.setPointerCapture(e.pointerId);
  liveStroke = livePoint(e);
});
livePad.addEventListener("pointermove", (e) => {
  if (!liveStroke) return;
  const next = livePoint(e);
  livePen.strokeStyle = "#fff";
  livePen.lineWidth = 13; // the drawing page's ink, scaled from its 280 px pad
  livePen.lineCap = "round";
  livePen.beginPath();
  livePen.moveTo(...liveStroke);
  livePen.lineTo(...next);
  livePen.stroke();
  liveStroke = next;
  liveInk = true;
});
for (const type of ["pointerup", "pointercancel"]) {
  livePad.addEventListener(type, () => { if (liveStroke) { liveStroke = null; askLive(); } });
}
document.getElementById("live-clear").addEventListener("click", clearLivePad);

async function askLive() {
  if (!liveInk || !against.value || liveBusy) return;
  liveBusy = true;
  try {
    const blob = await new Promise((resolve) => livePad.toBlob(resolve, "image/png"));
    const res = await fetch(`/api/train/predict?run=${encodeURIComponent(against.value)}`,
      { method: "POST", headers: { "Content-Type": "image/png" }, body: blob });
    const body = await res.json().catch(() => ({}));
    if (res.ok) {
      liveLabel.textContent = liveLabel.dataset.label = body.label;
      liveAbout.textContent = `${(100 * body.confidence).toFixed(1)}% sure, with ${against.value}'s weights now`;
    } else {
      liveAbout.textContent = body.detail || `HTTP ${res.status}`;
    }
  } finally {
    liveBusy = false;
  }
}

// the runs to draw against follow the current training
function offerRuns(runs) {
  const names = runs.map((r) => r.name);
  if (names.join() === [...against.options].map((o) => o.value).join()) return;
  against.replaceChildren(...runs.map((r) => new Option(r.label, r.name)));
}

clearLivePad();
