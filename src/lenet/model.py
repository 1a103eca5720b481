"""The seed network: a LeNet-style CNN with 3,246 parameters, and its initialisation. No I/O here."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ARCHITECTURE = "lenet-3246"  # conv5x5(1->4) pool conv5x5(4->12) pool fc(192->10); stored with every model
NUM_CLASSES = 10


class LeNet(nn.Module):
    """conv1 5x5 1->4, ReLU, max-pool 2; conv2 5x5 4->12, ReLU, max-pool 2; fc 192->10 (logits)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 5)
        self.conv2 = nn.Conv2d(4, 12, 5)
        self.fc = nn.Linear(4 * 4 * 12, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 1, 28, 28)
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # (B, 4, 12, 12)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (B, 12, 4, 4)
        return self.fc(x.flatten(1))  # (B, 10)

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The activations after each ReLU, for pictures of what the network looks at, and the logits."""
        conv1 = F.relu(self.conv1(x))  # (B, 4, 24, 24)
        conv2 = F.relu(self.conv2(F.max_pool2d(conv1, 2)))  # (B, 12, 8, 8)
        return {"conv1": conv1, "conv2": conv2, "logits": self.fc(F.max_pool2d(conv2, 2).flatten(1))}


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


def make_model(init_std: float = 0.1, fc_init_std: float = 1.0, seed: int = 0, init: str = "seed") -> LeNet:
    """A freshly initialised network on the CPU; the same seed always gives the same weights."""
    model = LeNet()
    generator = torch.Generator().manual_seed(seed)
    if init == "kaiming":
        init_kaiming_(model, generator)
    else:
        init_seed_(model, init_std, fc_init_std, generator)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
