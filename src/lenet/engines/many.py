"""Many models at once: M seed networks trained in one vectorised step with grouped convolutions.

Model m's parameters are slice m of stacked tensors; its batch is channel m of the input, so one
grouped conv (groups=M) runs all M networks and autograd keeps their gradients apart. Each model
has its own learning rate, init scale, seed and batch order. Plain SGD only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lenet.model import LeNet

PARAM_NAMES = ("conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "fc.weight", "fc.bias")


class StackedModels:
    """M LeNets as six stacked tensors, each with a leading model axis."""

    def __init__(self, models: list[LeNet], lrs: list[float], device: torch.device | str) -> None:
        self.m = len(models)
        self.params = [
            torch.stack([dict(mod.named_parameters())[n].detach() for mod in models])
            .to(device)
            .requires_grad_()
            for n in PARAM_NAMES
        ]
        self.lrs = torch.tensor(lrs, dtype=torch.float32, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, M, 28, 28), channel m is model m's batch -> logits (B, M, 10)."""
        w1, b1, w2, b2, wf, bf = self.params
        m, b = self.m, x.shape[0]
        h = F.conv2d(x, w1.view(m * 4, 1, 5, 5), b1.view(-1), groups=m)  # (B, M*4, 24, 24)
        h = F.max_pool2d(F.relu(h), 2)  # (B, M*4, 12, 12)
        # conv2 as im2col + one batched matmul over models: a grouped conv here runs one tiny kernel per
        # model on cuDNN (1,000 launches a step for 1,000 models) and a slow reference loop on the CPU.
        cols = F.unfold(h, 5).view(b, m, 4 * 25, 64)  # (B, M, 100, 8*8)
        h = torch.einsum("bmkp,mck->bmcp", cols, w2.view(m, 12, 100)) + b2.view(1, m, 12, 1)  # (B, M, 12, 64)
        h = F.max_pool2d(F.relu(h).reshape(b, m * 12, 8, 8), 2).view(b, m, 192)  # per model channel-major
        return torch.einsum("bmk,mjk->bmj", h, wf) + bf  # (B, M, 10)

    def train_steps(self, x: torch.Tensor, y: torch.Tensor, batches: torch.Tensor) -> torch.Tensor:
        """batches: (M, k, B) indices, model m's k batches. Returns each model's summed losses, (M,)."""
        batches = batches.to(x.device)
        total = torch.zeros(self.m, device=x.device)
        for step in range(batches.shape[1]):
            idx = batches[:, step]  # (M, B)
            xb = x[idx.T, 0]  # (B, M, 28, 28)
            yb = y[idx.T]  # (B, M)
            logits = self.forward(xb)
            losses = F.cross_entropy(logits.flatten(0, 1), yb.flatten(), reduction="none").view_as(yb).mean(0)
            grads = torch.autograd.grad(losses.sum(), self.params)  # model m's loss only reaches slice m
            with torch.no_grad():
                for p, g in zip(self.params, grads, strict=True):
                    p -= self.lrs.view(-1, *[1] * (p.dim() - 1)) * g
            total += losses.detach()
        return total

    def model(self, i: int) -> LeNet:
        """Model i as an ordinary LeNet (a copy), on the stacked tensors' device."""
        net = LeNet().to(self.params[0].device)
        net.load_state_dict({n: p[i].detach().clone() for n, p in zip(PARAM_NAMES, self.params, strict=True)})
        return net
