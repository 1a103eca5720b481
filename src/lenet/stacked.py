"""M LeNets as six stacked tensors: their training step, and their validation, test and death check batched
over the models, for the vectorised backend (`lenet.vectorised`).

Model m's parameters are slice m of each stacked tensor. Training: model m's batch is channel m of the
input, so one grouped conv1 (groups=M) and one batched matmul for conv2 run all M networks, and autograd
keeps their gradients apart; on a GPU the fused Triton step (`lenet.engines.triton_step`) does the same in
two launches a step, and this torch step is its reference. Evaluation: every model reads the same images,
so conv1 of all M models is one ordinary convolution with M x 4 output channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lenet.engines import Engine, EngineError
from lenet.model import SHAPE, LeNet

PARAM_NAMES = tuple(SHAPE.param_shapes())  # conv1.weight, conv1.bias, conv2.weight, ... (the model's order)
STEPS = ("auto", "fused", "torch", "each")  # the training step (StackedModels)
CONV1 = SHAPE.conv1 * SHAPE.conv1_side**2  # 2,304 floats a model and image: conv1's output
POOL1 = CONV1 // SHAPE.pool**2  # 576
COLS = SHAPE.conv1 * SHAPE.kernel**2 * SHAPE.conv2_side**2  # 6,400: conv2's im2col columns
CONV2 = SHAPE.conv2 * SHAPE.conv2_side**2  # 768
# float32 bytes a model and image takes in the torch step's activations (and their gradients' peak), with
# room: conv1 before and after ReLU and its gradient, the columns and their gradient, conv2 likewise
ACTIVATION_BYTES = 4 * (3 * CONV1 + POOL1 + 2 * COLS + 3 * CONV2 + SHAPE.features)


def fused_available(device: torch.device) -> bool:
    from lenet.engines import triton_step

    return triton_step.available(device)


class StackedModels:
    """M LeNets as six stacked tensors, each with a leading model axis."""

    def __init__(
        self,
        models: list[LeNet],
        lrs: list[float],
        device: torch.device | str,
        step: str = "torch",
        engines: list[Engine] | None = None,
    ) -> None:
        """`step`: "torch" (all models in one autograd graph: the reference), "fused" (the Triton step;
        EngineError where it cannot run), "each" (each model on its own `engines[m]`, e.g. the CPU's fused
        C++ kernel: on a CPU, M models cost M runs' steps either way, and this is the fastest; the models
        become views of the stack, `attach`), or "auto" (`resolve_step`)."""
        self.m, device = len(models), torch.device(device)
        step = resolve_step(step, device)
        self.params = [
            torch.stack([dict(mod.named_parameters())[n].detach() for mod in models])
            .to(device)
            .requires_grad_()
            for n in PARAM_NAMES
        ]
        self.lrs = torch.tensor(lrs, dtype=torch.float32, device=device)
        if step == "each" and (engines is None or len(engines) != self.m):
            raise EngineError("the step 'each' needs one engine per model")
        self.step, self.engines, self.models = step, engines, models
        if step == "each":  # the engines step the models: they must be the stack's views
            self.attach(models)

    def attach(self, models: list[LeNet]) -> None:
        """Make each model's parameters views of its slice: the models then always read the group's weights,
        and nothing is copied back after a step."""
        with torch.no_grad():
            for i, model in enumerate(models):
                for p, stacked in zip(model.parameters(), self.params, strict=True):
                    p.data = stacked[i].detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, M, 28, 28), channel m is model m's batch -> logits (B, M, 10)."""
        w1, b1 = self.params[:2]
        m, b, c1, k = self.m, x.shape[0], SHAPE.conv1, SHAPE.kernel
        h = F.conv2d(x, w1.view(m * c1, 1, k, k), b1.view(-1), groups=m)  # (B, M*4, 24, 24)
        return self.head(F.max_pool2d(F.relu(h), SHAPE.pool).view(b, m, c1, -1))  # (B, M, 4, 144)

    def head(self, pooled: torch.Tensor, params: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Everything after conv1's pool: (B, M, 4, 144) -> logits (B, M, 10)."""
        return self.classify(self.conv2(pooled, params), params)

    def conv2(self, pooled: torch.Tensor, params: list[torch.Tensor] | None = None) -> torch.Tensor:
        """(B, M, 4, 144) pooled conv1 -> (B, M, 12, 64) conv2 after its ReLU.

        conv2 is im2col + one batched matmul over models: a grouped conv here runs one tiny kernel per model
        on cuDNN (1,000 launches a step for 1,000 models) and a slow reference loop on the CPU."""
        _, _, w2, b2, *_ = params or self.params
        s, m, b = SHAPE, w2.shape[0], pooled.shape[0]
        side, k = s.conv1_side // s.pool, s.kernel
        cols = F.unfold(pooled.reshape(b, m * s.conv1, side, side), k)  # (B, M*4*25, 64)
        cols = cols.view(b, m, s.conv1 * k * k, s.conv2_side**2)
        h = torch.einsum("bmkp,mck->bmcp", cols, w2.reshape(m, s.conv2, s.conv1 * k * k))
        return F.relu(h + b2.view(1, m, s.conv2, 1))

    def classify(self, conv2: torch.Tensor, params: list[torch.Tensor] | None = None) -> torch.Tensor:
        """(B, M, 12, 64) conv2 after ReLU -> logits (B, M, 10)."""
        *_, wf, bf = params or self.params
        s, m, b = SHAPE, wf.shape[0], conv2.shape[0]
        side = s.conv2_side
        h = F.max_pool2d(conv2.reshape(b, m * s.conv2, side, side), s.pool).reshape(b, m, s.features)
        return torch.einsum("bmk,mjk->bmj", h, wf) + bf  # (B, M, 10), features per model channel-major

    def conv1_shared(self, x: torch.Tensor, params: list[torch.Tensor] | None = None) -> torch.Tensor:
        """x: (B, 1, 28, 28), the same images for every model -> conv1 after ReLU, (B, M, 4, 576)."""
        w1, b1, *_ = params or self.params
        m, c1, k = w1.shape[0], SHAPE.conv1, SHAPE.kernel
        h = F.conv2d(x, w1.reshape(m * c1, 1, k, k), b1.reshape(-1))  # one conv, M*4 output channels
        return F.relu(h).view(x.shape[0], m, c1, -1)

    def pool1(self, conv1: torch.Tensor) -> torch.Tensor:
        """(B, M, 4, 576) -> (B, M, 4, 144)."""
        b, m, c1, side = conv1.shape[0], conv1.shape[1], SHAPE.conv1, SHAPE.conv1_side
        return F.max_pool2d(conv1.reshape(b, m * c1, side, side), SHAPE.pool).view(b, m, c1, -1)

    def train_steps(self, x: torch.Tensor, y: torch.Tensor, batches: torch.Tensor) -> torch.Tensor:
        """batches: (M, k, B) indices, model m's k batches. Returns each model's summed losses, (M,)."""
        batches = batches.to(x.device)
        if self.step == "fused":
            from lenet.engines import triton_step

            with torch.no_grad():
                return triton_step.train_steps(self.params, self.lrs, x, y, batches.contiguous())
        if self.step == "each":  # the models are views of the stack (`attach`): their steps move it
            lrs = self.lrs.tolist()
            losses = [
                e.sgd_steps(mod, lr, x, y, b)
                for e, mod, lr, b in zip(self.engines, self.models, lrs, batches, strict=True)
            ]
            return torch.stack([loss.to(x.device) for loss in losses])
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

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Every model on the same images, `batch` at a time: (mean cross-entropy (M,), correct (M,)), on the
        device (no host sync)."""
        loss = torch.zeros(self.m, device=x.device, dtype=torch.float64)
        correct = torch.zeros(self.m, device=x.device, dtype=torch.long)
        for start in range(0, len(x), batch):
            xb, yb = x[start : start + batch], y[start : start + batch]
            logits = self.head(self.pool1(self.conv1_shared(xb)))  # (B, M, 10)
            target = yb.view(-1, 1).expand(-1, self.m)
            ce = F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none").view_as(target)
            loss += ce.sum(0).double()
            correct += (logits.argmax(2) == target).sum(0)
        return (loss / len(x)).float(), correct

    @torch.no_grad()
    def copy_into(self, i: int, model: LeNet) -> LeNet:
        """Write model i's weights into `model` (an ordinary LeNet, for validation and checkpoints)."""
        for p, stacked in zip(model.parameters(), self.params, strict=True):
            p.copy_(stacked[i])
        return model

    @torch.no_grad()
    def fired(self, x: torch.Tensor, models: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """For models `models` (indices into the group) on images x: which conv1 and conv2 channels are
        positive after their ReLU somewhere, (len(models), 4) and (len(models), 12), as
        `lenet.dead.dead_units` sees them for one model."""
        params = [p[models] for p in self.params]
        conv1 = self.conv1_shared(x, params)  # (B, m, 4, 576)
        fired1 = (conv1 > 0).any(dim=3).any(dim=0)  # (m, 4)
        conv2 = self.conv2(self.pool1(conv1), params)  # (B, m, 12, 64)
        fired2 = (conv2 > 0).any(dim=3).any(dim=0)
        # every conv1 channel dead: conv2 reads zeros, and each channel is relu(its bias) everywhere
        zeros = ~fired1.any(dim=1)
        fired2[zeros] = params[3][zeros] > 0
        return fired1, fired2


def resolve_step(step: str, device: torch.device) -> str:
    """The step `step` names on `device`; "auto": fused where it runs, each model alone on a CPU, else the
    torch group step. EngineError, in one line, for a step that cannot run here."""
    if step not in STEPS:
        raise EngineError(f"the vectorised step must be one of {', '.join(STEPS)} (got {step!r})")
    if step == "fused" and not fused_available(device):
        raise EngineError(f"the fused step needs triton and a CUDA device (got {device.type})")
    if step == "auto":
        return "fused" if fused_available(device) else "each" if device.type == "cpu" else "torch"
    return step


def group_size(device: torch.device, batch: int, runs: int) -> int:
    """How many of `runs` runs of batch size `batch` one group holds on `device`: on a GPU as many as half
    its free memory takes; on a CPU all (each model steps alone, the group needs no room to grow)."""
    if device.type == "cpu":
        return max(1, runs)
    return max(1, min(runs, free_bytes(device) // per_model_bytes(batch)))


def per_model_bytes(batch: int) -> int:
    """What one model of a group needs on the device for a training step of `batch` images: its batch, its
    activations and their gradients (autograd's reference step; the fused step needs less)."""
    return batch * (SHAPE.image**2 * 4 + 2 * ACTIVATION_BYTES) + 64 * 1024


def free_bytes(device: torch.device) -> int:
    """Memory a group may use on `device`: half of what is free on a GPU, 4 GiB elsewhere."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    return 4 * 2**30


def eval_batch(models: int, device: torch.device) -> int:
    """Images per batched evaluation of `models` models that fit in `free_bytes`."""
    return max(1, min(2000, free_bytes(device) // max(1, models * ACTIVATION_BYTES)))
