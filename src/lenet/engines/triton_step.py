"""The fused Triton training step: plain SGD for M LeNets at once, each model on its own batch.

A step is two launches, whatever M and the batch size B are:

1. `gradient_kernel`, grid (M, T) with T = ceil(B / TILE): program (m, t) takes images t*TILE ... of
   model m's batch (the last tile may be short), gathers them from x by index itself, and runs forward,
   softmax cross-entropy and backward. It writes the tile's share of the gradient (3,246 floats, the
   parameters flattened in the model's order) to `partial[m, t]` and its summed loss to `tile_loss[m, t]`.
2. `update_kernel`, grid (M, ceil(3246 / UPDATE_BLOCK)): sums the T partials in tile order and does
   p -= lr_m * g in place; block 0 adds the batch's mean loss to `total[m]`. No atomics, so a step is
   deterministic, and nothing syncs with the host: k steps are 2k launches in a row
   (`lenet.engines.triton_engine` captures them as a CUDA graph).

What a gradient program does, and its scratch: `lenet.engines.triton_kernels`.
"""

from __future__ import annotations

import os

import torch

from lenet.engines.fast_engine import EngineError
from lenet.engines.triton_kernels import (
    FEATURES,
    FRAME,
    GRADIENT_WARPS,
    INTERPRETED,
    KERNEL_SHAPE,
    PARAMS,
    POOLED,
    TILE,
    UPDATE_BLOCK,
    gradient_kernel,
    triton,
    update_kernel,
)
from lenet.model import SHAPE


def available(device: torch.device | str) -> bool:
    """Whether `train_steps` runs on `device`: triton installed and a CUDA device, or the CPU in Triton's
    interpreter: TRITON_INTERPRET=1 set when this module was imported (the kernels are interpreted) and still
    set now (so that a test that interprets them does not send every later CPU group to the interpreter)."""
    if triton is None:
        return False
    if torch.device(device).type == "cuda":
        return torch.cuda.is_available()
    return INTERPRETED and os.environ.get("TRITON_INTERPRET") == "1"


def train_steps(
    params: list[torch.Tensor], lrs: torch.Tensor, x: torch.Tensor, y: torch.Tensor, batches: torch.Tensor
) -> torch.Tensor:
    """One plain-SGD step of every model per step of `batches` (M, k, B): model m's batch is x[batches[m, s]]
    and p -= lrs[m] * grad of its mean cross-entropy, in place on the six stacked `params` (model axis first,
    the model's order). Returns each model's summed batch losses (M,) float32, each taken before its step.

    x (N, 1, 28, 28) float32, y (N,) int64 and the parameters share one device, contiguous; `batches` is moved
    there. The indices and labels are not range-checked (that would sync with the device)."""
    batches = check_inputs(params, lrs, x, y, batches)
    m, k, b = batches.shape
    tiles = triton.cdiv(b, TILE)
    partial = torch.empty((m, tiles, PARAMS), dtype=torch.float32, device=x.device)
    tile_loss = torch.empty((m, tiles), dtype=torch.float32, device=x.device)
    # zeroed once: the frame's border is never written and must read as zeros
    scratch = torch.zeros(
        (m * tiles, TILE * (POOLED + FEATURES) + FRAME), dtype=torch.float32, device=x.device
    )
    winners = torch.empty((m * tiles, TILE * (POOLED + FEATURES)), dtype=torch.int8, device=x.device)
    total = torch.zeros(m, dtype=torch.float32, device=x.device)
    for step in range(k):
        gradient_kernel[(m, tiles)](
            x, y, batches, *params, partial, tile_loss, scratch, winners, step, k, b,
            TILE=TILE, num_warps=GRADIENT_WARPS, num_stages=1,
        )  # fmt: skip
        update_kernel[(m, triton.cdiv(PARAMS, UPDATE_BLOCK))](
            partial, tile_loss, total, lrs, *params, 1.0 / b, TILES=tiles, BLOCK=UPDATE_BLOCK
        )
    return total


def check_inputs(
    params: list[torch.Tensor], lrs: torch.Tensor, x: torch.Tensor, y: torch.Tensor, batches: torch.Tensor
) -> torch.Tensor:
    """`batches` on x's device and contiguous; EngineError, in one line, for what the kernels cannot take."""
    if SHAPE != KERNEL_SHAPE:
        raise EngineError(f"triton step: computes only the {KERNEL_SHAPE.name} network, not {SHAPE}")
    if triton is None:
        raise EngineError("triton step: triton is not installed (pip install triton)")
    if not available(x.device):
        raise EngineError(
            f"triton step: runs on a CUDA device, or in TRITON_INTERPRET=1 (got {x.device.type})"
        )
    if batches.dim() != 3 or batches.dtype != torch.int64 or 0 in batches.shape[::2]:
        raise EngineError(
            f"triton step: batches must be (M, k, B) int64, M, B >= 1 (got {tensor_line(batches)})"
        )
    m = batches.shape[0]
    named = {f"params[{i}] ({n})": (p, (m, *s)) for i, (n, s, p) in enumerate(param_specs(params))}
    n = x.shape[0] if x.dim() else 0
    named |= {"lrs": (lrs, (m,)), "x": (x, (n, 1, 28, 28)), "y": (y, (n,))}
    for name, (t, shape) in named.items():
        dtype = torch.int64 if name == "y" else torch.float32
        if t.dtype != dtype or tuple(t.shape) != shape or t.device != x.device or not t.is_contiguous():
            want = f"{dtype} {shape}, contiguous on {x.device}"
            raise EngineError(f"triton step: {name} must be {want} (got {tensor_line(t)})")
    return batches.to(x.device).contiguous()


def param_specs(params: list[torch.Tensor]) -> list[tuple[str, tuple[int, ...], torch.Tensor]]:
    """(name, shape of one model's, stacked tensor) of each parameter, in the model's order."""
    shapes = KERNEL_SHAPE.param_shapes()
    if len(params) != len(shapes):
        raise EngineError(f"triton step: needs the {len(shapes)} stacked parameters (got {len(params)})")
    return [(n, s, p) for (n, s), p in zip(shapes.items(), params, strict=True)]


def tensor_line(t: torch.Tensor) -> str:
    """What a tensor is, for a refusal: dtype, shape, device and whether it is contiguous."""
    layout = "" if t.is_contiguous() else ", not contiguous"
    return f"{t.dtype} {tuple(t.shape)} on {t.device}{layout}"
