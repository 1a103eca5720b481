"""The vectorised sweep backend: many plain-SGD runs trained as one group, in one step per batch.

The group's models live in `lenet.stacked.StackedModels` (the fused Triton step on a GPU, each model on
its own engine on a CPU, the torch group step as the reference); each model has its own learning rate,
init, seed and batch order, and each run ends as if trained alone (to float tolerance) and writes an
ordinary run directory.

The end of an epoch is batched over the group: validation, the dead-network check and, at a run's end,
the test are each one pass of all models over the same images; the checkpoints are copied off the device
once and written by background threads while the next epoch trains. Runs of different lengths share a
group: a run leaves when its epochs are done, and a longer run that continues a shorter one of the group
(`start_from`, as `lenet.run_state.warm_start` does alone) takes over its weights when it ends.
`lenet.runners.local.LocalRunner` uses this for `--backend vectorised`.
"""

from __future__ import annotations

import functools
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from lenet.atomic import write_jsonl
from lenet.config import ConfigError, TrainConfig
from lenet.data import Split, epoch_batches
from lenet.dead import DEAD_CHUNK, death_check
from lenet.engines import STEP_CHUNK, select_engine
from lenet.run_state import (
    Log,
    RunLog,
    State,
    TrainResult,
    new_state,
    row_line,
    run_result,
    save_result,
    start_run,
)
from lenet.runs import RunDir, save_checkpoint
from lenet.stacked import (
    ACTIVATION_BYTES,
    PARAM_NAMES,
    StackedModels,
    eval_batch,
    free_bytes,
    resolve_step,
)
from lenet.training import OnEpoch, OnSteps

__all__ = ["PARAM_NAMES", "StackedModels", "train_group"]
WRITERS = 8  # background threads writing checkpoints (each fsyncs); a run always goes to the same one


@dataclass(eq=False)  # a run is itself: compared by identity, not field by field
class Member:
    """One run of the group."""

    key: int  # its place in the group: which writer thread takes its files
    cfg: TrainConfig
    run: RunDir | None
    log: RunLog
    on_epoch: OnEpoch | None
    start_from: Path | None
    state: State | None = None  # None until it joins
    result: TrainResult | None = None  # set when its epochs are done
    waits_for: Member | None = None  # the shorter run of the group it continues
    say: Log | None = None  # its lines, written in order by its writer thread (set by train_group)
    on_steps: OnSteps | None = None  # told of each chunk of steps (TensorBoard's loss every 50 steps)

    @property
    def epochs_done(self) -> int:
        return len(self.state.rows) if self.state is not None else 0

    @property
    def training(self) -> bool:
        return self.state is not None and self.result is None


class Snapshot:
    """A model's weights copied off the device, shaped like a LeNet's state_dict for `save_checkpoint`."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.tensors


class Writers:
    """Background threads that write the runs' files in order per run, while the device trains on."""

    def __init__(self, threads: int = WRITERS) -> None:
        self.pools = [ThreadPoolExecutor(1, thread_name_prefix="lenet-writer") for _ in range(threads)]
        self.pending: list[Future] = []

    def submit(self, key: int, fn, *args) -> None:
        self.pending.append(self.pools[key % len(self.pools)].submit(fn, *args))

    def check(self) -> None:
        """Raise the first failed write so far (a full disk stops the group within an epoch), and forget the
        writes that are done."""
        for future in self.pending:
            if future.done() and future.exception() is not None:
                raise future.exception()
        self.pending = [f for f in self.pending if not f.done()]

    def drain(self) -> None:
        """Wait for every write so far; the first one that failed is raised here."""
        pending, self.pending = self.pending, []
        for future in pending:
            future.result()

    def close(self) -> None:
        try:
            self.drain()
        finally:
            for pool in self.pools:
                pool.shutdown(wait=True)


def train_group(
    cfgs: list[TrainConfig],
    split: Split,
    outs: list[Path | None],
    logs: list[Log | None] | None = None,
    resume: bool = False,
    command: str | None = None,
    on_epochs: list[OnEpoch | None] | None = None,
    start_from: list[Path | None] | None = None,
    step: str = "auto",
    on_steps: list[OnSteps | None] | None = None,
) -> list[TrainResult]:
    """Train plain-SGD runs as one group; each writes its run directory as `lenet.training.train` does
    (`logs`: where each run's lines are shown besides its train.log; None: nowhere).

    The runs must share a batch size; their lengths and, when resuming, their finished epochs may differ.
    `start_from[i]`: a shorter run of the same settings that run i begins where it ended (a run of this
    group, or one finished before). `step`: "auto", "fused", "torch" or "each" (`lenet.stacked`).
    `on_epochs[i]`, `on_steps[i]`: run i's hooks, as `lenet.training.train`'s.
    """
    if len({c.batch_size for c in cfgs}) > 1:
        raise ConfigError("a vectorised group needs one batch size")
    if not all(c.plain_sgd for c in cfgs):
        raise ConfigError("a vectorised group trains plain SGD only (use lenet.training.train for recipes)")
    writers = Writers()
    members = make_members(cfgs, outs, logs, on_epochs, start_from, writers)
    for m, hook in zip(members, on_steps or [None] * len(members), strict=True):
        m.on_steps = hook
    group = Group(members, split, writers, resume, command, step)
    try:
        group.train()
        writers.drain()
        return [m.result for m in members]
    finally:
        group.drawer.shutdown(wait=True, cancel_futures=True)
        writers.close()  # what was trained is written, whole, even after an error or Ctrl-C


