"""Every GPU measurement of issue 22 in one call of at most 8 minutes, printed as one table with its goals.

Each part runs in its own process with its own timeout, so a slow part is reported as "> N s (timed out)",
a crashing one as failed (a bad kernel poisons only its own CUDA context), and the table still comes out.
In the order they run (timeouts in ROW_TIMEOUTS; together under --budget):
  steps      the many-model training step, seed protocol (batch 100, 550 steps an epoch, lr 0.01, seeds
             0..M-1), at M = 100 and 1,000: the fused Triton step and the torch reference (StackedModels),
             time-bounded, in model-epochs/s, the share of the float32 peak, their agreement after 20 steps
             from one start; and the fused step at M = 1 over the 20-epoch protocol (11,000 steps)
  train      `lenet train --device cuda`: the whole process and its steps (metrics.jsonl's seconds)
  train-triton  `lenet train --device cuda --engine triton`: the fused step at M = 1, as CUDA graphs
  sweep      `lenet sweep --seeds 1000 --backend vectorised --device cuda`: whole process, mean test acc
  reproduce  `lenet reproduce --seeds 100 --backend vectorised --device cuda`: whole process, verdicts
Later parts may find the kernels the steps part compiled in Triton's on-disk cache, as a second run would.

    python benchmarks/bench_gpu.py [--data-dir DIR] [--out FILE.md] [--peak-tflops 67] [--smoke]

--out also writes the table as Markdown to FILE.md, the raw numbers to FILE.json and every part's output
to FILE-logs/. --smoke runs every part at tiny sizes on the CPU (the fused step through TRITON_INTERPRET=1).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from bench_many import (
    IMAGES,
    STEPS,
    fused_unavailable,
    measure_rate,
    model_epoch_flop,
    seed_batches,
    seed_stack,
    step_function,
    test_accuracies,
)

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 20
# Seconds per part, each above its goal; 465 in all, and --budget cuts the last ones short if need be.
ROW_TIMEOUTS = {"steps": 110, "train": 25, "train-triton": 40, "sweep": 110, "reproduce": 180}
SMOKE_TIMEOUT = 1200  # s per part on a shared 2-core CPU; no total budget in smoke mode
CPU_REFERENCE = (0.9515, 0.9538)  # the CPU 100-seed reference interval of the seed protocol's mean test acc
AGREEMENT = 1e-4  # max |param difference| after the check's steps that still counts as float32 rounding


@dataclass(frozen=True)
class Sizes:
    models: tuple[int, ...]  # group sizes whose rates are measured
    steps: int  # steps timed at most per rate (550: one epoch)
    chunk: int  # steps per call, as the vectorised backend calls (STEP_CHUNK)
    check_models: int  # the agreement check: models and steps from one start
    check_steps: int
    single_steps: int  # the M = 1 protocol: steps at most (11,000: 20 epochs)
    fused_s: float  # time bounds per rate (s); the rest is extrapolated
    reference_s: float
    single_s: float


FULL = Sizes((100, 1000), STEPS, 50, 100, 20, EPOCHS * STEPS, 8.0, 5.0, 6.0)
SMOKE = Sizes((2, 3), 3, 3, 2, 3, 3, 600.0, 600.0, 600.0)


def commands(smoke: bool) -> dict[str, list[str]]:
    """The lenet commands timed whole (without --out and --data-dir, which are added)."""
    if smoke:
        cpu = ["--backend", "vectorised", "--device", "cpu"]
        return {
            "train": ["train", "--epochs", "1", "--device", "cpu"],
            "sweep": ["sweep", "--seeds", "2", "--epochs", "1", *cpu],
            "reproduce": ["reproduce", "--seeds", "1", "--epochs", "1", "--long-epochs", "2", *cpu],
        }
    cuda = ["--backend", "vectorised", "--device", "cuda"]
    return {
        "train": ["train", "--device", "cuda"],
        "train-triton": ["train", "--device", "cuda", "--engine", "triton"],
        "sweep": ["sweep", "--seeds", "1000", *cuda],
        "reproduce": ["reproduce", "--seeds", "100", *cuda],
    }


# ---------------------------------------------------------------- the parts run in child processes


def steps_part(args: argparse.Namespace, save: Callable[[dict], None]) -> None:
    """The many-model step rates, the agreement check and the M = 1 protocol; saved after each one, so a
    timeout keeps what was measured."""
    from lenet.data import load_split

    sizes, device = (SMOKE, torch.device("cpu")) if args.smoke else (FULL, torch.device("cuda"))
    raw: dict = {"fused_unavailable": fused_unavailable(device)}
    split = load_split(data_dir=args.data_dir or None, device=device)
    x, y, n = split.train_x, split.train_y, len(split.train_x)
    kinds = ["reference"] if raw["fused_unavailable"] else ["fused", "reference"]

    def attempt(key: str, fn: Callable[[], dict]) -> None:
        try:
            raw[key] = fn()
        except Exception as e:  # recorded in its row; the traceback goes to the part's log
            traceback.print_exc()
            raw[key] = {"error": f"{type(e).__name__}: {e}".splitlines()[0][:200]}
        save(raw)

    if "fused" in kinds:  # first: it also compiles the kernel before the fused rates are timed
        attempt("agreement", lambda: agreement(x, y, n, sizes.check_models, sizes.check_steps))
    for kind in kinds:
        for m in sizes.models:
            bound = sizes.fused_s if kind == "fused" else sizes.reference_s

            def rate(kind=kind, m=m, bound=bound) -> dict:
                stack = seed_stack(m, device)
                batches = seed_batches(n, m, 1)[:, : sizes.steps].to(device)
                return asdict(measure_rate(step_function(kind, stack), x, y, batches, sizes.chunk, bound))

            attempt(f"{kind} {m}", rate)
    if "fused" in kinds:
        attempt("fused 1", lambda: single_protocol(split, sizes))


def agreement(x: torch.Tensor, y: torch.Tensor, n: int, m: int, steps: int) -> dict:
    """Fused and reference steps from the same start over the same batches: max |differences|."""
    batches = seed_batches(n, m, 0)[:, :steps].to(x.device)
    fused, reference = seed_stack(m, x.device), seed_stack(m, x.device)
    loss_f = step_function("fused", fused)(x, y, batches)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # cuDNN may take TF32 for conv1
        loss_r = step_function("reference", reference)(x, y, batches)
    diffs = [(p - q).abs().max() for p, q in zip(fused.params, reference.params, strict=True)]
    return {
        "models": m,
        "steps": steps,
        "max_param_diff": torch.stack(diffs).max().item(),  # NaN stays NaN
        "max_loss_sum_diff": (loss_f - loss_r).abs().max().item(),
    }


def single_protocol(split, sizes: Sizes) -> dict:
    """The fused step at M = 1 over seed 0's 20 epochs of batches (time-bounded, then extrapolated)."""
    device, n = split.train_x.device, len(split.train_x)
    stack = seed_stack(1, device)
    batches = torch.cat([seed_batches(n, 1, e) for e in range(EPOCHS)], dim=1)[:, : sizes.single_steps]
    step = step_function("fused", stack)
    r = measure_rate(step, split.train_x, split.train_y, batches.to(device), sizes.chunk, sizes.single_s)
    out = {**asdict(r), "protocol_seconds": r.seconds * EPOCHS * STEPS / r.steps}
    if r.steps == EPOCHS * STEPS:  # a sanity check: the whole protocol (after the warm-up call's 50 steps)
        out["test_accuracy"] = test_accuracies(stack, split)[0].item()
    return out


