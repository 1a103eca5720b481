// The training page: a form -> POST /api/train/start; Server-Sent Events from /api/train/events -> charts,
// filters and the 50 digits' top-3 bars of each run (charts.js draws the pictures, livepad.js the small pad).
// Plain browser JavaScript, no build step, nothing fetched from other sites. State is mirrored in data-*
// attributes for tests: body[data-state] (idle | running | paused | finished | stopped | failed),
// #loss[data-updates|data-points|data-yticks|data-marks...], .run[data-name|data-state|data-badges],
// .digits[data-top] (every digit's guesses), .f-test[data-accuracy], #live-label[data-label].
"use strict";

const COLORS = ["#2563eb", "#dc2626"]; // one per run of a pair
const DEATH = "#b91c1c";
const CHANCE = Math.log(10); // the loss of a uniform guess over the 10 digits
const SETTINGS = ["lr", "init_std", "batch_size", "epochs", "seed"];
const form = document.getElementById("form");
const errorEl = document.getElementById("error");
const runsEl = document.getElementById("runs");
const lossCanvas = document.getElementById("loss");
const accCanvas = document.getElementById("acc");
const compare = document.getElementById("compare");
const compareLr = document.getElementById("compare-lr");
const speed = document.getElementById("min-seconds");
const buttons = Object.fromEntries(["start", "pause", "resume", "stop"].map((id) => [id, document.getElementById(id)]));
const panels = new Map(); // run name -> its panel's elements
let digits = null; // {side, labels, pixels: Uint8Array} from /api/train/digits
let presetSettings = {}; // preset -> its values of the form's settings
let busy = false;

// ---- the form: a preset fills in its own values, so what is sent is what the form shows
async function loadOptions() {
  const options = await (await fetch("/api/train/options")).json();
  presetSettings = options.preset_settings;
  const preset = document.getElementById("preset");
  for (const name of options.presets) preset.add(new Option(options.protocols[name] || name, name, false, name === "seed"));
  for (const [name, s] of Object.entries(options.settings)) form.elements[name].title = s.help;
  fillPreset();
  for (const seconds of options.speeds.choices) {
    const text = seconds === 0 ? "full speed" : `at least ${seconds < 60 ? `${seconds} s` : `${seconds / 60} min`}`;
    speed.add(new Option(text, String(seconds), false, seconds === options.speeds.default));
  }
  document.getElementById("where").textContent = `Runs are saved in ${options.runs_dir}/ on the server.`;
}

function fillPreset() {
  const values = presetSettings[form.elements.preset.value] || {};
  for (const name of SETTINGS) if (name in values) form.elements[name].value = values[name];
}

document.getElementById("preset").addEventListener("change", fillPreset);
compare.addEventListener("change", () => { compareLr.disabled = !compare.checked; });
speed.addEventListener("change", () => { if (busy) post("/api/train/speed", { min_seconds: Number(speed.value) }); });

function settings() {
  const body = { preset: form.elements.preset.value, min_seconds: Number(speed.value) };
  for (const name of SETTINGS) {
    const text = form.elements[name].value.trim();
    if (text !== "") body[name] = Number.isFinite(Number(text)) ? Number(text) : text;
  }
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
  busy = status.busy;
  buttons.start.disabled = status.busy;
  buttons.pause.disabled = state !== "running";
  buttons.resume.disabled = state !== "paused";
  buttons.stop.disabled = !status.busy;
  runs.forEach((run, i) => renderRun(run, COLORS[i % COLORS.length]));
  if (runs.length) drawCharts(runs);
  offerRuns(runs);
}

// ---- charts: the loss every 50 steps and the validation accuracy per epoch, one colour per run
let lastKey = "";
let lastRuns = [];
function resetCharts() { lastKey = ""; }

function marks(runs) { // where the lr changed (from the page) and where a run died, in epochs
  return runs.flatMap((r, i) => [
    ...r.lr_changes.map(([first, lr]) => ({ x: first, label: `lr ${lr}`, color: COLORS[i % COLORS.length] })),
    ...r.badges.filter((b) => b.kind === "died").map((b) => ({ x: b.epoch, label: "died", color: DEATH })),
  ]);
}