def make_members(cfgs, outs, logs, on_epochs, start_from, writers: Writers) -> list[Member]:
    """The group's runs, each saying its lines through its writer thread (in order with its files)."""
    n = len(cfgs)
    members = []
    for key, (cfg, out, echo, hook, source) in enumerate(
        zip(cfgs, outs, logs or [None] * n, on_epochs or [None] * n, start_from or [None] * n, strict=True)
    ):
        run = RunDir(out) if out is not None else None
        m = Member(key, cfg, run, RunLog(run, echo), hook, source)
        m.say = functools.partial(writers.submit, key, m.log)
        members.append(m)
    return members


class Group:
    """The members' life: join, train epoch by epoch in one stack, leave, hand over to a continuation."""

    def __init__(self, members, split, writers, resume, command, step) -> None:
        self.members, self.split, self.writers = members, split, writers
        self.device = split.train_x.device
        self.resume, self.command, self.step = resume, command, resolve_step(step, self.device)
        self.stack: StackedModels | None = None
        self.stacked: list[Member] = []
        self.n = len(split.train_x)
        self.drawer = ThreadPoolExecutor(1, thread_name_prefix="lenet-batches")
        self.ahead: Future | None = None  # the next epoch's batch orders, being drawn
        by_out = {m.run.path.resolve(): m for m in members if m.run is not None}
        for m in members:
            source = by_out.get(Path(m.start_from).resolve()) if m.start_from is not None else None
            own_checkpoint = resume and m.run is not None and m.run.checkpoint.exists()
            if source is not None and source is not m and not own_checkpoint:
                m.waits_for = source

    def train(self) -> None:
        self.join([m for m in self.members if m.waits_for is None])
        while training := [m for m in self.members if m.training]:
            epoch = min(m.epochs_done for m in training)
            self.train_epoch(epoch, [m for m in training if m.epochs_done == epoch])

    def join(self, members: list[Member]) -> None:
        """Start (or resume, or warm-start) each run; one that has nothing left to train ends at once."""
        for m in members:
            m.state = new_state(m.cfg, self.device)
            start_run(m.cfg, m.run, m.state, "vectorised", self.resume, m.say, self.command, m.start_from)
        self.finish([m for m in members if m.epochs_done >= m.cfg.epochs])

    def stack_of(self, active: list[Member]) -> StackedModels:
        """The stack of `active`'s weights: kept while the same runs train, else built anew."""
        if self.stack is None or self.stacked != active:
            models, lrs = [m.state.model for m in active], [m.cfg.lr for m in active]
            engines = [select_engine(m.cfg, self.device) for m in active] if self.step == "each" else None
            self.stack = StackedModels(models, lrs, self.device, self.step, engines)
            self.stack.attach(models)
            self.stacked = active
        return self.stack

    def batch_orders(self, epoch: int, active: list[Member]) -> torch.Tensor:
        """(M, steps, B): each active run's batches of `epoch`; drawn (and the next epoch's begun) by a
        background thread while the device trains, when the same runs train on."""
        key = (epoch, tuple(m.key for m in active))
        ahead = self.ahead.result() if self.ahead is not None else None
        orders = ahead[1] if ahead is not None and ahead[0] == key else draw_orders(self.n, epoch, active)
        following = (epoch + 1, key[1])
        if all(epoch + 1 < m.cfg.epochs for m in active):
            self.ahead = self.drawer.submit(lambda: (following, draw_orders(self.n, epoch + 1, active)))
        else:
            self.ahead = None
        return orders

    def train_epoch(self, epoch: int, active: list[Member]) -> None:
        stack, split = self.stack_of(active), self.split
        t0 = time.perf_counter()
        batches = self.batch_orders(epoch, active)
        total = torch.zeros(len(active), device=self.device)
        done, told = 0, [(i, m.on_steps) for i, m in enumerate(active) if m.on_steps is not None]
        for chunk in batches.split(STEP_CHUNK, dim=1):
            losses = stack.train_steps(split.train_x, split.train_y, chunk)
            total += losses
            done += chunk.shape[1]
            for i, hook in told:  # each model's summed loss, left on the device
                hook(epoch, done, chunk.shape[1], losses[i])
        losses = (total / batches.shape[1]).tolist()  # the epoch's one host sync
        seconds = (time.perf_counter() - t0) / len(active)  # each model's share of the group's time
        self.end_epoch(stack, active, losses, seconds)
        self.finish([m for m in active if m.epochs_done >= m.cfg.epochs])

    def end_epoch(self, stack: StackedModels, active: list[Member], losses: list[float], seconds: float):
        """Validation and the death check of all `active` at once, then each run's row, line, checkpoint."""
        split = self.split
        self.writers.check()
        val_loss, val_correct = stack.evaluate(split.val_x, split.val_y, eval_batch(stack.m, self.device))
        deaths = death_checks(stack, [m.state for m in active], split.train_x)
        weights = [p.detach().cpu() for p in stack.params]  # one copy off the device per tensor
        for i, (m, loss, vl, vc, dead) in enumerate(
            zip(active, losses, val_loss.tolist(), val_correct.tolist(), deaths, strict=True)
        ):
            row = {
                "epoch": m.epochs_done + 1,
                "train_loss": loss,
                "val_loss": vl,
                "val_accuracy": vc / len(split.val_x),
                "lr": m.cfg.lr,
                "seconds": seconds,
                **dead,
            }
            m.state.rows.append(row)
            m.say(row_line(row))
            if m.run is not None:
                self.writers.submit(m.key, write_epoch, m.run, weights, i, list(m.state.rows), m.state)
            if m.on_epoch is not None:
                m.on_epoch(row, m.state.model)

    def finish(self, done: list[Member]) -> None:
        """Test the runs whose epochs are done, all at once, write their model and result, and let the runs
        that continue them join."""
        if not done:
            return
        stack = StackedModels([m.state.model for m in done], [m.cfg.lr for m in done], self.device, "torch")
        split = self.split
        test = stack.evaluate(split.test_x, split.test_y, eval_batch(stack.m, self.device))
        for m, loss, correct in zip(done, *(t.tolist() for t in test), strict=True):
            m.result = run_result(m.cfg, m.state, split, m.say, (loss, correct))
            if m.run is not None:  # after its checkpoints (the same writer): result.json marks it finished
                self.writers.submit(m.key, save_result, m.run, m.cfg, m.result)
        if continuations := [m for m in self.members if m.waits_for in done]:
            self.writers.drain()  # a warm start reads the finished run's files
            self.join(continuations)


