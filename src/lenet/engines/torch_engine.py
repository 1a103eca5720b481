"""The reference engine: a training step written out in plain PyTorch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TorchEngine:
    name = "torch"

    def train_steps(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        x: torch.Tensor,
        y: torch.Tensor,
        batches: torch.Tensor,
    ) -> torch.Tensor:
        """One SGD step per row of `batches` (k, B); returns the sum of the k batch losses, on the device."""
        model.train()
        total = torch.zeros((), device=x.device)
        for idx in batches.to(x.device):
            loss = F.cross_entropy(model(x[idx]), y[idx])  # mean over the batch, as TF's reduce_mean
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach()  # no host sync here; the caller reads it once per epoch
        return total
