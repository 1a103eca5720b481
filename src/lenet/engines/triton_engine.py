"""The fused Triton step of the vectorised backend (`lenet.engines.triton_step`) for one model: `lenet train
--engine triton`. On CUDA, k steps are captured once as a CUDA graph and replayed, as the cuda-graph engine
does with the torch engine's steps; under Triton's interpreter (TRITON_INTERPRET=1, the CPU) they run
directly. A recipe's gradient and the evaluation are the torch engine's.
"""

from __future__ import annotations

import torch
from torch import nn

from lenet.engines.cuda_graph_engine import Captured, CudaGraphEngine

WARMUP_STEPS = 1  # one eager call before capture compiles the kernels; its change to the weights is undone


def stacked(model: nn.Module) -> list[torch.Tensor]:
    """The model's parameters as a group of one: views, so the kernels' updates move the model itself."""
    return [p.data.unsqueeze(0) for p in model.parameters()]


def one_lr(lr: float, device: torch.device) -> torch.Tensor:
    return torch.full((1,), lr, dtype=torch.float32, device=device)


class TritonEngine(CudaGraphEngine):
    """Plain-SGD steps on the fused Triton kernels (gradient and evaluate: the torch engine's)."""

    name = "triton"

    def eager(self, model: nn.Module, lr: float, x: torch.Tensor, y: torch.Tensor, b: torch.Tensor):
        from lenet.engines import triton_step

        batches = b.to(x.device).unsqueeze(0).contiguous()
        return triton_step.train_steps(stacked(model), one_lr(lr, x.device), x, y, batches)[0]

    def capture(self, model: nn.Module, lr: float, x: torch.Tensor, y: torch.Tensor, shape) -> Captured:
        from lenet.engines import triton_step

        params, lrs = stacked(model), one_lr(lr, x.device)
        batches = torch.zeros((1, *shape), dtype=torch.int64, device=x.device)
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
        return Captured(graph, batches[0], total, keep=(lrs,))  # the graph reads lrs at every replay
