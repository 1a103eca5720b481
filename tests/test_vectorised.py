"""lenet.vectorised: M plain-SGD runs as one group. (Whole groups against runs alone: tests/test_sweep.py.)"""

import pytest
import torch

from lenet.config import TrainConfig
from lenet.data import epoch_batches
from lenet.engines import TorchEngine
from lenet.model import make_model
from lenet.vectorised import StackedModels


@pytest.mark.parametrize("m", [1, 2])
def test_a_group_of_one_steps_like_its_model_alone(small_split, m):
    """A group of one crashed ("view size is not compatible" in StackedModels.forward): a group of any size,
    one included, takes the steps each of its models takes alone."""
    cfgs = [TrainConfig(seed=k, engine="torch") for k in range(m)]
    models = [make_model(c) for c in cfgs]
    stack = StackedModels(models, [c.lr for c in cfgs], "cpu")
    batches = torch.stack([epoch_batches(len(small_split.train_x), 100, c.seed, 0)[:3] for c in cfgs])
    losses = stack.train_steps(small_split.train_x, small_split.train_y, batches)  # (M,)
    for i, cfg in enumerate(cfgs):
        alone = make_model(cfg)
        loss = TorchEngine().sgd_steps(alone, cfg.lr, small_split.train_x, small_split.train_y, batches[i])
        assert losses[i].item() == pytest.approx(loss.item(), rel=1e-5)
        grouped = stack.copy_into(i, make_model(cfg))
        for p, q in zip(grouped.parameters(), alone.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=0, atol=1e-5)