def write_epoch(run: RunDir, weights: list[torch.Tensor], i: int, rows: list[dict], state: State) -> None:
    """A run's checkpoint and metrics after an epoch, as `lenet.run_state.end_epoch` writes them; `weights`
    are the group's stacked tensors copied off the device, model i's slice is this run's."""
    snapshot = Snapshot({name: w[i] for name, w in zip(PARAM_NAMES, weights, strict=True)})
    save_checkpoint(run.checkpoint, snapshot, None, len(rows), rows, None, state.config, state.lr_changes)
    write_jsonl(run.metrics, rows)


def draw_orders(n: int, epoch: int, members: list[Member]) -> torch.Tensor:
    return torch.stack([epoch_batches(n, m.cfg.batch_size, m.cfg.seed, epoch) for m in members])


def death_checks(stack: StackedModels, states: list[State], train_x: torch.Tensor) -> list[dict]:
    """`lenet.dead.death_check` for every model of the stack, scanning the training images for all of them
    at once: each starts at the chunk where it was last seen alive, and leaves once both its layers fired."""
    rows: list[dict | None] = [None] * len(states)
    todo = []
    for i, state in enumerate(states):
        last = state.rows[-1] if state.rows else {}
        if last.get("dead"):  # plain SGD: a dead network stays dead (no scan)
            rows[i], _ = death_check(state.model, last, True, train_x, state.alive_chunk)
        else:
            todo.append(i)
    chunks = train_x.split(DEAD_CHUNK)
    seen1 = torch.zeros(len(states), stack.params[0].shape[1], dtype=torch.bool, device=train_x.device)
    seen2 = torch.zeros(len(states), stack.params[2].shape[1], dtype=torch.bool, device=train_x.device)
    per_call = max(1, free_bytes(train_x.device) // (DEAD_CHUNK * ACTIVATION_BYTES))
    for k in range(len(chunks)):
        if not todo:
            break
        by_chunk: dict[int, list[int]] = {}
        for i in todo:
            by_chunk.setdefault((states[i].alive_chunk + k) % len(chunks), []).append(i)
        for c, ids in by_chunk.items():
            for part in range(0, len(ids), per_call):
                index = torch.tensor(ids[part : part + per_call], device=train_x.device)
                fired1, fired2 = stack.fired(chunks[c], index)
                seen1[index] |= fired1
                seen2[index] |= fired2
        alive = (seen1.any(1) & seen2.any(1)).tolist()
        for i in [i for i in todo if alive[i]]:
            rows[i], states[i].alive_chunk = {"dead": False}, (states[i].alive_chunk + k) % len(chunks)
        todo = [i for i in todo if not alive[i]]
    dead1, dead2 = (~seen1).sum(1).tolist(), (~seen2).sum(1).tolist()
    for i in todo:
        rows[i] = {"dead": True, "dead_units": {"conv1": dead1[i], "conv2": dead2[i]}}
    return rows
