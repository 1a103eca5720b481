"""The GPU engine: the torch engine's step, captured once as a CUDA graph of k steps and replayed.

At this model's size a step is ~20 tiny kernels, so launch overhead, not arithmetic, sets the pace;
a graph replays all k steps with one launch. The batch indices live in a static device buffer that
each call overwrites, so the captured gathers read the new batches. A recipe's gradient and the
evaluation are the torch engine's (select_engine gives recipes on a GPU the torch engine anyway).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lenet.engines.torch_engine import TorchEngine

WARMUP_STEPS = 3  # eager steps on a side stream before capture (cuBLAS/cuDNN workspaces), then undone


@dataclass
class Captured:
    graph: torch.cuda.CUDAGraph
    batches: torch.Tensor  # (k, B) int64 on the device (or a view of it), refilled before every replay
    total: torch.Tensor  # the summed losses of the last replay (one element)
    keep: tuple = ()  # what the graph reads besides the model and data: it must live as long as the graph


class CudaGraphEngine(TorchEngine):
    """The torch engine, with its plain-SGD steps captured as CUDA graphs (gradient and evaluate: its own).
    Off CUDA the steps run eagerly (`eager`); a subclass captures other steps (`capture`)."""

    name = "cuda-graph"

    def __init__(self) -> None:
        self.captured: dict[tuple, Captured] = {}

    def eager(self, model: nn.Module, lr: float, x: torch.Tensor, y: torch.Tensor, b: torch.Tensor):
        return super().sgd_steps(model, lr, x, y, b)

    def capture(self, model: nn.Module, lr: float, x: torch.Tensor, y: torch.Tensor, shape) -> Captured:
        return capture(model, lr, x, y, shape)

    def sgd_steps(
        self, model: nn.Module, lr: float, x: torch.Tensor, y: torch.Tensor, batches: torch.Tensor
    ) -> torch.Tensor:
        """One SGD step per row of `batches` (k, B); returns the sum of the k batch losses, on the device."""
        if x.device.type != "cuda":
            return self.eager(model, lr, x, y, batches)
        key = (id(model), x.data_ptr(), y.data_ptr(), tuple(batches.shape), lr)
        if key not in self.captured:
            self.captured[key] = self.capture(model, lr, x, y, batches.shape)
        c = self.captured[key]
        c.batches.copy_(batches, non_blocking=True)
        c.graph.replay()
        return c.total.clone().reshape(())  # the next replay overwrites c.total


def steps(
    model: nn.Module, lr: float, x: torch.Tensor, y: torch.Tensor, batches: torch.Tensor, total: torch.Tensor
) -> None:
    """The torch engine's loop, with gradients in fixed buffers zeroed in place, as a graph needs."""
    params = list(model.parameters())
    for idx in batches:
        loss = F.cross_entropy(model(x[idx]), y[idx])
        for p in params:
            if p.grad is not None:
                p.grad.zero_()
        loss.backward()
        with torch.no_grad():
            torch._foreach_add_(params, [p.grad for p in params], alpha=-lr)  # torch.optim.SGD's CUDA path
        total += loss.detach()


def capture(model: nn.Module, lr: float, x: torch.Tensor, y: torch.Tensor, shape: torch.Size) -> Captured:
    model.train()
    batches = torch.zeros(shape, dtype=torch.int64, device=x.device)
    total = torch.zeros((), device=x.device)
    saved = [p.detach().clone() for p in model.parameters()]
    side = torch.cuda.Stream(device=x.device)
    side.wait_stream(torch.cuda.current_stream(x.device))
    with torch.cuda.stream(side):  # warm-up steps change the weights: restored below
        steps(model, lr, x, y, batches[:1].expand(WARMUP_STEPS, -1), total)
    torch.cuda.current_stream(x.device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        total.zero_()
        steps(model, lr, x, y, batches, total)
    with torch.no_grad():
        for p, s in zip(model.parameters(), saved, strict=True):
            p.copy_(s)
    return Captured(graph, batches, total)