PARTS = {"steps": steps_part}


# ---------------------------------------------------------------- processes, with their timeouts


@dataclass
class Process:
    seconds: float
    timeout: float
    timed_out: bool
    returncode: int | None
    log: str  # the path of its stdout and stderr
    output: str = field(repr=False, default="")

    def failure(self) -> str | None:
        """How the process did not finish, as a table cell; None if it did."""
        if self.timed_out:
            return f"> {self.timeout:.0f} s (timed out)"
        if self.returncode != 0:
            return f"failed (exit {self.returncode}) after {self.seconds:.1f} s"
        return None

    def record(self) -> dict:
        """Its numbers for the JSON (the output is in its log)."""
        return {k: v for k, v in asdict(self).items() if k != "output"}

    def last_line(self) -> str:
        lines = [s for s in self.output.splitlines() if s.strip()]
        return lines[-1][:160] if lines else ""


def run_process(cmd: list[str], timeout: float, log: Path, env: dict[str, str]) -> Process:
    """Run `cmd` in its own process group, killed whole at `timeout`; wall seconds from start to exit."""
    with log.open("w") as f:
        t0 = time.perf_counter()
        p = subprocess.Popen(
            cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True
        )
        try:
            p.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)  # the group this Popen started, nothing else
            p.wait()
            timed_out = True
        seconds = time.perf_counter() - t0
    return Process(seconds, timeout, timed_out, p.returncode, str(log), log.read_text(errors="replace"))


