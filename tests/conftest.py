"""Shared fixtures: the real MNIST split (fetched by `make test` before pytest runs)."""

from __future__ import annotations

import pytest
import torch

from lenet.data import Split, load_split


@pytest.fixture(scope="session")
def mnist_split() -> Split:
    """The real MNIST split on the CPU. Fails (never skips) without the data: run `lenet data fetch`."""
    return load_split("mnist", device="cpu")


@pytest.fixture(scope="session")
def small_split(mnist_split: Split) -> Split:
    """5,000 real training images and 1,000 validation/test images: fast runs with real behaviour."""
    s = mnist_split
    return Split(
        train_x=s.train_x[:5000],
        train_y=s.train_y[:5000],
        val_x=s.val_x[:1000],
        val_y=s.val_y[:1000],
        test_x=s.test_x[:1000],
        test_y=s.test_y[:1000],
    )


@pytest.fixture(autouse=True)
def _fixed_threads():
    """Tests that set the thread count (bit-identity claims) must not leak it: restore it after each."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def interrupt_at_epoch():
    """interrupt_at_epoch(n): a log function that stops training (as Ctrl-C would) when epoch n's line is
    printed, so epoch n-1's checkpoint is on disk and epoch n's is not (end_epoch logs, then checkpoints)."""

    def make(n: int):
        def log(line: str) -> None:
            if line.startswith(f"Train Set: Epoch {n},"):
                raise KeyboardInterrupt

        return log

    return make
