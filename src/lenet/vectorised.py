"""The vectorised sweep backend: M plain-SGD runs trained as one group, in one step per batch.

Model m's parameters are slice m of stacked tensors; its batch is channel m of the input, so one
grouped conv (groups=M) runs all M networks and autograd keeps their gradients apart. Each model
has its own learning rate, init scale, seed and batch order; each run ends as if trained alone (to
float tolerance) and writes an ordinary run directory. Plain SGD only. Measured fastest on a GPU
(docs/speed.md); `lenet.runners.local.LocalRunner` uses it for `--backend vectorised`.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lenet.config import TrainConfig
from lenet.data import Split, epoch_batches
from lenet.engines import STEP_CHUNK
from lenet.engines.torch_engine import evaluate
from lenet.model import SHAPE, LeNet
from lenet.run_state import Log, RunLog, TrainResult, end_epoch, finish_run, new_state, start_run
from lenet.runs import RunDir
from lenet.training import OnEpoch

PARAM_NAMES = tuple(SHAPE.param_shapes())  # conv1.weight, conv1.bias, conv2.weight, ... (the model's order)


class StackedModels:
    """M LeNets as six stacked tensors, each with a leading model axis."""

    def __init__(self, models: list[LeNet], lrs: list[float], device: torch.device | str) -> None:
        self.m = len(models)
        self.params = [
            torch.stack([dict(mod.named_parameters())[n].detach() for mod in models])
            .to(device)
            .requires_grad_()
            for n in PARAM_NAMES
        ]
        self.lrs = torch.tensor(lrs, dtype=torch.float32, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, M, 28, 28), channel m is model m's batch -> logits (B, M, 10)."""
        w1, b1, w2, b2, wf, bf = self.params
        s, m, b = SHAPE, self.m, x.shape[0]
        c1, c2, k, side = s.conv1, s.conv2, s.kernel, s.conv2_side
        h = F.conv2d(x, w1.view(m * c1, 1, k, k), b1.view(-1), groups=m)  # (B, M*4, 24, 24)
        h = F.max_pool2d(F.relu(h), s.pool)  # (B, M*4, 12, 12)
        # conv2 as im2col + one batched matmul over models: a grouped conv here runs one tiny kernel per
        # model on cuDNN (1,000 launches a step for 1,000 models) and a slow reference loop on the CPU.
        cols = F.unfold(h, k).view(b, m, c1 * k * k, side * side)  # (B, M, 100, 8*8)
        h = torch.einsum("bmkp,mck->bmcp", cols, w2.view(m, c2, c1 * k * k)) + b2.view(1, m, c2, 1)
        h = F.relu(h).reshape(b, m * c2, side, side)  # (B, M*12, 8, 8)
        h = F.max_pool2d(h, s.pool).reshape(b, m, s.features)  # (B, M, 192), per model channel-major
        return torch.einsum("bmk,mjk->bmj", h, wf) + bf  # (B, M, 10)

    def train_steps(self, x: torch.Tensor, y: torch.Tensor, batches: torch.Tensor) -> torch.Tensor:
        """batches: (M, k, B) indices, model m's k batches. Returns each model's summed losses, (M,)."""
        batches = batches.to(x.device)
        total = torch.zeros(self.m, device=x.device)
        for step in range(batches.shape[1]):
            idx = batches[:, step]  # (M, B)
            xb = x[idx.T, 0]  # (B, M, 28, 28)
            yb = y[idx.T]  # (B, M)
            logits = self.forward(xb)
            losses = F.cross_entropy(logits.flatten(0, 1), yb.flatten(), reduction="none").view_as(yb).mean(0)
            grads = torch.autograd.grad(losses.sum(), self.params)  # model m's loss only reaches slice m
            with torch.no_grad():
                for p, g in zip(self.params, grads, strict=True):
                    p -= self.lrs.view(-1, *[1] * (p.dim() - 1)) * g
            total += losses.detach()
        return total

    @torch.no_grad()
    def copy_into(self, i: int, model: LeNet) -> LeNet:
        """Write model i's weights into `model` (an ordinary LeNet, for validation and checkpoints)."""
        for p, stacked in zip(model.parameters(), self.params, strict=True):
            p.copy_(stacked[i])
        return model


def train_group(
    cfgs: list[TrainConfig],
    split: Split,
    outs: list[Path | None],
    logs: list[Log | None] | None = None,
    resume: bool = False,
    command: str | None = None,
    on_epochs: list[OnEpoch | None] | None = None,
) -> list[TrainResult]:
    """Train plain-SGD runs as one group; each writes its run directory as `lenet.training.train` does
    (`logs`: where each run's lines are shown besides its train.log; None: nowhere).

    The runs must share epochs and batch size and, when resuming, have finished the same number of epochs.
    """
    if len({(c.epochs, c.batch_size) for c in cfgs}) != 1:
        raise ValueError("a vectorised group needs one epochs and batch size")
    if not all(c.plain_sgd for c in cfgs):
        raise ValueError("a vectorised group trains plain SGD only (use lenet.training.train for recipes)")
    runs = [RunDir(o) if o is not None else None for o in outs]
    lines = [RunLog(r, e) for r, e in zip(runs, logs or [None] * len(runs), strict=True)]
    try:
        return train_members(cfgs, split, runs, lines, resume, command, on_epochs)
    finally:
        for line in lines:
            line.close()


def train_members(
    cfgs: list[TrainConfig],
    split: Split,
    runs: list[RunDir | None],
    logs: list[RunLog],
    resume: bool,
    command: str | None,
    on_epochs: list[OnEpoch | None] | None,
) -> list[TrainResult]:
    """`train_group`, once each run's log is open."""
    device = split.train_x.device
    states = [new_state(c, device) for c in cfgs]
    members = list(zip(cfgs, runs, states, logs, strict=True))
    starts = {start_run(c, r, s, "vectorised", resume, lg, command) for c, r, s, lg in members}
    if len(starts) != 1:
        raise ValueError("a vectorised group must resume from one epoch")
    stack = StackedModels([s.model for s in states], [c.lr for c in cfgs], device)  # kept across epochs
    for epoch in range(starts.pop(), cfgs[0].epochs):
        t0 = time.perf_counter()
        n = len(split.train_x)
        batches = torch.stack([epoch_batches(n, c.batch_size, c.seed, epoch) for c in cfgs])  # (M, steps, B)
        total = torch.zeros(len(cfgs), device=device)
        for chunk in batches.split(STEP_CHUNK, dim=1):
            total += stack.train_steps(split.train_x, split.train_y, chunk)
        losses = (total / batches.shape[1]).tolist()
        seconds = (time.perf_counter() - t0) / len(cfgs)  # each model's share of the group's time
        for i, (cfg, state) in enumerate(zip(cfgs, states, strict=True)):
            stack.copy_into(i, state.model)
            end_epoch(runs[i], state, evaluate, split, losses[i], cfg.lr, seconds, logs[i])
            if on_epochs is not None and on_epochs[i] is not None:
                on_epochs[i](state.rows[-1], state.model)
    return [finish_run(c, r, s, split, lg) for c, r, s, lg in members]
