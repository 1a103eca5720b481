"""The training page's cost and liveliness, measured in one script on the real MNIST split.

1. Throughput: `lenet.training.train` alone vs with the page's observer attached (lenet.serve.live.LiveRun's
   on_start, on_steps and on_epoch: loss points, weight copies, the 50 digits' top 3, dead channels), in the
   same process, alternating, `--repeats` times; images per second of training (the epochs' own seconds).
2. The page watching: a real server (127.0.0.1, a free port) trains a run started through its API while an
   SSE client reads /api/train/events; events per second, how many of them showed a new step, and the run's
   images per second.
    python benchmarks/bench_live.py [--epochs 2] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import torch

from lenet.config import TrainConfig
from lenet.data import load_split
from lenet.serve.app import create_app
from lenet.serve.live import LiveRun
from lenet.serve.server import background
from lenet.training import train


def images_per_second(rows: list[dict], images: int) -> float:
    return images * len(rows) / sum(r["seconds"] for r in rows)


def timed(run) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of run()."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def throughput(cfg: TrainConfig, split, repeats: int) -> dict[str, list[tuple[float, float]]]:
    """(wall, CPU) seconds of whole `train` calls, alone and with the page's observer, alternating."""
    quiet = lambda line: None  # noqa: E731
    seconds: dict[str, list[tuple[float, float]]] = {"alone": [], "observed": []}
    for _ in range(repeats):
        seconds["alone"].append(timed(lambda: train(cfg, split, log=quiet)))
        with tempfile.TemporaryDirectory() as tmp:
            run = LiveRun("bench", "bench", cfg, Path(tmp), split, resume=False)
            hooks = {"on_start": run.on_start, "on_steps": run.on_steps, "on_epoch": run.on_epoch}
            seconds["observed"].append(timed(lambda: train(cfg, split, log=quiet, **hooks)))  # noqa: B023
    return seconds


def watched_by_sse(cfg: TrainConfig, split) -> dict:
    """Train through the server while an SSE client reads the events; what the client saw."""
    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(runs_dir=tmp)
        app.state.live.load = lambda dataset, device: split
        events, steps = [], set()
        with (
            background(app) as url,
            httpx.Client(base_url=url, timeout=60) as http,
            http.stream("GET", "/api/train/events") as stream,
        ):
            body = {k: getattr(cfg, k) for k in ("lr", "epochs", "batch_size", "seed")}
            assert http.post("/api/train/start", json={**body, "name": "bench"}).status_code == 200
            for line in stream.iter_lines():
                if not line.startswith("data: "):
                    continue
                status = json.loads(line[6:])
                if not status["runs"]:
                    continue
                run = status["runs"][0]
                events.append((time.perf_counter(), run.get("epoch"), run.get("step")))
                steps.add((run.get("epoch"), run.get("step"), len(run["loss"])))
                if not status["busy"]:
                    break
        seconds = events[-1][0] - events[0][0]
        images = len(split.train_x) // cfg.batch_size * cfg.batch_size
        return {"events": len(events), "seconds": seconds, "events_per_second": len(events) / seconds,
                "new_steps_per_second": len(steps) / seconds,
                "images_per_second": images_per_second(run["rows"], images)}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: what `lenet serve` sets)"
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    split = load_split("mnist")
    cfg = TrainConfig(epochs=args.epochs)
    machine = f"{os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
    print(f"{machine}; load average {os.getloadavg()[0]:.2f} (1 min) at the start; {time.strftime('%F %T')}; "
          f"{cfg.epochs} epochs a run")  # fmt: skip
    seconds = throughput(cfg, split, args.repeats)
    images = len(split.train_x) // cfg.batch_size * cfg.batch_size * cfg.epochs
    rate = {}
    for name, runs in seconds.items():
        wall = [images / w for w, _ in runs]
        cpu = [images / c for _, c in runs]
        rate[name] = statistics.median(wall), statistics.median(cpu)
        print(f"{name:>9}: {rate[name][0]:8,.0f} images/s of wall time, {rate[name][1]:8,.0f} per CPU second "
              f"(medians of {args.repeats}; wall: {', '.join(f'{x:,.0f}' for x in wall)})")  # fmt: skip
    a = rate["alone"][0]
    print(
        f"    ratio: {rate['observed'][0] / a:.1%} (wall), {rate['observed'][1] / rate['alone'][1]:.1%} (CPU)"
    )
    sse = watched_by_sse(cfg, split)
    print(f"through the server, an SSE client reading: {sse['events']} events in {sse['seconds']:.1f} s = "
          f"{sse['events_per_second']:.1f} events/s, {sse['new_steps_per_second']:.1f}/s with something new; "
          f"{sse['images_per_second']:,.0f} images/s of the epochs' own time")  # fmt: skip
    print(f"load average {os.getloadavg()[0]:.2f} (1 min) at the end")


if __name__ == "__main__":
    main()
