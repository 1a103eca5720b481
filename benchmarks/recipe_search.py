"""How the improved recipe was chosen and measured (issue 7), in one script for a machine with a GPU.

Phase A, selection on validation only: the draft improved preset ("base") and one-at-a-time variants
of it, each with tuning seeds 100 and 101. These runs never read the test set: their "test" slot holds
the validation split (the first 5,000 training images). Per axis the variant with the best mean final
validation accuracy is kept, and the kept choices are combined into presets/improved.json.

Phase B, measurement: every `lenet ablate` step with seeds 0-4 on MNIST (its first step is the seed
recipe, its last the improved recipe), then both recipes on Fashion-MNIST with seeds 0-2. Each of
these final runs reads the test set once, at its end.

    python benchmarks/recipe_search.py OUT_DIR [--workers 12] [--device cuda] [--budget-s 540]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

from lenet.ablation import ablation_specs
from lenet.config import TrainConfig
from lenet.recipe import PRESETS, recipe_config

DRAFT = {  # the starting point of the search: the draft improved preset, before selection
    "lr": 0.01, "epochs": 40, "batch_size": 128, "init": "kaiming", "optimizer": "adamw",
    "weight_decay": 1e-4, "schedule": "onecycle", "warmup_epochs": 2.0,
    "shift": 2.0, "rotate": 10.0, "scale": 0.1, "label_smoothing": 0.1, "ema": 0.999, "tta": "shifts",
}  # fmt: skip
TUNING_SEEDS = (100, 101)
TUNING_EPOCHS = 40
AXES: dict[str, list[tuple[str, dict]]] = {  # axis -> (variant, settings changed from the base)
    "epochs": [("40", {}), ("60", {"epochs": 60})],
    "lr": [("0.01", {}), ("0.005", {"lr": 0.005})],
    "augmentation": [
        ("shift 2, rotate 10, scale 0.1", {}),
        ("shift 1, rotate 5, scale 0.05", {"shift": 1.0, "rotate": 5.0, "scale": 0.05}),
        ("shift 2 only", {"rotate": 0.0, "scale": 0.0}),
    ],
    "label smoothing": [("0.1", {}), ("0", {"label_smoothing": 0.0})],
    "batch size": [("128", {}), ("64", {"batch_size": 64})],
}

_splits: dict = {}


def train_one(config: dict, out: str, tuning: bool) -> dict:
    import torch

    from lenet.data import Split, load_split
    from lenet.train import resolve_device, train

    torch.set_num_threads(1)
    cfg = TrainConfig.from_dict(config)
    if cfg.dataset not in _splits:
        _splits[cfg.dataset] = load_split(cfg.dataset, None, resolve_device(cfg.device))
    split = _splits[cfg.dataset]
    if tuning:  # the test set stays unread: the final evaluation runs on the validation split
        split = Split(split.train_x, split.train_y, split.val_x, split.val_y, split.val_x, split.val_y)
    t0 = time.process_time()
    lines: list[str] = []
    result = train(cfg, split, Path(out), log=lines.append, resume=True)
    Path(out, "train.log").write_text("\n".join(lines) + "\n")
    return {"out": out, "val_accuracy": result.rows[-1]["val_accuracy"], "cpu_s": time.process_time() - t0}


def run_all(jobs: list[tuple[dict, str, bool]], workers: int, deadline: float) -> list[dict]:
    done = []
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(train_one, *job) for job in jobs]
        for f in as_completed(futures):
            try:
                done.append(f.result())
                print(f"done {done[-1]}", flush=True)
            except Exception as e:  # keep the others going
                print(f"failed: {e!r}", flush=True)
            if time.time() > deadline:
                print("budget spent: cancelling the rest", flush=True)
                for g in futures:
                    g.cancel()
                break
    return done


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--workers", type=int, default=12)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--budget-s", type=float, default=540)
    ap.add_argument("--smoke", action="store_true", help="1-epoch runs, two axes, two final runs")
    args = ap.parse_args()
    axes = dict(list(AXES.items())[:2]) if args.smoke else AXES
    start = time.time()
    epochs = 1 if args.smoke else TUNING_EPOCHS
    base = TrainConfig.from_dict({**DRAFT, "device": args.device, "epochs": epochs})

    # ---- phase A: selection on the validation split
    jobs, keys = [], {}
    for axis, variants in axes.items():
        for name, change in variants:
            cfg = dataclasses.replace(base, **change)
            key = json.dumps(change, sort_keys=True)
            keys.setdefault(key, []).append((axis, name))
            if len(keys[key]) == 1:
                for s in TUNING_SEEDS:
                    out = args.out / "tuning" / f"v{len(keys)}-seed{s}"
                    jobs.append((dataclasses.replace(cfg, seed=s).to_dict(), str(out), True))
    run_all(jobs, args.workers, start + args.budget_s * 0.45)
    val = {}
    for i, key in enumerate(keys, 1):
        accs = []
        for s in TUNING_SEEDS:
            rows = args.out / "tuning" / f"v{i}-seed{s}" / "metrics.jsonl"
            if rows.is_file() and (rows.parent / "result.json").is_file():
                accs.append(json.loads(rows.read_text().splitlines()[-1])["val_accuracy"] * 100)
        val[key] = statistics.fmean(accs) if accs else float("nan")
    chosen, notes = {}, []
    for axis, variants in axes.items():
        scored = [(val[json.dumps(c, sort_keys=True)], name, c) for name, c in variants]
        best = max(scored, key=lambda t: (t[0] == t[0], t[0]))  # NaN (unfinished) never wins
        chosen.update(best[2])
        notes.append(f"{axis}: " + ", ".join(f"{n} {v:.2f}" for v, n, _ in scored) + f" -> {best[1]}")
    improved = json.loads((PRESETS / "improved.json").read_text())
    improved["config"] = {**improved["config"], "epochs": epochs, **chosen}
    TrainConfig.from_dict(improved["config"])
    (PRESETS / "improved.json").write_text(json.dumps(improved, indent=2) + "\n")
    selection = {"validation_accuracy_percent": notes, "chosen": chosen, "seconds": time.time() - start}
    (args.out / "selection.json").write_text(json.dumps(selection, indent=2) + "\n")
    (args.out / "improved.json").write_text(json.dumps(improved, indent=2) + "\n")
    print("\n".join(notes), flush=True)

    # ---- phase B: final runs, the test set read once each
    steps = ablation_specs(args.out / "ablation", list(range(5)), None, "mnist", args.device)
    first, last = steps[0][1], steps[-1][1]
    middle = [s for _, group in steps[1:-1] for s in group]
    fashion = []
    for name in ("improved", "seed"):
        cfg = recipe_config(name, {"device": args.device, "dataset": "fashion-mnist"})
        if name == "improved":
            cfg = dataclasses.replace(cfg, tta="shifts")
        fashion += [
            (dataclasses.replace(cfg, seed=s), args.out / "fashion" / f"{name}-seed{s}") for s in range(3)
        ]
    ordered = [(s.config, s.out) for s in [*last, *first]] + fashion + [(s.config, s.out) for s in middle]
    if args.smoke:
        ordered = [(dataclasses.replace(c, epochs=1), o) for c, o in ordered[:2]]
    run_all([(c.to_dict(), str(o), False) for c, o in ordered], args.workers, start + args.budget_s)
    print(f"total {time.time() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
