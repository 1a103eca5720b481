"""The fused Triton step of the vectorised backend (`lenet.engines.triton_step`) for one model: `lenet train
--engine triton`. On CUDA, k steps are captured once as a CUDA graph and replayed, as the cuda-graph engine
does with the torch engine's steps; under Triton's interpreter (TRITON_INTERPRET=1, the CPU) they run
directly. A recipe's gradient and the evaluation are the torch engine's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lenet.engines.torch_engine import TorchEngine

WARMUP_STEPS = 1  # one eager call before capture compiles the kernels; its change to the weights is undone


@dataclass
class Captured:
    graph: torch.cuda.CUDAGraph
    batches: torch.Tensor  # (1, k, B) int64 on the device, refilled before every replay
    total: torch.Tensor  # (1,), the summed losses of the last replay
    lrs: torch.Tensor  # (1,): read by the graph at every replay, so it must live as long as the graph


def stacked(model: nn.Module) -> list[torch.Tensor]:
    """The model's parameters as a group of one: views, so the kernels' updates move the model itself."""
    return [p.data.unsqueeze(0) for p in model.parameters()]


class TritonEngine(TorchEngine):
    """Plain-SGD steps on the fused Triton kernels (gradient and evaluate: the torch engine's)."""

    name = "triton"

    def __init__(self) -> None:
        self.captured: dict[tuple, Captured] = {}

    def sgd_steps(
        self, model: nn.Module, lr: float, x: torch.Tensor, y: torch.Tensor, batches: torch.Tensor
    ) -> torch.Tensor:
        """One SGD step per row of `batches` (k, B); returns the sum of the k batch losses, on the device."""
        from lenet.engines import triton_step

        batches = batches.to(x.device).unsqueeze(0).contiguous()
        if x.device.type != "cuda":
            lrs = torch.full((1,), lr, dtype=torch.float32, device=x.device)
            return triton_step.train_steps(stacked(model), lrs, x, y, batches)[0]
        key = (id(model), x.data_ptr(), y.data_ptr(), tuple(batches.shape), lr)
        if key not in self.captured:
            self.captured[key] = capture(model, lr, x, y, batches.shape)
        c = self.captured[key]
        c.batches.copy_(batches, non_blocking=True)
        c.graph.replay()
        return c.total[0].clone()  # the next replay overwrites c.total


def capture(model: nn.Module, lr: float, x: torch.Tensor, y: torch.Tensor, shape: torch.Size) -> Captured:
    from lenet.engines import triton_step

    params = stacked(model)
    lrs = torch.full((1,), lr, dtype=torch.float32, device=x.device)
    batches = torch.zeros(shape, dtype=torch.int64, device=x.device)
    saved = [p.clone() for p in params]
    side = torch.cuda.Stream(device=x.device)
    side.wait_stream(torch.cuda.current_stream(x.device))
    with torch.cuda.stream(side):  # compiles the kernels outside the capture
        triton_step.train_steps(params, lrs, x, y, batches[:, :WARMUP_STEPS])
    torch.cuda.current_stream(x.device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        total = triton_step.train_steps(params, lrs, x, y, batches)
    with torch.no_grad():
        for p, s in zip(params, saved, strict=True):
            p.copy_(s)
    return Captured(graph, batches, total, lrs)
