"""Dead networks: detecting one (`dead_units`, `death_check`) and its plain-SGD epoch, computed from the
batches' labels alone (`dead_sgd_epoch`).

A network is dead (`death_check`) when every conv1 channel, or every conv2 channel, is zero
after its ReLU at every position of every training image. Its output is then the same for every image:

* Every conv1 channel dead: conv2 sees only zeros, so each conv2 channel c is its bias b2[c] at every
  position, and the fc layer reads h[c*16 + p] = relu(b2[c]) at each of the 16 pooled positions p.
* Every conv2 channel dead (conv1 alive): the fc layer reads h = 0.

With the same logits z = W h + b for all B images of a batch, the mean cross-entropy is
logsumexp(z) - (n . z) / B, where n counts the batch's labels, and its gradient in z is
dz = softmax(z) - n / B. From there: fc.bias moves by dz, fc.weight by outer(dz, h) (zero when h is),
and b2[c], where b2[c] > 0 so that its ReLU passes, by the sum over the 16 positions of (W^T dz)[c*16 + p]
(each max-pool sends its gradient to one of its four equal inputs). Nothing else gets a gradient: conv2's
weights multiply an input of zeros, and the layers below the dead ReLU receive none at all. So a dead
network stays dead, and every step is a function of the batch's label counts and a few parameters: no
image needs to be read. The step is plain SGD on the parameters before it, as the engines do it.

Only the 10 x 12 sums M[:, c] = sum over p of W[:, c*16 + p] enter the logits (z = M relu(b2) + b) and
b2's gradient (dz M), and a step moves all 16 columns of a channel alike, so the state is M, b and b2,
and fc.weight is its start minus the summed moves of each channel. It is computed in float64 (the
engines step in float32: the two agree to float32 rounding, tests/test_dead.py) and written back as
float32 after every STEP_CHUNK steps, before the progress callback, where the engine would be.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lenet.data import Split
from lenet.engines import STEP_CHUNK, Advance
from lenet.model import SHAPE, LeNet

POSITIONS = SHAPE.pooled_side**2  # 16: the pooled positions of one conv2 channel, all equal here


def label_counts(y: torch.Tensor, batches: torch.Tensor) -> np.ndarray:
    """(steps, classes) float64: how many of each label every batch (a row of `batches`) holds."""
    labels = y[batches.to(y.device)].cpu().numpy()  # (steps, B)
    steps = len(labels)
    flat = (np.arange(steps)[:, None] * SHAPE.classes + labels).ravel()
    return np.bincount(flat, minlength=steps * SHAPE.classes).reshape(steps, SHAPE.classes).astype(np.float64)


@dataclass
class Survivors:
    """The parameters that still move, in float64. `b2` is None when every conv2 channel is dead: then the
    fc layer reads zeros and only its bias moves."""

    fc_weight: np.ndarray  # (10, 192): fc.weight at the start of the epoch
    b: np.ndarray  # (10,) fc.bias
    b2: np.ndarray | None  # (12,) conv2.bias, when every conv1 channel is dead
    m: np.ndarray  # (10, 12): fc.weight summed over each channel's 16 positions
    moved: np.ndarray  # (10, 12): what has been subtracted from each channel's 16 columns of fc.weight

    @classmethod
    def read(cls, model: LeNet, dead_units: dict[str, int]) -> Survivors:
        if dead_units["conv1"] == SHAPE.conv1:
            b2 = model.conv2.bias.detach().cpu().double().numpy().copy()
        elif dead_units["conv2"] == SHAPE.conv2:
            b2 = None
        else:
            raise ValueError(f"the network is not dead (dead channels: {dead_units})")
        w = model.fc.weight.detach().cpu().double().numpy().copy()
        m = w.reshape(SHAPE.classes, SHAPE.conv2, POSITIONS).sum(axis=2)
        b = model.fc.bias.detach().cpu().double().numpy().copy()
        return cls(w, b, b2, m, np.zeros_like(m))

    def write(self, model: LeNet) -> bool:
        """Copy the parameters into `model` as float32; False if one is not finite there (the engine's
        float32 weights would have overflowed too, and its losses would not be finite)."""
        values = {
            model.fc.bias: self.b,
            model.fc.weight: self.fc_weight - np.repeat(self.moved, POSITIONS, 1),
        }
        if self.b2 is not None:
            values[model.conv2.bias] = self.b2
        finite = True
        with torch.no_grad():
            for p, v in values.items():
                v32 = torch.from_numpy(v).float()
                finite = finite and bool(torch.isfinite(v32).all())
                p.copy_(v32)
        return finite


def dead_steps(s: Survivors, lr: float, counts: np.ndarray, batch: int) -> float:
    """Plain-SGD steps of the dead network `s` (in place), one per row of label `counts`; the summed loss."""
    m, b, b2, moved = s.m, s.b, s.b2, s.moved  # updated in place: locals are faster to reach
    total = 0.0
    for p in counts / batch:  # the batch's label frequencies
        if b2 is None:
            z = b
        else:
            a = np.maximum(b2, 0.0)  # each channel's value at all of its positions
            z = m @ a + b
        top = z.max()
        e = np.exp(z - top)
        sum_e = e.sum()
        total += top + np.log(sum_e) - p @ z
        dz = e / sum_e - p
        if b2 is not None:
            g2 = (dz @ m) * (b2 > 0)  # ReLU passes where b2 > 0; each pool sends its gradient on
            step = lr * dz[:, None] * a
            m -= POSITIONS * step
            moved += step
            b2 -= lr * g2
        b -= lr * dz
    return float(total)


def dead_sgd_epoch(
    model: LeNet,
    lr: float,
    split: Split,
    batches: torch.Tensor,
    dead_units: dict[str, int],
    advance: Advance,
) -> torch.Tensor:
    """One plain-SGD epoch of a dead `model` over `batches` (steps, B), as `lenet.training.sgd_epoch` with any
    engine, to float tolerance: the parameters updated in place, `advance` after every STEP_CHUNK steps
    with their summed loss, and the summed batch losses returned (0-d float32 on the split's device).

    `dead_units` is the dead row's count of dead channels per layer; the network must be dead on every
    image that `batches` indexes (ValueError if neither layer is wholly dead)."""
    device = split.train_x.device
    survivors = Survivors.read(model, dead_units)
    counts = label_counts(split.train_y, batches)
    total, finite = 0.0, True
    for start in range(0, len(counts), STEP_CHUNK):
        chunk = counts[start : start + STEP_CHUNK]
        loss = dead_steps(survivors, lr, chunk, batches.shape[1])
        finite = survivors.write(model) and finite  # once overflowed, the engine's weights stay so
        loss = loss if finite else float("nan")
        total += loss
        advance(len(chunk), torch.tensor(loss, dtype=torch.float32, device=device))
    return torch.tensor(total, dtype=torch.float32, device=device)


# ---------------------------------------------------------------- detecting a dead network


DEAD_CHUNK = 128  # training images per forward pass of the dead-network check (measured fastest per image)


@torch.no_grad()
def dead_units(
    model: LeNet, x: torch.Tensor, chunk: int = DEAD_CHUNK, start: int = 0
) -> tuple[dict[str, int] | None, int]:
    """(None if the network's output depends on `x`, else how many conv1 and conv2 channels are zero after
    ReLU at every position of every image in `x`: all of one layer's, at least; the chunk to start at next).

    Scans chunks of `x` from chunk `start` on (wrapping round) and stops once each layer has had a channel
    positive somewhere: a live network needs one chunk, and a nearly dead one (positive on a few images)
    needs one too when it starts where it was last seen alive. A dead one is scanned whole: exact counts.
    """
    chunks = x.split(chunk)
    seen: dict[str, torch.Tensor] = {}
    for k in range(len(chunks)):
        i = (start + k) % len(chunks)
        conv1 = F.relu(model.conv1(chunks[i]))
        fired = {"conv1": (conv1 > 0).any(dim=(0, 2, 3))}  # (channels,)
        if fired["conv1"].any():
            conv2 = F.relu(model.conv2(F.max_pool2d(conv1, SHAPE.pool)))
            fired["conv2"] = (conv2 > 0).any(dim=(0, 2, 3))
        else:  # conv2 reads zeros here: each channel is relu(its bias) everywhere (a third of the work)
            fired["conv2"] = model.conv2.bias > 0
        for name, positive in fired.items():
            seen[name] = positive | seen[name] if name in seen else positive
        if all(bool(s.any()) for s in seen.values()):
            return None, i
    return {name: int((~s).sum()) for name, s in seen.items()}, start


def death_check(
    model: LeNet, last_row: dict, plain_sgd: bool, train_x: torch.Tensor, start: int = 0
) -> tuple[dict, int]:
    """The metrics row's `dead`: the output no longer depends on the input, because every conv1 or every
    conv2 channel is zero on every training image; a dead row also has `dead_units`, the counts per layer.

    Under plain SGD no gradient reaches the layers below a dead one, so a dead network stays dead and is
    not checked again; a recipe's optimiser may move it (weight decay, momentum), so it is checked.
    `last_row` is the previous epoch's row ({} before the first); `start` the chunk where the network was
    last seen alive. Returns the row's fields and the chunk to start at next time.
    """
    if plain_sgd and last_row.get("dead"):
        units = dict(last_row["dead_units"])
        if units["conv1"] == SHAPE.conv1:  # conv2 reads zeros: channel c is relu(its bias) everywhere
            units["conv2"] = int((model.conv2.bias <= 0).sum())
        return {"dead": True, "dead_units": units}, start
    units, start = dead_units(model, train_x, start=start)
    return ({"dead": False} if units is None else {"dead": True, "dead_units": units}), start
