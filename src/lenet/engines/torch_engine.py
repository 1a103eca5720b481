"""The reference engine: a training step written out in plain PyTorch (autograd, any device)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TorchEngine:
    name = "torch"

    def sgd_steps(
        self, model: nn.Module, lr: float, x: torch.Tensor, y: torch.Tensor, batches: torch.Tensor
    ) -> torch.Tensor:
        """One plain-SGD step per row of `batches` (k, B); returns the summed batch losses, on the device."""
        model.train()
        params = list(model.parameters())
        total = torch.zeros((), device=x.device)
        for idx in batches.to(x.device):
            loss = F.cross_entropy(model(x[idx]), y[idx])  # mean over the batch, as TF's reduce_mean
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                for p, g in zip(params, grads, strict=True):
                    p.add_(g, alpha=-lr)  # exactly what torch.optim.SGD does for plain SGD
            total += loss.detach()  # no host sync here; the caller reads it once per epoch
        return total

    def gradient(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, label_smoothing: float
    ) -> torch.Tensor:
        model.train()
        model.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y, label_smoothing=label_smoothing)
        loss.backward()
        return loss.detach()

    @torch.no_grad()
    def evaluate(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2000
    ) -> tuple[float, int]:
        model.eval()
        loss_sum = torch.zeros((), device=x.device)
        correct = torch.zeros((), dtype=torch.long, device=x.device)
        for start in range(0, len(x), batch_size):
            logits = model(x[start : start + batch_size])
            target = y[start : start + batch_size]
            loss_sum += F.cross_entropy(logits, target, reduction="sum")
            correct += (logits.argmax(1) == target).sum()
        return loss_sum.item() / len(x), int(correct.item())


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
    """(mean cross-entropy, number correct) over all of x: the reference every test score comes from."""
    return TorchEngine().evaluate(model, x, y)
