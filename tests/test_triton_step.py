"""lenet.engines.triton_step: the fused Triton SGD step against the torch reference, in Triton's interpreter.

TRITON_INTERPRET=1 must be set when triton.jit decorates the kernels, so it is set before lenet is imported;
the kernels then run on CPU tensors (slowly: the sizes here are small). It is unset again after the imports
and set only around these tests, so that other tests' CPU groups do not take the interpreted step.
Tolerances are float32's: parameters after 3 steps to rtol 1e-4 and atol 1e-5, summed losses to rtol 1e-5.
Seen: parameters within 1.2e-6 (4e-7 of the largest), losses within 3e-7 relative, one step's gradient
within 3e-6 of its largest entry.
"""

import json
import os
import re

INTERPRET_BEFORE = os.environ.get("TRITON_INTERPRET")
os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from lenet.config import TrainConfig  # noqa: E402
from lenet.data import epoch_batches  # noqa: E402
from lenet.engines import EngineError, triton_step  # noqa: E402
from lenet.model import LeNet, Shape, make_model  # noqa: E402
from lenet.stacked import StackedModels  # noqa: E402

if INTERPRET_BEFORE is None:
    del os.environ["TRITON_INTERPRET"]
else:
    os.environ["TRITON_INTERPRET"] = INTERPRET_BEFORE


@pytest.fixture(autouse=True)
def interpreted(monkeypatch):
    """TRITON_INTERPRET=1 around each test here, where `available` looks for it."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def group(stds: list[float], lrs: list[float]) -> tuple[StackedModels, StackedModels]:
    """The same models twice (seed i, init_std stds[i]): one for the reference, one for the fused step."""
    models = [make_model(TrainConfig(seed=i, init_std=std)) for i, std in enumerate(stds)]
    return StackedModels(models, lrs, "cpu"), StackedModels(models, lrs, "cpu")


def batches_of(n: int, m: int, steps: int, batch: int) -> torch.Tensor:
    """Model i's first `steps` batches of an epoch of n images, as training draws them: (m, steps, batch)."""
    return torch.stack([epoch_batches(n, batch, seed, 0)[:steps] for seed in range(m)])


def test_available_on_the_cpu_only_in_the_interpreter(monkeypatch):
    assert triton_step.INTERPRETED, "lenet.engines.triton_step was imported before TRITON_INTERPRET=1 was set"
    assert triton_step.available("cpu")
    monkeypatch.delenv("TRITON_INTERPRET")
    assert not triton_step.available("cpu")  # what every other test sees
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(triton_step, "triton", None)
    assert not triton_step.available("cpu")


@pytest.mark.parametrize(
    ("stds", "lrs", "batch"),
    [
        ([0.1], [0.05], 5),  # one model, a batch smaller than a tile
        ([0.1, 1.0, 0.1], [0.01, 0.05, 0.1], 20),  # a full tile and a tail of 4; the large init of the report
    ],
)
def test_steps_match_the_torch_reference(small_split, stds, lrs, batch):
    """Three steps of every model on real MNIST batches: the same losses and the same weights after."""
    x, y = small_split.train_x, small_split.train_y
    reference, fused = group(stds, lrs)
    before = [p.detach().clone() for p in fused.params]
    batches = batches_of(len(x), len(stds), 3, batch)
    want = reference.train_steps(x, y, batches)
    with torch.no_grad():
        got = triton_step.train_steps(fused.params, fused.lrs, x, y, batches)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for start, p, q in zip(before, fused.params, reference.params, strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-4, atol=1e-5)
        assert (p - start).abs().amax(dim=tuple(range(1, p.dim()))).min() > 1e-4  # every model moved


def test_one_step_is_the_autograd_gradient(small_split):
    """lr = 1: one step subtracts exactly the gradient autograd gives each model alone (a full tile of 16)."""
    x, y = small_split.train_x, small_split.train_y
    stds = [1.0, 0.1]
    models = [make_model(TrainConfig(seed=i, init_std=std)) for i, std in enumerate(stds)]
    fused = StackedModels(models, [1.0, 1.0], "cpu")
    before = [p.detach().clone() for p in fused.params]
    batches = batches_of(len(x), len(stds), 1, 16)
    with torch.no_grad():
        losses = triton_step.train_steps(fused.params, fused.lrs, x, y, batches)
    for i, model in enumerate(models):
        idx = batches[i, 0]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        grads = torch.autograd.grad(loss, list(model.parameters()))
        assert losses[i].item() == pytest.approx(loss.item(), rel=1e-5)
        for start, p, g in zip(before, fused.params, grads, strict=True):
            torch.testing.assert_close(start[i] - p[i].detach(), g, rtol=1e-4, atol=1e-5)


def tied_model() -> LeNet:
    """A LeNet whose pools see exact ties between different patches: conv1 reads only its first
    tap and conv2 only the first tap of input channel 0, so on images constant over aligned 4 x 4 blocks
    every 2x2 window of both convolutions holds four equal values, and the other taps see different pixels."""
    model = make_model(TrainConfig(seed=3))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        model.conv1.weight.zero_()[:, 0, 0, 0] = torch.tensor([1.0, 0.5, 2.0, 1.5])
        model.conv1.bias.zero_()
        model.conv2.weight.zero_()[:, 0, 0, 0] = torch.randn(12, generator=g)
        model.conv2.bias.copy_(torch.rand(12, generator=g) * 0.1)
    return model


