// The drawing page: strokes on a canvas -> PNG -> POST /api/predict -> bars, input and conv1 maps.
// Plain browser JavaScript, no build step. The page's state is mirrored in data-* attributes
// (body[data-state] = idle | busy, #label[data-label]) so tests can wait on it. The network's sizes
// (how many conv1 maps, their side, the input's side) come from GET /api/model's `shape` at start-up.
"use strict";

const pad = document.getElementById("pad");
const ctx = pad.getContext("2d");
const labelEl = document.getElementById("label");
const confEl = document.getElementById("confidence");
const errorEl = document.getElementById("error");
const barsEl = document.getElementById("bars");
const undoBtn = document.getElementById("undo");
const clearBtn = document.getElementById("clear");
let inputCanvas = null; // made by buildMaps() once the model's shape is known
let mapCanvases = [];

const INK = 18; // stroke width on the 280 px pad: about MNIST's stroke-to-digit ratio
const THROTTLE_MS = 120; // at most one prediction per interval while drawing

let strokes = []; // each stroke: [[x, y], ...] in canvas pixels
let current = null;
let timer = null;
let inflight = false;
let again = false;
let generation = 0; // bumped by clear/undo to drop answers about a drawing that is gone

// ---- bars
const bars = [];
for (let d = 0; d < 10; d++) {
  const li = document.createElement("li");
  li.innerHTML = `<span class="digit">${d}</span><span class="track"><span class="fill"></span></span>` +
    `<span class="pct">–</span>`;
  barsEl.appendChild(li);
  bars.push({ li, fill: li.querySelector(".fill"), pct: li.querySelector(".pct") });
}

// ---- drawing
function redraw() {
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, pad.width, pad.height);
  ctx.strokeStyle = "#fff";
  ctx.fillStyle = "#fff";
  ctx.lineWidth = INK;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  for (const s of strokes) {
    if (s.length === 1) { // a dot
      ctx.beginPath();
      ctx.arc(s[0][0], s[0][1], INK / 2, 0, 2 * Math.PI);
      ctx.fill();
      continue;
    }
    ctx.beginPath();
    ctx.moveTo(s[0][0], s[0][1]);
    for (const [x, y] of s.slice(1)) ctx.lineTo(x, y);
    ctx.stroke();
  }
  undoBtn.disabled = clearBtn.disabled = strokes.length === 0;
}

function point(e) {
  const r = pad.getBoundingClientRect();
  return [(e.clientX - r.left) * pad.width / r.width, (e.clientY - r.top) * pad.height / r.height];
}

