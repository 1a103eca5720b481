// The training page's pictures (train.js calls them): line charts sized to their box, with round ticks,
// axis names and marks (an lr change, a death); the filters in blue-white-red with their colour scale.
// What each chart shows is mirrored in data-* attributes for tests: data-yticks, data-xticks, data-xlabel,
// data-ylabel, data-marks, data-points, data-updates; a scale's data-max.
"use strict";

const INK = "#6b7280";
const GRID = "#e3e6eb";
const FONT = "12px system-ui, sans-serif";

// a round step (1, 2 or 5 times a power of ten) that cuts `span` into about `count` parts
function niceStep(span, count) {
  const raw = Math.max(span, 1e-9) / Math.max(1, count);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const f = raw / mag;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * mag;
}

// the multiples of `step` from lo to hi, without float dust (0.30000000000000004)
function ticksBetween(lo, hi, step) {
  const out = [];
  for (let k = Math.ceil(lo / step - 1e-9); k * step <= hi + step * 1e-9; k++) out.push(Number((k * step).toPrecision(12)));
  return out;
}

// o: {xmax, ymin, ymax, yticks, format, xlabel, ylabel, dots, marks: [{x, label, color}], hline: {y, label}}
function chart(canvas, series, o) {
  const dpr = window.devicePixelRatio || 1;
  const W = canvas.clientWidth || 560;
  const H = canvas.clientHeight || 200;
  canvas.width = Math.round(W * dpr);
  canvas.height = Math.round(H * dpr);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  const box = { L: 58, R: 14, T: 18, B: 38 };
  const x = (v) => box.L + (W - box.L - box.R) * v / Math.max(1e-9, o.xmax);
  const y = (v) => box.T + (H - box.T - box.B) * (1 - (Math.min(o.ymax, Math.max(o.ymin, v)) - o.ymin) / (o.ymax - o.ymin));
  ctx.clearRect(0, 0, W, H);
  const xticks = ticksBetween(0, o.xmax, Math.max(1, Math.round(niceStep(o.xmax, 8))));
  axes(ctx, { W, H, box, x, y, xticks, ...o });
  if (o.hline && o.hline.y > o.ymin && o.hline.y < o.ymax) dashed(ctx, x(0), y(o.hline.y), x(o.xmax), y(o.hline.y), INK, o.hline.label, "right");
  for (const m of o.marks || []) dashed(ctx, x(m.x), y(o.ymax), x(m.x), y(o.ymin), m.color, m.label, "top");
  for (const s of series) line(ctx, s, x, y, o.dots);
  Object.assign(canvas.dataset, { yticks: o.yticks.join(","), xticks: xticks.join(","), xlabel: o.xlabel, ylabel: o.ylabel,
    marks: (o.marks || []).map((m) => `${m.label}@${m.x}`).join(";"),
    points: series.reduce((n, s) => n + s.points.length, 0), updates: Number(canvas.dataset.updates) + 1 });
}

function axes(ctx, o) {
  ctx.font = FONT;
  ctx.lineWidth = 1;
  ctx.strokeStyle = GRID;
  ctx.fillStyle = INK;
  ctx.textBaseline = "middle";
  ctx.textAlign = "right";
  for (const v of o.yticks) {
    ctx.beginPath(); ctx.moveTo(o.box.L, o.y(v)); ctx.lineTo(o.W - o.box.R, o.y(v)); ctx.stroke();
    ctx.fillText(o.format(v), o.box.L - 6, o.y(v));
  }
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  for (const e of o.xticks) ctx.fillText(String(e), o.x(e), o.H - o.box.B + 5);
  ctx.fillText(o.xlabel, (o.box.L + o.W - o.box.R) / 2, o.H - 16);
  ctx.save();
  ctx.translate(12, (o.box.T + o.H - o.box.B) / 2);
  ctx.rotate(-Math.PI / 2);
  ctx.fillText(o.ylabel, 0, -6);
  ctx.restore();
}

function dashed(ctx, x0, y0, x1, y1, color, label, where) {
  ctx.save();
  ctx.strokeStyle = ctx.fillStyle = color;
  ctx.setLineDash([5, 4]);
  ctx.lineWidth = 1.5;
  ctx.beginPath(); ctx.moveTo(x0, y0); ctx.lineTo(x1, y1); ctx.stroke();
  ctx.font = FONT;
  if (where === "top") {
    ctx.textAlign = "left"; ctx.textBaseline = "bottom";
    ctx.fillText(label, x0 + 3, y0 + 12);
  } else {
    ctx.textAlign = "right"; ctx.textBaseline = "bottom";
    ctx.fillText(label, x1 - 2, y0 - 2);
  }
  ctx.restore();
}

function line(ctx, s, x, y, dots) {
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
  if (dots) for (const [px, py] of s.points) if (py !== null) ctx.fillRect(x(px) - 3, y(py) - 3, 6, 6);
}

// ---- filters: blue negative, red positive, white zero; one scale per layer, drawn beside them
function filterColor(v, max) {
  const shade = Math.round(255 * (1 - Math.min(1, Math.abs(v) / max)));
  return v >= 0 ? `rgb(255,${shade},${shade})` : `rgb(${shade},${shade},255)`;
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
      ctx.fillStyle = filterColor(v, max);
      ctx.fillRect(ox + (i % k) * scale, oy + Math.floor(i / k) * scale, scale, scale);
    });
  });
  return max;
}

// the colour scale of a layer: -max (blue) .. 0 (white) .. +max (red), with its numbers
function drawScale(el, max) {
  const bar = el.querySelector("canvas");
  bar.width = 120;
  bar.height = 10;
  const ctx = bar.getContext("2d");
  for (let i = 0; i < bar.width; i++) {
    ctx.fillStyle = filterColor((2 * i / (bar.width - 1) - 1) * max, max);
    ctx.fillRect(i, 0, 1, bar.height);
  }
  const text = max.toPrecision(2);
  el.querySelector(".lo").textContent = `−${text}`;
  el.querySelector(".hi").textContent = `+${text}`;
  el.dataset.max = text;
}

function drawFilters(p, filters) {
  const k = Math.round(Math.sqrt(filters.conv1[0].length)); // the kernel's side, 5
  const inputs = filters.conv1.length; // conv2 reads one map per conv1 filter
  drawScale(p.q(".scale.conv1"), paintGrid(p.conv1, filters.conv1, k, filters.conv1.length, 1, 12, 1));
  drawScale(p.q(".scale.conv2"), paintGrid(p.conv2, filters.conv2, k, filters.conv2.length / inputs, inputs, 6, inputs));
}
