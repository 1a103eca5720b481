"""The seed network: a LeNet-style CNN with 3,246 parameters, and its initialisation. No I/O here.

`SHAPE` is the one declaration of the network's size: the layers below, the fast kernel's check,
the vectorised sweep step, inspection, export and the web page (through /api/model) all derive
their shapes from it. Change a number here and everything else follows or refuses in one line.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lenet.config import TrainConfig


@dataclass(frozen=True)
class Shape:
    """conv(kernel, 1 -> conv1), pool 2, conv(kernel, conv1 -> conv2), pool 2, fc(features -> classes)."""

    image: int = 28  # input side, pixels (one channel)
    kernel: int = 5  # both convolutions: kernel x kernel, stride 1, no padding (TF's VALID)
    conv1: int = 4  # channels out of conv1
    conv2: int = 12  # channels out of conv2
    classes: int = 10
    pool: int = 2  # both max-pools: pool x pool, stride pool

    @property
    def conv1_side(self) -> int:  # 24
        return self.image - self.kernel + 1

    @property
    def conv2_side(self) -> int:  # 8
        return self.conv1_side // self.pool - self.kernel + 1

    @property
    def pooled_side(self) -> int:  # 4
        return self.conv2_side // self.pool

    @property
    def features(self) -> int:  # 192: what the fc layer reads
        return self.conv2 * self.pooled_side**2

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter's shape, in the model's (and the kernels') order."""
        k = self.kernel
        return {
            "conv1.weight": (self.conv1, 1, k, k),
            "conv1.bias": (self.conv1,),
            "conv2.weight": (self.conv2, self.conv1, k, k),
            "conv2.bias": (self.conv2,),
            "fc.weight": (self.classes, self.features),
            "fc.bias": (self.classes,),
        }

    def parameter_count(self) -> int:
        return sum(torch.Size(s).numel() for s in self.param_shapes().values())

    @property
    def name(self) -> str:
        """Stored with every model file; a file of another shape is refused by name."""
        return f"lenet-{self.parameter_count()}"

    def to_dict(self) -> dict[str, int]:
        """The sizes a reader (the web page, a report) needs, derived ones included."""
        derived = {"conv1_side": self.conv1_side, "conv2_side": self.conv2_side, "features": self.features}
        return {**asdict(self), **derived, "parameters": self.parameter_count()}


SHAPE = Shape()
ARCHITECTURE = SHAPE.name  # "lenet-3246"
NUM_CLASSES = SHAPE.classes


class LeNet(nn.Module):
    """conv1 5x5 1->4, ReLU, max-pool 2; conv2 5x5 4->12, ReLU, max-pool 2; fc 192->10 (logits)."""

    def __init__(self) -> None:
        super().__init__()
        s = SHAPE
        self.conv1 = nn.Conv2d(1, s.conv1, s.kernel)
        self.conv2 = nn.Conv2d(s.conv1, s.conv2, s.kernel)
        self.fc = nn.Linear(s.features, s.classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 1, 28, 28)
        x = F.max_pool2d(F.relu(self.conv1(x)), SHAPE.pool)  # (B, 4, 12, 12)
        x = F.max_pool2d(F.relu(self.conv2(x)), SHAPE.pool)  # (B, 12, 4, 4)
        return self.fc(x.flatten(1))  # (B, 10)

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The activations after each ReLU, for pictures of what the network looks at, and the logits."""
        conv1 = F.relu(self.conv1(x))  # (B, 4, 24, 24)
        conv2 = F.relu(self.conv2(F.max_pool2d(conv1, SHAPE.pool)))  # (B, 12, 8, 8)
        logits = self.fc(F.max_pool2d(conv2, SHAPE.pool).flatten(1))
        return {"conv1": conv1, "conv2": conv2, "logits": logits}


def init_seed_(model: LeNet, init_std: float, fc_init_std: float, generator: torch.Generator) -> None:
    """The report's init: TF `random_normal` (plain, not truncated) for every weight and bias.

    Conv weights and biases ~ N(0, init_std); fc weights and biases ~ N(0, fc_init_std), since the
    report left the fc layer at TF's default stddev 1.0.
    """
    with torch.no_grad():
        for name, p in model.named_parameters():  # fixed order: conv1, conv2, fc; weight then bias
            std = fc_init_std if name.startswith("fc.") else init_std
            p.copy_(torch.randn(p.shape, generator=generator) * std)


def init_kaiming_(model: LeNet, generator: torch.Generator) -> None:
    """He-normal conv weights (ReLU follows), LeCun-normal fc weights (logits), zero biases."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
                continue
            fan_in = p[0].numel()  # conv: in_channels * 5 * 5; fc: 192
            gain = 1.0 if name.startswith("fc.") else 2.0
            p.copy_(torch.randn(p.shape, generator=generator) * (gain / fan_in) ** 0.5)


def make_model(cfg: TrainConfig) -> LeNet:
    """A freshly initialised network on the CPU, as `cfg` says (init, init_std, fc_init_std, seed)."""
    model = LeNet()
    generator = torch.Generator().manual_seed(cfg.seed)
    if cfg.init == "kaiming":
        init_kaiming_(model, generator)
    else:
        init_seed_(model, cfg.init_std, cfg.fc_init_std, generator)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
