"""How training steps run. Every engine takes the same inputs and returns the summed batch losses.

`torch` is the reference. `fast` is a fused C++ kernel for the seed network on the CPU (whole
plain-SGD steps, or the gradient for a recipe's optimiser); `cuda-graph` replays captured steps of the
torch engine on an NVIDIA GPU. `select_engine`
picks the fastest that applies ("auto"), or exactly the one asked for.
"""

from __future__ import annotations

import sys
from typing import Protocol

import torch
from torch import nn

from lenet.engines.fast_engine import EngineError, FastEngine
from lenet.engines.torch_engine import TorchEngine

__all__ = ["Engine", "EngineError", "TorchEngine", "select_engine"]


class Engine(Protocol):
    name: str

    def train_steps(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        x: torch.Tensor,
        y: torch.Tensor,
        batches: torch.Tensor,
    ) -> torch.Tensor: ...


def select_engine(
    name: str, device_type: str, optimizer: str = "sgd", extras: list[str] | tuple[str, ...] = ()
) -> Engine:
    """The engine called `name` ("auto" picks the fastest that applies to this device and optimiser).

    `extras` are what the step does beyond plain SGD at a constant lr (TrainConfig.step_extras:
    momentum, a schedule, augmentation, label smoothing, EMA). On the CPU the fast engine runs plain SGD
    whole and gives recipes their gradients (`FastEngine.gradient`); the CUDA-graph engine runs plain
    SGD only, so recipes on a GPU take the torch engine.
    """
    plain = optimizer == "sgd" and not extras
    if name == "torch":
        return TorchEngine()
    if name == "fast":
        if device_type != "cpu":
            raise EngineError(
                f"--engine fast runs on the CPU only (asked: {device_type}); use --engine auto or torch"
            )
        return FastEngine(strict=True)
    if name != "auto":
        raise EngineError(f"unknown engine '{name}'; known: auto, torch, fast")
    if device_type == "cuda" and plain:
        from lenet.engines.cuda_graph_engine import CudaGraphEngine

        return CudaGraphEngine()
    if device_type == "cpu":
        return fast_or_fallback()
    return TorchEngine()


_fallback_noticed = False


def fast_or_fallback() -> Engine:
    """The fast engine, or the torch engine with a one-line notice (once a process) where it cannot build."""
    global _fallback_noticed
    try:
        return FastEngine()
    except EngineError as e:
        if not _fallback_noticed:
            print(f"lenet: {e}; using the torch engine", file=sys.stderr)
            _fallback_noticed = True
        return TorchEngine()
