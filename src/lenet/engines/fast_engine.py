"""The fast CPU engine: a fused C++ forward + backward (+ plain-SGD step) for exactly the seed network.

The source (`lenet/csrc/lenet_fast.cpp`) is compiled with the system's C++ compiler at first use into
a cache folder keyed by the source, the compiler and the CPU, then loaded with ctypes. No build step
at install time: where no compiler works, or the network in lenet.model is not the one the kernel
computes (it reports its shape), `select_engine` says so in one line and uses the torch engine. Plain
SGD runs whole steps in the kernel; recipes (AdamW, schedules, augmentation, label smoothing, EMA) take
only the gradient from it (`FastEngine.gradient`) and do the rest in torch.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from dataclasses import asdict
from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lenet.atomic import remove_stale_temps, temp_prefix, write_atomic
from lenet.config import ConfigError
from lenet.model import SHAPE, Shape

SOURCE = Path(__file__).resolve().parent.parent / "csrc" / "lenet_fast.cpp"
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-pthread")
ABI_VERSION = 4  # lenet_fast_version() of the source this module speaks to
BUILD_TIMEOUT_S = 120
LIBRARY = "lenet_fast.so"
RECORD = "lenet_fast.so.sha256"  # the library's SHA-256, written after it by the build that made it
MISSING = "is missing"


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
    """The compiled kernel, built on first use, rebuilt whenever the cached copy is not whole and ours.

    The cache is trusted only as far as the current user alone can write it: its folders must be theirs
    and writable by no one else (EngineError otherwise, in one line), and the library a file of theirs,
    writable by no one else, whose SHA-256 is the one its build recorded beside it. Anything else (a cut
    copy, which would crash the process with SIGBUS when loaded; an empty one; a planted one) is rebuilt.
    Concurrent builders each write a temporary file, then rename it."""
    cxx = compiler()
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout
    key = hashlib.sha256("\0".join([SOURCE.read_text(), " ".join(FLAGS), version, cpu_signature()]).encode())
    folder = private_folder(private_folder(cache_dir()) / key.hexdigest()[:16])
    target = folder / LIBRARY
    problem = cached_problem(target)
    if problem is None:
        return target
    remove_stale_temps(folder, [LIBRARY, RECORD])  # what builds killed mid-way left
    compile_into(cxx, target)
    done = "compiled the fast CPU engine into" if problem == MISSING else "rebuilt the fast CPU engine in"
    why = " (once per machine)" if problem == MISSING else f": the cached copy {problem}"
    print(f"lenet: {done} {folder}{why}", file=sys.stderr)
    return target


def private_folder(path: Path) -> Path:
    """`path`, made (mode 0700) if missing; EngineError unless it is the current user's and writable by no
    one else, since a library loaded from a folder others can write runs their code."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.stat()
    except OSError as e:
        reason = e.strerror or str(e)
        raise EngineError(
            f"fast engine: cannot use the kernel cache {path} ({reason}); "
            "set LENET_NATIVE_CACHE to a folder of yours, or use --engine torch"
        ) from None
    problem = not_private(info)
    if problem:
        raise EngineError(
            f"fast engine: the kernel cache {path} is {problem}; make it yours alone to write "
            "(chown, chmod go-w) or set LENET_NATIVE_CACHE to such a folder, or use --engine torch"
        )
    return path


def not_private(info: os.stat_result) -> str | None:
    """Why a file or folder is not the current user's alone to write, or None if it is."""
    if info.st_uid != os.geteuid():
        return f"owned by uid {info.st_uid}, not by you (uid {os.geteuid()})"
    if info.st_mode & 0o022:
        return f"writable by others (mode {stat.S_IMODE(info.st_mode):o})"
    return None


def cached_problem(target: Path) -> str | None:
    """Why the cached library at `target` must be built (MISSING if absent), or None if it can be loaded."""
    try:
        info = target.lstat()
    except FileNotFoundError:
        return MISSING
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file"
    if problem := not_private(info):
        return f"is {problem}"
    record = target.with_name(RECORD)
    try:
        if not_private(record.lstat()) or not record.is_file():
            return f"has a SHA-256 record ({RECORD}) that is not yours alone"
        recorded = record.read_text().strip()
    except FileNotFoundError:
        return f"has no SHA-256 record ({RECORD}; a build cut short, or an older lenet's)"
    except (OSError, UnicodeDecodeError) as e:
        return f"has an unreadable SHA-256 record ({e})"
    if sha256_of(target) != recorded:
        return "does not match the SHA-256 recorded when it was built (damaged or replaced)"
    return None


def compile_into(cxx: str, target: Path) -> None:
    """Compile SOURCE to `target`, then record its SHA-256 beside it: each fsynced, then renamed into place,
    the record last, so a crash at any point leaves a library that is rebuilt, never one that is trusted."""
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(LIBRARY), suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run([cxx, *FLAGS, "-o", tmp, str(SOURCE)], capture_output=True, text=True,
                              timeout=BUILD_TIMEOUT_S)  # fmt: skip
        if done.returncode != 0:
            first = (done.stderr.strip().splitlines() or ["no output"])[0]
            raise EngineError(f"fast engine: {cxx} failed to build {SOURCE.name}: {first}")
        os.chmod(tmp, 0o755)
        digest = sha256_of(Path(tmp), fsync=True)
        os.replace(tmp, target)
        write_atomic(target.with_name(RECORD), f"{digest}\n".encode(), mode=0o644)
        fsync_folder(target.parent)
    finally:
        Path(tmp).unlink(missing_ok=True)


