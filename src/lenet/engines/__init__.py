"""How a training step runs. Every engine implements the whole `Engine` protocol; `select_engine` is the
one place that chooses.

`torch` is the reference (autograd). `fast` is a fused C++ kernel for exactly the seed network on the
CPU (`csrc/lenet_fast.cpp`): whole plain-SGD steps, a recipe's gradient, and the forward pass for
evaluation. `cuda-graph` replays captured plain-SGD steps of the torch engine on an NVIDIA GPU. `triton`
replays captured steps of the vectorised backend's fused Triton kernels for one model (plain SGD).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Protocol

import torch
from torch import nn

from lenet.config import TrainConfig
from lenet.engines.fast_engine import EngineError, FastEngine
from lenet.engines.torch_engine import TorchEngine
from lenet.errors import LenetError

__all__ = [
    "STEP_CHUNK",
    "Advance",
    "DeviceError",
    "Engine",
    "EngineError",
    "FastEngine",
    "TorchEngine",
    "resolve_device",
    "select_engine",
]

STEP_CHUNK = 50  # plain-SGD steps per engine call: the progress display's and a live view's granularity
Advance = Callable[
    [int, torch.Tensor], None
]  # told after each engine call: (steps just taken, their summed loss)


class DeviceError(LenetError):
    """The requested device is not available on this machine."""


def resolve_device(name: str) -> torch.device:
    """The device a setting names; "auto": CUDA, else MPS, else the CPU. Chosen once per run, here."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available[name]:
        raise DeviceError(f"--device {name}: not available on this machine (use --device auto or cpu)")
    return torch.device(name)


class Engine(Protocol):
    name: str

    def sgd_steps(
        self, model: nn.Module, lr: float, x: torch.Tensor, y: torch.Tensor, batches: torch.Tensor
    ) -> torch.Tensor:
        """One plain gradient-descent step (mean cross-entropy) per row of `batches` (k, B) of indices
        into x, y; updates `model` in place. Returns the k batch losses summed (0-d, on x's device)."""
        ...

    def gradient(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, label_smoothing: float
    ) -> torch.Tensor:
        """Set every parameter's .grad to the gradient of the mean cross-entropy over the batch (x, y);
        return that loss (0-d, detached). An optimiser's step follows."""
        ...

    def evaluate(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
        """(mean cross-entropy, number correct) over all of x."""
        ...


_noticed: set[str] = set()


def notice_once(message: str) -> None:
    """A one-line notice on stderr, once a process: a sweep's hundredth run need not repeat it."""
    if message not in _noticed:
        _noticed.add(message)
        print(f"lenet: {message}", file=sys.stderr)


def select_engine(
    cfg: TrainConfig, device: torch.device | str, notice: Callable[[str], None] = notice_once
) -> Engine:
    """The engine `cfg.engine` names; "auto" picks the fastest that applies here and says why it fell back.

    CPU: the fast kernel (plain SGD whole; a recipe's gradient). CUDA: CUDA graphs for plain SGD, the
    torch engine for recipes. Anything else: the torch engine.
    """
    kind = torch.device(device).type
    plain = cfg.plain_sgd
    if cfg.engine == "torch":
        return TorchEngine()
    if cfg.engine == "triton":
        return select_triton(cfg, device)
    if cfg.engine == "fast":
        if kind != "cpu":
            raise EngineError(
                f"--engine fast runs on the CPU only (asked: {kind}); use --engine auto or torch"
            )
        return FastEngine()  # EngineError, in one line, if it cannot build or does not fit the network
    if kind == "cuda" and plain:
        from lenet.engines.cuda_graph_engine import CudaGraphEngine

        return CudaGraphEngine()
    if kind != "cpu":
        return TorchEngine()
    try:
        return FastEngine()
    except EngineError as e:  # no compiler, or a network of another shape than the kernel's
        notice(f"{e}; using the torch engine")
        return TorchEngine()


def select_triton(cfg: TrainConfig, device: torch.device | str) -> Engine:
    """The fused Triton step for one model (`lenet.engines.triton_engine`), where it can run."""
    from lenet.engines import triton_step
    from lenet.engines.triton_engine import TritonEngine

    if not cfg.plain_sgd:
        extras = ", ".join(cfg.step_extras())
        raise EngineError(f"--engine triton trains plain SGD only (this run has {extras}); use --engine auto")
    if not triton_step.available(torch.device(device)):
        raise EngineError(
            "--engine triton needs triton and a CUDA device (pip install triton); use --engine auto"
        )
    return TritonEngine()