class Runner:
    """Starts the parts and the lenet commands, each with min(its timeout, what is left of the budget)."""

    def __init__(self, args: argparse.Namespace, logs: Path, work: Path, start: float) -> None:
        self.args, self.logs, self.work = args, logs, work
        self.deadline = start + args.budget
        path = [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}  # this checkout's lenet

    def timeout(self, name: str) -> float:
        if self.args.smoke:
            return SMOKE_TIMEOUT
        return max(1.0, min(ROW_TIMEOUTS[name], self.deadline - time.perf_counter()))

    def data_flags(self) -> list[str]:
        return ["--data-dir", self.args.data_dir] if self.args.data_dir else []

    def part(self, name: str) -> tuple[Process, dict]:
        """bench_gpu.py --part NAME in a child; its raw dict (what it saved before it ended)."""
        result = self.work / f"{name}.json"
        cmd = [sys.executable, __file__, "--part", name, "--part-result", str(result), *self.data_flags()]
        env = self.env
        if self.args.smoke:
            cmd.append("--smoke")
            env = {**env, "TRITON_INTERPRET": "1"}  # the fused step's kernels on CPU tensors
        proc = run_process(cmd, self.timeout(name), self.logs / f"{name}.log", env)
        return proc, json.loads(result.read_text()) if result.exists() else {}

    def lenet(self, name: str, cmd: list[str]) -> tuple[Process, Path]:
        """`python -m lenet.cli CMD --out DIR`; DIR is returned for its files."""
        out = self.work / name
        full = [sys.executable, "-m", "lenet.cli", *cmd, "--out", str(out), *self.data_flags()]
        return run_process(full, self.timeout(name), self.logs / f"{name}.log", self.env), out


# ---------------------------------------------------------------- the table


@dataclass
class Row:
    what: str
    value: str  # as shown
    goal: str = ""
    met: str = ""  # met, not met, or empty (no goal) / n/a
    note: str = ""


class Table:
    def __init__(self, smoke: bool) -> None:
        self.rows: list[Row] = []
        self.smoke = smoke
        self.shown = 0  # rows already shown by progress()

    def add(self, what: str, value: str, goal: str = "", ok: bool | None = None, note: str = "") -> None:
        met = "" if not goal else "n/a (smoke)" if self.smoke else "met" if ok else "not met"
        self.rows.append(Row(what, value, goal, met, note))

    def progress(self) -> None:
        """The rows added since the last call, one line each on stderr: a terminal sees the table fill in."""
        for r in self.rows[self.shown :]:
            print(f"  {r.what}: {r.value}" + (f" ({r.met})" if r.met else ""), file=sys.stderr, flush=True)
        self.shown = len(self.rows)

    def markdown(self) -> str:
        lines = ["| what | measured | goal | met | notes |", "|---|---:|---|---|---|"]
        for r in self.rows:
            cells = (r.what, r.value, r.goal, r.met, r.note)
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        return "\n".join(lines)


def seconds_or_limit(p: Process) -> tuple[str, float]:
    """A process's wall time as a cell, and as a number (the timeout when it timed out)."""
    return (p.failure() or f"{p.seconds:.1f} s"), p.seconds