def sha256_of(path: Path, fsync: bool = False) -> str:
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
        if fsync:
            os.fsync(f.fileno())
    return digest


def fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    lib.lenet_fast_shape.restype = None
    lib.lenet_fast_shape.argtypes = [ctypes.c_void_p]
    lib.lenet_fast_logits.restype = None
    lib.lenet_fast_logits.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p, ctypes.c_int64,
                                      ctypes.c_void_p, ctypes.c_int]  # fmt: skip
    return lib


def kernel_shape(lib: ctypes.CDLL) -> Shape:
    """The network the compiled kernel computes, as it reports it."""
    out = (ctypes.c_int64 * 6)()
    lib.lenet_fast_shape(out)
    image, kernel, conv1, conv2, classes, pool = out
    return Shape(image=image, kernel=kernel, conv1=conv1, conv2=conv2, classes=classes, pool=pool)


def param_pointers(model: nn.Module) -> ctypes.Array:
    return (ctypes.c_void_p * 6)(*[p.detach().data_ptr() for p in model.parameters()])


def fits_kernel(model: nn.Module, x: torch.Tensor) -> bool:
    """Whether the kernel can read this model and these images (its network; contiguous CPU float32)."""
    params = list(model.parameters())
    shapes = tuple(tuple(p.shape) for p in params)
    if shapes != tuple(SHAPE.param_shapes().values()) or tuple(x.shape[1:]) != (1, SHAPE.image, SHAPE.image):
        return False
    tensors = [*params, x]
    return all(t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() for t in tensors)


def check_inputs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batches: torch.Tensor | None) -> None:
    """EngineError unless the kernel can run these inputs (select_engine chose it for the model's shape,
    so this fails only for a caller who hands it other data)."""
    if not fits_kernel(model, x):
        raise EngineError("--engine fast: the kernel reads its own network and (N, 1, 28, 28) contiguous "
                          "float32 images on the CPU; use --engine torch")  # fmt: skip
    if y.device.type != "cpu" or y.dtype != torch.int64:
        raise EngineError("--engine fast: the labels must be int64 on the CPU; use --engine torch")
    if batches is not None and batches.numel():
        if batches.dtype != torch.int64 or batches.dim() != 2 or batches.device.type != "cpu":
            raise EngineError("--engine fast: batch indices must be an int64 (steps, batch) CPU tensor")
        if int(batches.min()) < 0 or int(batches.max()) >= len(x):
            raise EngineError("--engine fast: batch indices out of range")


class FastEngine:
    """The fused kernel. Built (once per machine) and checked against lenet.model.SHAPE when made:
    EngineError, in one line, where it cannot build or computes another network."""

    name = "fast"

    def __init__(self) -> None:
        self.lib = load_library()
        built = kernel_shape(self.lib)
        if built != SHAPE:
            differ = [k for k, v in asdict(SHAPE).items() if getattr(built, k) != v]
            have = ", ".join(f"{k}={getattr(built, k)}" for k in differ)
            want = ", ".join(f"{k}={getattr(SHAPE, k)}" for k in differ)
            raise EngineError(f"fast engine: the kernel computes {have}, lenet.model declares {want}; "
                              "the kernel fits only its own network")  # fmt: skip
        self.grads: dict[int, tuple] = {}  # per model: one flat buffer and the .grad views into it

    def sgd_steps(
        self, model: nn.Module, lr: float, x: torch.Tensor, y: torch.Tensor, batches: torch.Tensor
    ) -> torch.Tensor:
        """One plain-SGD step per row of `batches` (k, B); returns the sum of the k batch losses (0-d)."""
        batches = batches.contiguous()
        check_inputs(model, x, y, batches)
        model.zero_grad(set_to_none=True)  # the kernel keeps no gradients; don't leave stale ones
        steps, batch = batches.shape
        threads = max(1, torch.get_num_threads())
        ptrs = param_pointers(model), x.data_ptr(), y.data_ptr(), batches.data_ptr()
        total = self.lib.lenet_fast_train_steps(*ptrs, steps, batch, lr, threads)
        return torch.tensor(total, dtype=torch.float32)

    def gradient(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, label_smoothing: float
    ) -> torch.Tensor:
        """As `F.cross_entropy(model(x), y, label_smoothing=...).backward()`, to float rounding."""
        params = list(model.parameters())
        y = y.to(torch.int64).contiguous()
        check_inputs(model, x, y, None)
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
        return torch.tensor(loss, dtype=torch.float32)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
        """(mean cross-entropy, number correct) over all of x, as the torch engine's, on the kernel."""
        check_inputs(model, x, y, None)
        logits = torch.empty(len(x), SHAPE.classes)
        threads = max(1, torch.get_num_threads())
        self.lib.lenet_fast_logits(param_pointers(model), x.data_ptr(), len(x), logits.data_ptr(), threads)
        loss = F.cross_entropy(logits, y, reduction="sum").item() / len(x)
        return loss, int((logits.argmax(1) == y).sum())