pad.addEventListener("pointerdown", (e) => {
  if (e.button !== 0) return;
  pad.setPointerCapture(e.pointerId);
  current = [point(e)];
  strokes.push(current);
  redraw();
  changed(false);
});
pad.addEventListener("pointermove", (e) => {
  if (!current) return;
  const events = e.getCoalescedEvents ? e.getCoalescedEvents() : [e];
  for (const ev of events.length ? events : [e]) current.push(point(ev));
  redraw();
  changed(false);
});
function endStroke() {
  if (!current) return;
  current = null;
  changed(true);
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

function undo() {
  if (!strokes.length) return;
  strokes.pop();
  generation++;
  redraw();
  changed(true);
}
function clearPad() {
  strokes = [];
  current = null;
  generation++;
  redraw();
  changed(true);
}
undoBtn.addEventListener("click", undo);
clearBtn.addEventListener("click", clearPad);
document.addEventListener("keydown", (e) => {
  if ((e.ctrlKey || e.metaKey) && e.key === "z") { e.preventDefault(); undo(); }
  if (e.key === "Escape") clearPad();
});

// ---- predicting
function setState() {
  document.body.dataset.state = (timer !== null || inflight) ? "busy" : "idle";
}

// now: the stroke ended (predict at once); otherwise throttle while the pen moves.
function changed(now) {
  if (now) { clearTimeout(timer); timer = null; }
  if (timer === null) timer = setTimeout(() => { timer = null; send(); }, now ? 0 : THROTTLE_MS);
  setState();
}

async function send() {
  if (inflight) { again = true; return; }
  if (!strokes.length) { showBlank(); setState(); return; }
  inflight = true;
  setState();
  const gen = generation;
  try {
    const blob = await new Promise((resolve) => pad.toBlob(resolve, "image/png"));
    const res = await fetch("/api/predict", { method: "POST", headers: { "Content-Type": "image/png" }, body: blob });
    const body = await res.json().catch(() => ({}));
    if (gen === generation) {
      if (res.ok) show(body);
      else showError(body.detail || `HTTP ${res.status}`);
    }
  } catch (err) {
    showError(`server unreachable (${err.message})`);
  } finally {
    inflight = false;
    if (again) { again = false; send(); }
    setState();
  }
}

// a probability in words that never rounds a doubt away: ">99.9%", not "100.0%"
function share(p) {
  if (p > 0.999) return ">99.9%";
  if (p < 0.001) return "<0.1%";
  return `${(100 * p).toFixed(1)}%`;
}

// the calibrated probabilities when the server knows them (the model card says how), else the softmax
function confidenceText(r) {
  const probs = r.calibrated ? r.calibrated.probabilities : r.probabilities;
  const how = r.calibrated ? "calibrated" : "softmax, not calibrated";
  const second = r.runner_up.label;
  return `${share(probs[r.label])} sure (${how}); runner-up ${second}: ${share(probs[second])}`;
}

function show(r) {
  errorEl.hidden = true;
  labelEl.textContent = String(r.label);
  labelEl.dataset.label = String(r.label);
  confEl.textContent = confidenceText(r);
  confEl.dataset.runnerUp = String(r.runner_up.label);
  (r.calibrated ? r.calibrated.probabilities : r.probabilities).forEach((p, d) => {
    bars[d].fill.style.width = `${(100 * p).toFixed(1)}%`;
    bars[d].pct.textContent = share(p);
    bars[d].li.classList.toggle("top", d === r.label);
  });
  if (inputCanvas) paint(inputCanvas, r.input, 1);
  const peak = Math.max(1e-6, ...r.conv1.flat(2)); // one scale for all the maps: compare their strength
  r.conv1.forEach((m, i) => { if (mapCanvases[i]) paint(mapCanvases[i], m, peak); });
}

function showBlank() {
  errorEl.hidden = true;
  labelEl.textContent = "?";
  labelEl.dataset.label = "";
  confEl.textContent = "draw something";
  confEl.dataset.runnerUp = "";
  for (const b of bars) { b.fill.style.width = "0"; b.pct.textContent = "–"; b.li.classList.remove("top"); }
  for (const c of [inputCanvas, ...mapCanvases]) c?.getContext("2d").clearRect(0, 0, c.width, c.height);
}

function showError(message) {
  errorEl.textContent = message;
  errorEl.hidden = false;
}

function paint(canvas, rows, peak) { // rows: h x w numbers, 0..peak -> black..white
  const c = canvas.getContext("2d");
  const img = c.createImageData(canvas.width, canvas.height);
  rows.forEach((row, y) => row.forEach((v, x) => {
    const g = Math.round(255 * Math.min(1, Math.max(0, v / peak)));
    const i = 4 * (y * canvas.width + x);
    img.data[i] = img.data[i + 1] = img.data[i + 2] = g;
    img.data[i + 3] = 255;
  }));
  c.putImageData(img, 0, 0);
}

// ---- the model's shape: what the network sees, sized as GET /api/model says
function canvasFigure(side, caption, attrs) {
  const figure = document.createElement("figure");
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = side;
  Object.assign(canvas, attrs);
  const figcaption = document.createElement("figcaption");
  figcaption.textContent = caption;
  figure.append(canvas, figcaption);
  return [figure, canvas];
}

function buildMaps(shape) {
  const [inputFigure, input] = canvasFigure(shape.image, `${shape.image}x${shape.image} input`, { id: "input" });
  const maps = Array.from({ length: shape.conv1 }, (_, i) =>
    canvasFigure(shape.conv1_side, `conv1 map ${i + 1}`, { className: "fmap" }));
  document.getElementById("maps").replaceChildren(inputFigure, ...maps.map(([figure]) => figure));
  inputCanvas = input;
  mapCanvases = maps.map(([, canvas]) => canvas);
  for (const el of document.querySelectorAll("[data-shape]")) {
    el.textContent = Number(shape[el.dataset.shape]).toLocaleString("en");
  }
}

// ---- the model's facts
function pct(x) { return typeof x === "number" ? `${(100 * x).toFixed(2)}%` : "not recorded"; }

function network(s) {
  const k = `${s.kernel}x${s.kernel}`;
  return `conv ${k} 1→${s.conv1}, conv ${k} ${s.conv1}→${s.conv2}, fc ${s.features}→${s.classes}`;
}

// one <dt>/<dd> pair per row; a list value becomes a bulleted list
function definitions(rows) {
  return rows.flatMap(([k, v]) => {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd");
    if (Array.isArray(v)) {
      const ul = document.createElement("ul");
      ul.append(...v.map((text) => Object.assign(document.createElement("li"), { textContent: text })));
      dd.append(ul);
    } else {
      dd.textContent = v;
    }
    return [dt, dd];
  });
}

async function loadFacts() {
  const dl = document.getElementById("facts");
  const card = document.getElementById("card");
  try {
    const f = await (await fetch("/api/model")).json();
    buildMaps(f.shape);
    const recipe = f.description || "not recorded"; // lenet.config.describe, the one wording of a config
    const rows = [["parameters", f.parameters.toLocaleString("en")], ["test accuracy", pct(f.test_accuracy)],
      ["recipe", recipe], ["network", network(f.shape)], ["architecture", f.architecture], ["file", f.file]];
    dl.replaceChildren(...definitions(rows));
    const c = f.card; // lenet.serve.card: the model card's words
    if (c) card.replaceChildren(...definitions([["data set", c.data], ["intended use", c.intended_use],
      ["limits", c.limits], ["confidence", c.confidence]]));
  } catch (err) {
    dl.textContent = `could not load the model's facts (${err.message})`;
  }
}

redraw();
showBlank();
setState();
loadFacts();