def step_rows(t: Table, raw: dict, proc: Process, flop: int, peak: float, sizes: Sizes) -> None:
    """The agreement, the rates, the implied 1,000 x 20 time and share of the peak, the ratio, M = 1."""
    why, big, peak_flops = raw.get("fused_unavailable"), sizes.models[-1], peak * 1e12
    rates: dict[str, float] = {}

    def add(key: str, what: str, goal: str, cell: Callable[[dict], tuple[str, bool, str]]) -> None:
        """One measurement's row: cell(raw[key]) -> (value, goal met, note) when it was measured."""
        r = raw.get(key)
        if why and not key.startswith("reference"):
            first = not any(row.value == "not measured" for row in t.rows)
            t.add(what, "not measured", goal, False, why if first else "the fused step is unavailable")
        elif r is None:  # the part ended first
            t.add(
                what, proc.failure() or "not reached", goal, False, proc.last_line() if proc.failure() else ""
            )
        elif "error" in r:
            t.add(what, "failed", goal, False, r["error"])
        else:
            value, ok, note = cell(r)
            t.add(what, value, goal, ok, note)

    def agreement_cell(r: dict) -> tuple[str, bool, str]:
        d = r["max_param_diff"]
        loss = r["max_loss_sum_diff"]
        note = f"{r['models']} models x {r['steps']} steps from one start; loss sums differ by {loss:.2e}"
        return f"{d:.2e}", d <= AGREEMENT, note

    def rate_cell(key: str) -> Callable[[dict], tuple[str, bool, str]]:
        def cell(r: dict) -> tuple[str, bool, str]:
            rate = rates[key] = r["models"] * r["steps"] / STEPS / r["seconds"]
            share = 100 * rate * flop / peak_flops
            note = f"{r['steps']} steps in {r['seconds']:.2f} s; {figure(share)}% of the float32 peak"
            return f"{figure(rate)} model-epochs/s", rate >= 500, note

        return cell

    def single_cell(r: dict) -> tuple[str, bool, str]:
        whole = r["steps"] == EPOCHS * STEPS
        note = (
            f"test acc {100 * r['test_accuracy']:.2f}%" if whole else f"extrapolated from {r['steps']} steps"
        )
        return f"{r['protocol_seconds']:,.2f} s", True, f"{note}; lenet train's steps goal: <= 1.0 s"

    add("agreement", "fused vs reference: max abs param diff", f"<= {AGREEMENT:.0e}", agreement_cell)
    for kind in ("fused", "reference"):
        for m in sizes.models:
            goal = ">= 500 model-epochs/s" if kind == "fused" and m == big else ""
            add(f"{kind} {m}", f"{kind} step, {m:,} models", goal, rate_cell(f"{kind} {m}"))
    fused, reference = rates.get(f"fused {big}"), rates.get(f"reference {big}")
    limit = f"{20_000 * flop / peak_flops:.1f} s at {peak:g} TFLOP/s"
    what = f"1,000 seeds x 20 epochs at the fused {big:,}-model rate"
    if fused is None:
        t.add(what, "not measured", "<= 40 s", False, f"the float32 limit: {limit}")
    else:
        share = f"{figure(100 * fused * flop / peak_flops)}% of the float32 limit ({limit})"
        t.add(what, f"{figure(20_000 / fused)} s", "<= 40 s", 20_000 / fused <= 40, share)
    ratio = f"{figure(fused / reference)}x" if fused and reference else "not measured"
    t.add(f"fused / reference at {big:,} models", ratio)
    add("fused 1", f"fused step, 1 model, {EPOCHS} epochs ({EPOCHS * STEPS:,} steps)", "", single_cell)


def figure(v: float) -> str:
    """A rate, time or share with the digits that mean something: 41.0, 523, 12,345, 0.0031."""
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.1f}" if abs(v) >= 1 else f"{v:.2g}"


def train_rows(t: Table, label: str, proc: Process, out: Path) -> dict:
    raw = proc.record()
    metrics, result, config = out / "metrics.jsonl", out / "result.json", out / "config.json"
    steps, note = None, ""
    if proc.failure() is None and metrics.exists() and result.exists():
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        steps = sum(r["seconds"] for r in rows)
        acc = json.loads(result.read_text())["test_accuracy"]
        engine = json.loads(config.read_text()).get("engine", "?") if config.exists() else "?"
        note = f"engine {engine}, {len(rows)} epoch{'s' * (len(rows) != 1)}, test acc {100 * acc:.2f}%"
        raw |= {"steps_seconds": steps, "test_accuracy": acc, "engine": engine}
    t.add(f"`{label}`: steps (metrics' seconds, validation excluded)",
          f"{steps:.2f} s" if steps is not None else proc.failure() or "no metrics", "<= 1.0 s",
          steps is not None and steps <= 1.0, note)  # fmt: skip
    value, seconds = seconds_or_limit(proc)
    t.add(f"`{label}`: whole process", value, "<= 4 s", proc.failure() is None and seconds <= 4,
          proc.last_line() if proc.failure() else "")  # fmt: skip
    return raw


