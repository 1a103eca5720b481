"""The server's current training on the training page (`lenet serve`'s /train): one run, or a pair started
together with the same seed and two learning rates; the runs folder they are written in, with the names
that stay inside it; and the data they train on, loaded once. One training at a time per server process.
Each run is a lenet.serve.live.LiveRun; the page and its API are lenet.serve.live_routes'.
"""

from __future__ import annotations

import base64
import hashlib
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lenet.config import TrainConfig
from lenet.data import Split, load_split
from lenet.runs import one_line
from lenet.serve.http import fail
from lenet.serve.live import DIGITS, LiveRun

MAX_NAME = 100  # characters of a run folder's name
NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_NAME - 1}}}")  # no separators, no dot-dot start
NOT_IN_NAME = re.compile(r"[^A-Za-z0-9._-]")
STOP_SECONDS = 3.0  # how long a server that is shutting down waits for its runs to stop
Planned = tuple[
    str, str, TrainConfig, bool
]  # a run to start: its name, label, config, and whether it resumes


class Live:
    """The server's trainings: the current one (one run or a pair), its runs folder and the data."""

    def __init__(self, runs_dir: Path | str | None = None) -> None:
        self.runs_dir = Path(runs_dir if runs_dir is not None else "runs")
        self.runs: list[LiveRun] = []
        self.lock = threading.Lock()
        self.load: Callable[[str, torch.device], Split] = default_load  # tests give a smaller split
        self.splits: dict[tuple[str, str], Split] = {}

    def busy(self) -> bool:
        return any(r.alive() for r in self.runs)

    def split(self, cfg: TrainConfig) -> Split:
        from lenet.engines import resolve_device

        device = resolve_device(cfg.device)
        key = (cfg.dataset, str(device))
        if key not in self.splits:
            self.splits[key] = self.load(cfg.dataset, device)
        return self.splits[key]

    def folder(self, name: Any) -> Path:
        """runs_dir/name, refused (400) unless `name` is a plain folder name that stays inside runs_dir."""
        if not isinstance(name, str) or not NAME.fullmatch(name) or name.endswith(".lock"):
            raise fail(400, f"run name {str(name)[:120]!r}: use letters, digits, '.', '_' and '-' only "
                            f"(a folder directly under the runs folder {self.runs_dir})")  # fmt: skip
        root = self.runs_dir.resolve()
        path = (root / name).resolve()
        if path.parent != root:  # e.g. a symbolic link inside runs_dir pointing elsewhere
            raise fail(400, f"run name {name!r} leads outside the runs folder {self.runs_dir}")
        return self.runs_dir / name

    def start(self, planned: list[Planned], min_seconds: float = 0) -> list[LiveRun]:
        """Start (name, label, config, resume) runs together, each lasting at least `min_seconds`; 409 while
        another training is running."""
        with self.lock:
            if self.busy():
                names = ", ".join(r.name for r in self.runs if r.alive())
                raise fail(409, f"a training is already running ({names}); stop it first (one per server)")
            try:
                split = self.split(planned[0][2])
            except Exception as e:
                raise fail(503, f"cannot load the {planned[0][2].dataset} data: {one_line(e)}") from None
            runs = [LiveRun(name, label, cfg, self.made(name), split, resume, min_seconds)
                    for name, label, cfg, resume in planned]  # fmt: skip
            self.runs = runs
        for r in runs:
            r.thread.start()
        return runs

    def made(self, name: str) -> Path:
        """The folder of run `name`, made if missing; 409 when the file system refuses (the runs folder is
        a file or read-only, a file has the run's name), never a 500."""
        out = self.folder(name)
        try:
            self.runs_dir.mkdir(parents=True, exist_ok=True)
            out.mkdir(exist_ok=True)
        except OSError as e:  # FileExistsError: what exists is not a folder (mkdir's exist_ok)
            why = f"{e.filename} is a file" if isinstance(e, FileExistsError) else e.strerror or one_line(e)
            raise fail(409, f"cannot make the run folder {out}: {why}; choose another name, or start the "
                            "server with another --runs-dir") from None  # fmt: skip
        return out

    def find(self, name: str) -> LiveRun:
        for r in self.runs:
            if r.name == name:
                return r
        raise fail(404, f"no run {name[:120]!r} in this server's current training")

    def control(self, action: str) -> None:
        """Pause, resume or stop every running run of the current training."""
        if action not in ("pause", "resume", "stop"):
            raise fail(404, f"no action {action[:40]!r}: pause, resume or stop")
        running = [r for r in self.runs if r.alive()]
        if not running:
            raise fail(409, "no training is running")
        for r in running:
            if action == "pause":
                r.pause()
            elif action == "stop":
                r.stop("stopped from the training page")
            else:
                r.go.set()  # a paused run wakes up

    def shut_down(self, seconds: float = STOP_SECONDS) -> None:
        """The server is stopping: stop every run and wait up to `seconds` for them (each keeps its last
        finished epoch's checkpoint, and its train.log says how to continue)."""
        running = [r for r in self.runs if r.thread.is_alive()]
        for r in running:
            r.stop("stopped: the server shut down")
        deadline = time.monotonic() + seconds
        for r in running:
            r.thread.join(max(0.0, deadline - time.monotonic()))

    def digits(self) -> dict[str, Any]:
        split = self.runs[0].split if self.runs else self.split(TrainConfig())
        pixels = (split.test_x[:DIGITS] * 255).round().to(torch.uint8).cpu().numpy().tobytes()
        return {"side": split.test_x.shape[-1], "labels": split.test_y[:DIGITS].tolist(),
                "pixels": base64.b64encode(pixels).decode()}  # fmt: skip

    def status(self) -> dict[str, Any]:
        return {"busy": self.busy(), "runs_dir": str(self.runs_dir), "runs": [r.facts() for r in self.runs]}

    def version(self) -> tuple:
        return tuple((r.name, r.version) for r in self.runs)


def default_load(dataset: str, device: torch.device) -> Split:
    return load_split(dataset, device=device)


def generated_name(text: str) -> str:
    """`text` (a time stamp and settings) as a run folder name that NAME accepts, for any valid settings:
    characters it refuses dropped (the '+' of lr 1e+16), and a name over MAX_NAME characters (a preset's
    many settings) cut, ending in a hash of the whole so that two long names stay apart."""
    name = NOT_IN_NAME.sub("", text)
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{name[: MAX_NAME - len(digest) - 1]}-{digest}"
