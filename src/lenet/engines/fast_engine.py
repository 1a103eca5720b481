"""The fast CPU engine: a fused C++ forward + backward (+ plain-SGD step) for exactly the seed network.

The source (`lenet/csrc/lenet_fast.cpp`) is compiled with the system's C++ compiler at first use into
a cache folder keyed by the source, the compiler and the CPU, then loaded with ctypes. No build step
at install time: where no compiler works, `select_engine("auto", ...)` says so in one line and
falls back to the torch engine. Plain SGD runs whole steps in the kernel; recipes (AdamW, schedules,
augmentation, label smoothing, EMA) take only the gradient from it (`FastEngine.gradient`) and do the
rest in torch.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lenet.config import ConfigError

SOURCE = Path(__file__).resolve().parent.parent / "csrc" / "lenet_fast.cpp"
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-pthread")
ABI_VERSION = 3  # lenet_fast_version() of the source this module speaks to
PARAM_SHAPES = ((4, 1, 5, 5), (4,), (12, 4, 5, 5), (12,), (10, 192), (10,))  # conv1, conv2, fc: w then b
BUILD_TIMEOUT_S = 120


class EngineError(ConfigError):
    """The requested engine cannot run here; the message says why and what to use instead."""


def cache_dir() -> Path:
    env = os.environ.get("LENET_NATIVE_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lenet" / "native"


def cpu_signature() -> str:
    """What `-march=native` depends on: the CPU's feature flags (Linux), else the platform string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    import platform

    return platform.platform() + platform.processor()


def compiler() -> str:
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return name
    raise EngineError("fast engine: no C++ compiler found (install g++ or set CXX); use --engine torch")


def build_library() -> Path:
    """The compiled kernel, built on first use; concurrent builders each write a temp file, then rename."""
    cxx = compiler()
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout
    key = hashlib.sha256("\0".join([SOURCE.read_text(), " ".join(FLAGS), version, cpu_signature()]).encode())
    target = cache_dir() / key.hexdigest()[:16] / "lenet_fast.so"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run([cxx, *FLAGS, "-o", tmp, str(SOURCE)], capture_output=True, text=True,
                              timeout=BUILD_TIMEOUT_S)  # fmt: skip
        if done.returncode != 0:
            first = (done.stderr.strip().splitlines() or ["no output"])[0]
            raise EngineError(f"fast engine: {cxx} failed to build {SOURCE.name}: {first}")
        os.replace(tmp, target)
        print(f"lenet: compiled the fast CPU engine into {target.parent} (once per machine)", file=sys.stderr)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


def load_library() -> ctypes.CDLL:
    """Build (once per machine) and load the kernel; EngineError if either fails (once per process)."""
    lib = build_and_load()
    if isinstance(lib, EngineError):
        raise lib
    return lib


@cache
def build_and_load() -> ctypes.CDLL | EngineError:
    """The loaded kernel, or why it cannot be had: a failure is remembered, so a sweep that falls back to
    the torch engine does not run the compiler again for every run."""
    try:
        lib = ctypes.CDLL(str(build_library()))
    except (OSError, subprocess.SubprocessError) as e:
        return EngineError(f"fast engine: cannot build or load the native kernel ({e})")
    except EngineError as e:
        return e
    if lib.lenet_fast_version() != ABI_VERSION:
        return EngineError(f"fast engine: {SOURCE.name} speaks ABI {lib.lenet_fast_version()}, {__name__} "
                           f"expects {ABI_VERSION}; update them together")  # fmt: skip
    lib.lenet_fast_train_steps.restype = ctypes.c_float
    lib.lenet_fast_train_steps.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p, ctypes.c_void_p,
                                           ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_float,
                                           ctypes.c_int]  # fmt: skip
    lib.lenet_fast_gradient.restype = ctypes.c_float
    lib.lenet_fast_gradient.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p, ctypes.c_void_p,
                                        ctypes.c_int64, ctypes.c_float, ctypes.c_void_p,
                                        ctypes.c_int]  # fmt: skip
    lib.lenet_fast_logits.restype = None
    lib.lenet_fast_logits.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p, ctypes.c_int64,
                                      ctypes.c_void_p, ctypes.c_int]  # fmt: skip
    return lib


def param_pointers(model: nn.Module) -> ctypes.Array:
    return (ctypes.c_void_p * 6)(*[p.detach().data_ptr() for p in model.parameters()])


def plain_sgd_lr(optimizer: torch.optim.Optimizer) -> float | None:
    """The learning rate when `optimizer` is plain SGD (no momentum, weight decay, ...), else None."""
    if type(optimizer) is not torch.optim.SGD or len(optimizer.param_groups) != 1:
        return None
    g = optimizer.param_groups[0]
    plain = g["momentum"] == 0 and g["weight_decay"] == 0 and not g["nesterov"] and not g.get("maximize")
    return float(g["lr"]) if plain and not isinstance(g["lr"], torch.Tensor) else None


