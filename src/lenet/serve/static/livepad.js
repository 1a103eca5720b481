// The training page's small drawing pad: the drawing as PNG -> POST /api/train/predict?run=NAME, read with
// that run's current weights. train.js calls offerRuns() with the current training's runs.
"use strict";

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

// a probability in words that never rounds a doubt away: ">99.9%", not "100.0%"
function share(p) {
  if (p > 0.999) return ">99.9%";
  if (p < 0.001) return "<0.1%";
  return `${(100 * p).toFixed(1)}%`;
}

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
      const second = body.runner_up;
      liveAbout.textContent = `${share(body.confidence)} sure (softmax), runner-up ${second.label}: ` +
        `${share(second.probability)}; with ${against.value}'s weights now`;
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
  if (names.join() !== [...against.options].map((o) => o.value).join()) {
    against.replaceChildren(...runs.map((r) => new Option(r.title, r.name)));
  }
  runs.forEach((r, i) => { if (against.options[i].text !== r.title) against.options[i].text = r.title; });
}

clearLivePad();