def test_pool_ties_go_to_the_first_maximum():
    """As torch's max_pool2d backward: the whole gradient to the first of equal maxima, in row-major order."""
    g = torch.Generator().manual_seed(0)
    x = torch.kron(torch.rand(20, 1, 7, 7, generator=g), torch.ones(4, 4))  # (20, 1, 28, 28), 4 x 4 blocks
    y = torch.randint(0, 10, (20,), generator=g)
    model = tied_model()
    fused = StackedModels([model], [1.0], "cpu")
    before = [p.detach().clone() for p in fused.params]
    batches = torch.arange(16).view(1, 1, 16)
    with torch.no_grad():
        triton_step.train_steps(fused.params, fused.lrs, x, y, batches)
    grads = torch.autograd.grad(F.cross_entropy(model(x[:16]), y[:16]), list(model.parameters()))
    for start, p, grad in zip(before, fused.params, grads, strict=True):
        torch.testing.assert_close(start[0] - p[0].detach(), grad, rtol=1e-4, atol=1e-6)


def bad_inputs(params, lrs, x, y, batches):
    """(name, the five arguments with one thing wrong) for each kind of refusal."""

    def swap(i: int, t: torch.Tensor) -> list[torch.Tensor]:
        return [t if j == i else p for j, p in enumerate(params)]

    return [
        ("params[0] (conv1.weight)", (swap(0, params[0].double()), lrs, x, y, batches)),
        (
            "params[4] (fc.weight)",
            (swap(4, params[4].transpose(1, 2).contiguous().transpose(1, 2)), lrs, x, y, batches),
        ),
        ("params[5] (fc.bias)", (swap(5, params[5][:, :9].contiguous()), lrs, x, y, batches)),
        ("needs the 6 stacked parameters", (params[:5], lrs, x, y, batches)),
        ("lrs", (params, lrs.to("meta"), x, y, batches)),
        ("lrs", (params, lrs[:1], x, y, batches)),
        ("x", (params, lrs, x[:, :, :, :27], y, batches)),
        ("x", (params, lrs, x.transpose(2, 3), y, batches)),
        ("y", (params, lrs, x, y.int(), batches)),
        ("batches", (params, lrs, x, y, batches.float())),
        ("batches", (params, lrs, x, y, batches[:, :, :0])),
    ]


def test_refuses_what_it_cannot_take(small_split, monkeypatch):
    """Each bad argument is refused in one line that names it, before any kernel runs."""
    x, y = small_split.train_x[:100], small_split.train_y[:100]
    _, fused = group([0.1, 0.1], [0.1, 0.1])
    params = [p.detach() for p in fused.params]
    batches = batches_of(len(x), 2, 1, 4)
    for name, args in bad_inputs(params, fused.lrs, x, y, batches):
        with pytest.raises(EngineError, match=f"^triton step: .*{re.escape(name)}") as e:
            triton_step.train_steps(*args)
        assert "\n" not in str(e.value)
    monkeypatch.setattr(triton_step, "SHAPE", Shape(conv2=16))
    with pytest.raises(EngineError, match="computes only the lenet-3246 network"):
        triton_step.train_steps(params, fused.lrs, x, y, batches)


# ---------------------------------------------------------------- where the fused step serves


def tiny_split(split, n: int = 100):
    """n training images and 100 validation and test images: a few interpreted steps an epoch."""
    from lenet.data import Split

    s = split
    return Split(s.train_x[:n], s.train_y[:n], s.val_x[:100], s.val_y[:100], s.test_x[:100], s.test_y[:100])


def test_a_group_on_the_fused_step_ends_like_the_torch_reference(small_split, tmp_path):
    """A vectorised group (a 1-epoch run, the 2-epoch run continuing it, another seed) on the fused step
    ends as on the torch reference step: every epoch's losses to 1e-5, the weights to 1e-5."""
    from dataclasses import replace

    from lenet.vectorised import train_group

    split = tiny_split(small_split)
    short = TrainConfig(epochs=1, lr=0.05, batch_size=20, seed=0)
    cfgs = [short, replace(short, epochs=2), TrainConfig(epochs=2, lr=0.02, batch_size=20, seed=1)]
    ends = {}
    for step in ("fused", "torch"):
        outs = [tmp_path / step / name for name in ("short", "long", "other")]
        ends[step] = train_group(cfgs, split, outs, start_from=[None, outs[0], None], step=step)
    for fused, reference in zip(ends["fused"], ends["torch"], strict=True):
        assert len(fused.rows) == len(reference.rows)
        for a, b in zip(fused.rows, reference.rows, strict=True):
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
            assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
        for p, q in zip(fused.model.parameters(), reference.model.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    assert json.loads((tmp_path / "fused" / "long" / "config.json").read_text())["started_from"]


def test_the_triton_engine_steps_one_model_like_the_torch_engine(small_split):
    """`lenet train --engine triton`: the fused step at M = 1 moves the model itself (its parameters are
    views of the group of one), as the torch engine does."""
    from lenet.engines import TorchEngine, select_engine

    cfg = TrainConfig(engine="triton", device="cpu")
    engine = select_engine(cfg, "cpu")
    assert engine.name == "triton"
    batches = epoch_batches(len(small_split.train_x), 20, 0, 0)[:3]
    fused, reference = make_model(cfg), make_model(cfg)
    x, y = small_split.train_x, small_split.train_y
    got = engine.sgd_steps(fused, 0.05, x, y, batches)
    want = TorchEngine().sgd_steps(reference, 0.05, x, y, batches)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    for p, q in zip(fused.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def test_the_triton_engine_is_refused_in_one_line_where_it_cannot_run(monkeypatch):
    from lenet.engines import select_engine

    with pytest.raises(EngineError, match="plain SGD only"):
        select_engine(TrainConfig(engine="triton", optimizer="momentum"), "cpu")
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(EngineError, match="needs triton and a CUDA device"):
        select_engine(TrainConfig(engine="triton"), "cpu")