def unsupported(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    batches: torch.Tensor,
) -> str | None:
    """Why the kernel cannot run these inputs, or None when it can."""
    if not fits_kernel(model, x):
        return (
            "the kernel reads the 3,246-parameter network and (N, 1, 28, 28) images, contiguous CPU float32"
        )
    if plain_sgd_lr(optimizer) is None:
        return "the optimizer is not plain SGD (one group, no momentum or weight decay)"
    if [id(p) for p in optimizer.param_groups[0]["params"]] != [id(p) for p in model.parameters()]:
        return "the optimizer does not hold exactly the model's parameters"
    if y.device.type != "cpu" or batches.device.type != "cpu":
        return "the labels or batch indices are not on the CPU"
    if y.dtype != torch.int64 or batches.dtype != torch.int64 or batches.dim() != 2:
        return "labels and batch indices must be int64, batches (steps, batch)"
    if batches.numel() and (int(batches.min()) < 0 or int(batches.max()) >= len(x)):
        return "batch indices out of range"
    return None


def fits_kernel(model: nn.Module, x: torch.Tensor) -> bool:
    """Whether the kernel can read this model and these images (the seed network; contiguous CPU float32)."""
    params = list(model.parameters())
    if tuple(tuple(p.shape) for p in params) != PARAM_SHAPES or tuple(x.shape[1:]) != (1, 28, 28):
        return False
    tensors = [*params, x]
    return all(t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() for t in tensors)


class FastEngine:
    """The fused kernel where it applies; otherwise the torch engine (auto) or an EngineError (strict)."""

    name = "fast"

    def __init__(self, strict: bool = False) -> None:
        from lenet.engines.torch_engine import TorchEngine

        self.lib = load_library()
        self.strict = strict
        self.reference = TorchEngine()
        self.grads: dict[int, tuple] = {}  # per model: one flat buffer and the .grad views into it

    def gradient(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0
    ) -> float:
        """Set each parameter's .grad to d(mean cross-entropy over the batch)/d(parameter); return the loss.

        As `F.cross_entropy(model(x), y, label_smoothing=...).backward()` (to float rounding), on the kernel
        where it fits (else on autograd, or an EngineError when strict). An optimiser's step follows.
        """
        params = list(model.parameters())
        y = y.to(torch.int64).contiguous()
        if not fits_kernel(model, x) or y.device.type != "cpu" or not params[0].requires_grad:
            if self.strict:
                raise EngineError("--engine fast: the kernel needs the seed network and its data on the CPU")
            model.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y, label_smoothing=label_smoothing)
            loss.backward()
            return float(loss)
        flat, views = self.grads.get(id(model), (None, None))
        if flat is None:
            flat = torch.empty(sum(p.numel() for p in params))
            views = list(flat.split([p.numel() for p in params]))
            views = [v.view_as(p) for v, p in zip(views, params, strict=True)]
            self.grads[id(model)] = flat, views
        # One kernel thread: a single batch is too little work to start threads for on every call, and
        # they would compete with torch's own threads between steps (measured, `lenet train --recipe
        # improved`, 2 cores: 0.59 s per epoch this way against 0.74-0.91 s with 2 kernel threads).
        ptrs = param_pointers(model), x.data_ptr(), y.data_ptr()
        loss = self.lib.lenet_fast_gradient(*ptrs, len(x), label_smoothing, flat.data_ptr(), 1)
        for p, g in zip(params, views, strict=True):
            if p.grad is not g:  # an optimiser's zero_grad(set_to_none=True) may have dropped it
                p.grad = g
        return loss

    def train_steps(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        x: torch.Tensor,
        y: torch.Tensor,
        batches: torch.Tensor,
    ) -> torch.Tensor:
        """One plain-SGD step per row of `batches` (k, B); returns the sum of the k batch losses (0-d)."""
        batches = batches.contiguous()
        reason = unsupported(model, optimizer, x, y, batches)
        if reason is not None:
            if self.strict:
                raise EngineError(f"--engine fast cannot run this: {reason}; use --engine torch or auto")
            return self.reference.train_steps(model, optimizer, x, y, batches)
        model.train()
        optimizer.zero_grad(set_to_none=True)  # the kernel keeps no gradients; don't leave stale ones
        lr, (steps, batch) = plain_sgd_lr(optimizer), batches.shape
        threads = max(1, torch.get_num_threads())
        ptrs = param_pointers(model), x.data_ptr(), y.data_ptr(), batches.data_ptr()
        total = self.lib.lenet_fast_train_steps(*ptrs, steps, batch, lr, threads)
        return torch.tensor(total, dtype=torch.float32)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
        """(mean cross-entropy, number correct) over all of x, as `lenet.train.evaluate`, on the kernel."""
        if fits_kernel(model, x):
            logits = torch.empty(len(x), 10)
            threads = max(1, torch.get_num_threads())
            self.lib.lenet_fast_logits(
                param_pointers(model), x.data_ptr(), len(x), logits.data_ptr(), threads
            )
        else:
            logits = model.eval()(x)
        loss = F.cross_entropy(logits, y, reduction="sum").item() / len(x)
        return loss, int((logits.argmax(1) == y).sum())
