"""What the training page says about a run in words: its label (the protocol its settings come from, and
what differs), its title's lr (with the changes made from the page), and its badges: died, stalled or
diverged, each with the epoch and the reason.

Died is lenet.dead's verdict in the metrics rows (`dead`, `dead_units`); stalled is lenet.results'
(`is_stalled`: the last epoch's loss within STALL_TOLERANCE of ln 10, a uniform guess).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from lenet.config import PLACEMENT, TrainConfig
from lenet.model import SHAPE
from lenet.recipe import preset_names, recipe_config
from lenet.results import CHANCE_LOSS, STALL_TOLERANCE, is_stalled

PROTOCOLS = {"seed": "seed protocol", "improved": "improved recipe"}  # a preset's name on the page
NOT_IN_LABEL = ("seed", "lr", *PLACEMENT)  # the seed and lr are shown on their own; placement changes nothing


def protocol_label(cfg: TrainConfig, preset: str | None = None) -> str:
    """The preset `cfg` comes from (`preset`, or the one it differs least from) and what differs, the seed
    and lr aside: 'seed protocol' for the original's settings, 'seed protocol, epochs 2, init std 1'."""
    names = [preset] if preset else preset_names()
    changes = {name: differences(cfg, recipe_config(name, {})) for name in names}
    name = min(names, key=lambda n: (len(changes[n]), n != "seed"))
    return ", ".join([PROTOCOLS.get(name, name), *changes[name]])


def differences(cfg: TrainConfig, base: TrainConfig) -> list[str]:
    """The settings of `cfg` that are not `base`'s, as 'name value'."""
    out = []
    for f in dataclasses.fields(TrainConfig):
        value = getattr(cfg, f.name)
        if f.name not in NOT_IN_LABEL and value != getattr(base, f.name):
            out.append(f"{f.name.replace('_', ' ')} {value:g}" if isinstance(value, float) else
                       f"{f.name.replace('_', ' ')} {value}")  # fmt: skip
    return out


def lr_text(cfg: TrainConfig, changes: list[list]) -> str:
    """The lr as the title says it: 'lr 0.01', 'lr 0.01 → 0.03 from epoch 2' after a change made from the
    page (`changes`: [first epoch, 0-based; lr]), 'lr 0.008, cosine schedule' for a recipe's."""
    text = f"lr {cfg.lr:g}"
    for first, lr in changes:
        text += f" → {lr:g} from epoch {first + 1}"
    return text + (f", {cfg.schedule} schedule" if cfg.schedule != "constant" else "")


def badges(rows: list[dict[str, Any]], plain_sgd: bool) -> list[dict[str, Any]]:
    """What went wrong, from the finished epochs' rows: each {kind, epoch, text, reason}."""
    out = []
    died = next((row for row in rows if row.get("dead")), None)
    if died is not None:
        out.append({"kind": "died", "epoch": died["epoch"], "text": f"died in epoch {died['epoch']}",
                    "reason": dead_reason(died.get("dead_units") or {}, plain_sgd)})  # fmt: skip
    if not rows:
        return out
    losses = [row.get("train_loss") for row in rows]
    broke = next((i for i, x in enumerate(losses) if not finite(x)), None)
    if broke is not None:
        epoch = rows[broke]["epoch"]
        out.append({"kind": "diverged", "epoch": epoch, "text": f"diverged in epoch {epoch}",
                    "reason": "its training loss is not a finite number: the weights overflowed, and "
                              "nothing more can be learned"})  # fmt: skip
    elif is_stalled(losses[-1]):
        first = len(losses)
        while first > 0 and is_stalled(losses[first - 1]):
            first -= 1
        epoch = rows[first]["epoch"]
        out.append({"kind": "stalled", "epoch": epoch, "text": f"stalled since epoch {epoch}",
                    "reason": f"its training loss {losses[-1]:.3f} is within {STALL_TOLERANCE:g} of "
                              f"ln 10 = {CHANCE_LOSS:.3f}, the loss of a uniform guess over the "
                              f"{SHAPE.classes} classes"})  # fmt: skip
    return out


def finite(x: Any) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def dead_reason(units: dict[str, int], plain_sgd: bool) -> str:
    """Why a network is dead, from its dead channel counts (lenet.dead)."""
    layer, total = ("conv1", SHAPE.conv1) if units.get("conv1") == SHAPE.conv1 else ("conv2", SHAPE.conv2)
    never = "; plain SGD can never revive it" if plain_sgd else ""
    return (
        f"all {total} {layer} channels are zero after their ReLU on every training image, so every "
        f"image gets the same answer{never}"
    )