function drawCharts(runs) {
  const key = JSON.stringify(runs.map((r) => [r.loss.length, r.rows.length, r.lr_changes.length, r.epochs]));
  if (key === lastKey) return;
  lastKey = key;
  lastRuns = runs;
  const epochs = Math.max(...runs.map((r) => r.epochs));
  const all = marks(runs);
  const losses = runs.flatMap((r) => r.loss.map((p) => p[1] ?? 0));
  const step = niceStep(Math.min(4, Math.max(0.5, ...losses)), 5);
  const top = Math.ceil(Math.min(4, Math.max(0.5, ...losses)) / step - 1e-9) * step;
  chart(lossCanvas, runs.map((r, i) => ({ color: COLORS[i], points: r.loss })), {
    xmax: epochs, ymin: 0, ymax: top, yticks: ticksBetween(0, top, step), format: (v) => String(v),
    xlabel: "epoch", ylabel: "training loss", marks: all, hline: { y: CHANCE, label: "ln 10: chance" },
  });
  const acc = runs.map((r, i) => ({ color: COLORS[i], points: r.rows.map((row) => [row.epoch, row.val_accuracy]) }));
  const low = 100 * Math.min(0.8, ...acc.flatMap((s) => s.points.map((p) => p[1] ?? 1)));
  const accStep = niceStep(100 - low, 5);
  const bottom = Math.floor(low / accStep) * accStep;
  chart(accCanvas, acc.map((s) => ({ ...s, points: s.points.map(([e, a]) => [e, a === null ? null : 100 * a]) })), {
    xmax: epochs, ymin: bottom, ymax: 100, yticks: ticksBetween(bottom, 100, accStep), format: (v) => `${v}%`,
    xlabel: "epoch", ylabel: "validation accuracy", marks: all, dots: true,
  });
}

// the canvases follow the page's width: redraw at the new size
new ResizeObserver(() => { if (lastRuns.length) { lastKey = ""; drawCharts(lastRuns); } })
  .observe(document.querySelector(".charts"));

// ---- one panel per run
function panel(run, color) {
  if (panels.has(run.name)) return panels.get(run.name);
  const node = document.getElementById("run-template").content.firstElementChild.cloneNode(true);
  node.dataset.name = run.name;
  node.querySelector(".swatch").style.background = color;
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
  p.node.dataset.badges = run.badges.map((b) => b.kind).join(" ");
  const pct = (v) => (v === null || v === undefined ? "–" : `${(100 * v).toFixed(2)}%`);
  const last = run.rows[run.rows.length - 1];
  p.q(".run-label").textContent = run.title;
  renderBadges(p, run.badges);
  p.q(".f-state").textContent = run.state + (run.error ? `: ${run.error}` : "") +
    (run.badges.length ? ` (${run.badges.map((b) => b.text).join(", ")})` : "");
  p.q(".f-epoch").textContent = `${run.epoch ?? 0} of ${run.epochs} (step ${run.step ?? 0} of ${run.steps_per_epoch})`;
  p.q(".f-lr").textContent = (run.lr === undefined ? "–" : run.lr.toPrecision(3)) +
    (run.lr_next ? ` (${run.lr_next} from the next epoch)` : "");
  p.q(".set-lr").hidden = !run.lr_settable;
  p.q(".f-speed").textContent = speedText(run);
  p.q(".f-val").textContent = last ? pct(last.val_accuracy) : "–";
  p.q(".f-dead").textContent = last?.dead_channels ? `conv1 ${last.dead_channels.conv1}, conv2 ${last.dead_channels.conv2}` : "–";
  p.q(".f-folder").textContent = run.folder;
  const test = p.q(".f-test");
  test.textContent = run.result ? pct(run.result.test_accuracy) : "–";
  if (run.result) test.dataset.accuracy = run.result.test_accuracy;
  if (run.filters) drawFilters(p, run.filters);
  if (run.top3) drawTop3(p, run.top3);
}

// images/s of the steps that read images: a dead network's steps are computed from the labels alone
function speedText(run) {
  const rate = run.images_per_second ? run.images_per_second.toLocaleString("en") : "–";
  const paced = run.min_seconds > 0 ? `; slowed to last at least ${run.min_seconds} s, waits not counted` : "";
  if (!run.shortcut) return rate + paced;
  return `${rate} until it died; since then none: a dead network's steps depend only on the batches' labels, ` +
    `so they are computed without reading an image${paced}`;
}

function renderBadges(p, badges) {
  const key = badges.map((b) => b.text).join();
  if (p.badgeKey === key) return;
  p.badgeKey = key;
  p.q(".badges").replaceChildren(...badges.map((b) =>
    Object.assign(document.createElement("span"), { className: `badge ${b.kind}`, textContent: b.text, title: b.reason })));
  p.q(".reasons").replaceChildren(...badges.map((b) => {
    const li = document.createElement("li");
    li.className = b.kind;
    li.append(Object.assign(document.createElement("strong"), { textContent: `${b.text}: ` }), b.reason);
    return li;
  }));
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
    const guesses = document.createElement("div");
    guesses.className = "guesses";
    cell.append(c, guesses);
    const bars = [0, 1, 2].map(() => {
      const row = document.createElement("div");
      row.className = "guess";
      row.innerHTML = '<span class="d"></span><span class="track"><span class="fill"></span></span>';
      guesses.appendChild(row);
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
      bar.row.title = `${d}: ${(100 * prob).toFixed(1)}%`;
      bar.row.classList.toggle("right", d === cell.label);
    });
    cell.cell.classList.toggle("wrong", guesses[0][0] !== cell.label);
  });
  p.digits.dataset.top = top3.map((g) => g.map(([d, prob]) => `${d}:${prob}`).join(",")).join(";");
}

loadOptions().catch((err) => showError(`cannot read the settings (${err.message})`));
ensureDigits().catch((err) => showError(`cannot read the test digits (${err.message})`));
listen();