def finished_runs(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*/result.json"))]


def planned_runs(output: str, marker: str) -> str:
    """The run count a command announced ("... = 1000 runs in", "analysis: 700 runs in"), or '?'."""
    for line in output.splitlines():
        if marker in line and " runs in " in line:
            return line.split(" runs in ")[0].split()[-1]
    return "?"


def sweep_rows(t: Table, label: str, proc: Process, out: Path) -> dict:
    results = finished_runs(out)
    accs = torch.tensor([r["test_accuracy"] for r in results], dtype=torch.float64)
    done = f"{len(results)} of {planned_runs(proc.output, 'sweep:')} runs finished"
    value, seconds = seconds_or_limit(proc)
    t.add(f"`{label}`: whole process", value, "<= 90 s", proc.failure() is None and seconds <= 90,
          f"{done}; {proc.last_line()}" if proc.failure() else "")  # fmt: skip
    lo, hi = CPU_REFERENCE
    goal = f"in {100 * lo:.2f}-{100 * hi:.2f}% (CPU, 100 seeds)"
    if len(accs):
        mean = accs.mean().item()
        sd = f", sd {100 * accs.std().item():.2f}" if len(accs) > 1 else ""
        t.add("its runs' mean test accuracy", f"{100 * mean:.2f}%", goal, lo <= mean <= hi,
              f"n = {len(accs)}{sd}; {done}")  # fmt: skip
    else:
        t.add("its runs' mean test accuracy", "no finished run", goal, False, done)
    return proc.record() | {"accuracies": accs.tolist()}


def reproduce_rows(t: Table, label: str, proc: Process, out: Path) -> tuple[dict, list[str]]:
    verdicts = [line for line in proc.output.splitlines() if line.startswith("Claim ")]
    done = f"{len(finished_runs(out))} of {planned_runs(proc.output, 'analysis:')} runs finished"
    value, seconds = seconds_or_limit(proc)
    short = "; ".join(v.split(". ")[0] if len(v.split(". ")[0]) < 60 else v.split(" (")[0] for v in verdicts)
    note = f"{done}; {proc.last_line()}" if proc.failure() else short
    t.add(f"`{label}`: whole process", value, "<= 180 s", proc.failure() is None and seconds <= 180, note)
    return proc.record() | {"verdicts": verdicts}, verdicts


# ---------------------------------------------------------------- main


def versions(smoke: bool) -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    device = "cpu (smoke)" if smoke else torch.cuda.get_device_name()
    return {
        "device": device,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version,
    }


def check_data(data_dir: str) -> None:
    """One line and exit before any part starts when MNIST is not where the parts will look for it."""
    from lenet.data import DataError, load_split

    try:
        load_split(data_dir=data_dir or None)
    except DataError as e:
        raise SystemExit(f"bench_gpu: {e}") from None


def header(info: dict, flop: int, peak: float, smoke: bool) -> list[str]:
    title = "bench_gpu.py --smoke: every row at tiny sizes on the CPU" if smoke else "benchmarks/gpu.sh"
    limit = 20_000 * flop / (peak * 1e12)
    return [
        f"## {title}, {time.strftime('%F %T %Z')}",
        "",
        f"{info['device']}; torch {info['torch']} (CUDA {info['cuda']}), triton {info['triton']}; "
        f"float32 peak {peak:g} TFLOP/s (--peak-tflops)",
        f"one model-epoch = {flop / 1e9:.2f} GFLOP ({flop // IMAGES // 2:,} multiply-adds per image, forward "
        f"and backward, x 2, x 55,000 images); 1,000 seeds x {EPOCHS} epochs = "
        f"{20_000 * flop / 1e12:,.0f} TFLOP = {limit:.1f} s at the peak",
        "",
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="", help="MNIST folder (default: $LENET_DATA_DIR, else the cache)")
    p.add_argument("--out", type=Path, help="also write the table to this .md file, raw numbers beside it")
    peak = "the GPU's float32 peak, TFLOP/s (default 67: an H200 SXM's FP32 rate without tensor cores)"
    p.add_argument("--peak-tflops", type=float, default=67.0, help=peak)
    budget = "seconds for everything; the last parts get what is left (default: 460, gpu.sh under 8 minutes)"
    p.add_argument("--budget", type=float, default=460.0, help=budget)
    p.add_argument("--smoke", action="store_true", help="every row at tiny sizes on the CPU")
    p.add_argument("--part", choices=sorted(PARTS), help=argparse.SUPPRESS)  # a child's job
    p.add_argument("--part-result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.part:
        PARTS[args.part](args, lambda raw: args.part_result.write_text(json.dumps(raw)))
        return
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit(f"bench_gpu: no CUDA device visible to torch {torch.__version__} (try --smoke)")
    t_start = time.perf_counter()
    check_data(args.data_dir)
    info, flop = versions(args.smoke), model_epoch_flop()
    top = header(info, flop, args.peak_tflops, args.smoke)
    print("\n".join(top), flush=True)
    if args.out:
        logs = args.out.with_name(args.out.stem + "-logs")
        logs.mkdir(parents=True, exist_ok=True)
    else:
        logs = Path(tempfile.mkdtemp(prefix="bench_gpu-logs-"))
    with tempfile.TemporaryDirectory(prefix="bench_gpu-") as work:
        raw, table, verdicts = measure(args, Runner(args, logs, Path(work), t_start), flop)
    total = time.perf_counter() - t_start
    raw |= {"versions": info, "rows": [asdict(r) for r in table.rows], "total_seconds": total}
    rest = [table.markdown(), "", *[f"- {v}" for v in verdicts], *([""] if verdicts else [])]
    budget = "no budget in smoke mode" if args.smoke else f"budget {args.budget:g} s"
    rest.append(f"whole table: {total:.0f} s ({budget}); each part's output in {logs}")
    print("\n" + "\n".join(rest))
    if args.out:
        args.out.write_text("\n".join(top + rest) + "\n")
        args.out.with_suffix(".json").write_text(json.dumps(raw, indent=1) + "\n")
        print(f"wrote {args.out} and {args.out.with_suffix('.json')}")


def measure(args: argparse.Namespace, runner: Runner, flop: int) -> tuple[dict, Table, list[str]]:
    """Every part in turn, its rows added as it ends: (raw numbers, the table, reproduce's verdicts)."""
    table, cmds, sizes = Table(args.smoke), commands(args.smoke), SMOKE if args.smoke else FULL
    label = {k: "lenet " + " ".join(v) for k, v in cmds.items()}
    raw: dict = {"flop_per_model_epoch": flop, "peak_tflops": args.peak_tflops, "smoke": args.smoke,
                 "budget": args.budget, "timeouts": ROW_TIMEOUTS, "commands": label}  # fmt: skip
    proc, raw["steps"] = runner.part("steps")
    raw["steps process"] = proc.record()
    step_rows(table, raw["steps"], proc, flop, args.peak_tflops, sizes)
    table.progress()
    proc, out = runner.lenet("train", cmds["train"])
    raw["train"] = train_rows(table, label["train"], proc, out)
    table.progress()
    if args.smoke:  # a whole epoch of the interpreted kernels would take hours
        table.add(
            "lenet train --engine triton", "n/a on the CPU", note="the fused step needs CUDA (or hours)"
        )
    else:  # the fused step at M = 1, captured as CUDA graphs (its first call compiles the kernels)
        proc, out = runner.lenet("train-triton", cmds["train-triton"])
        raw["train-triton"] = train_rows(table, label["train-triton"], proc, out)
    table.progress()
    proc, out = runner.lenet("sweep", cmds["sweep"])
    raw["sweep"] = sweep_rows(table, label["sweep"], proc, out)
    table.progress()
    proc, out = runner.lenet("reproduce", cmds["reproduce"])
    raw["reproduce"], verdicts = reproduce_rows(table, label["reproduce"], proc, out)
    table.progress()
    return raw, table, verdicts


if __name__ == "__main__":
    main()
