"""lenet: rerun, understand and use the classic LeNet-on-MNIST experiment.

From Python (implemented in lenet.api, loaded on first use so `import lenet` stays light):
    lenet.train(lr=0.01, epochs=20, ...) -> Run   lenet.load(path) -> Run   lenet.predict(image) -> Prediction
    lenet.sweep(seeds, **grid) -> Sweep   lenet.reproduce(seeds) -> Report   lenet.load_mnist() -> Split
    lenet.ablate(seeds) -> Sweep

Accuracies are fractions in [0, 1] in every result, row and file (Run.test_accuracy 0.9549 is 95.49%);
only text for people (log lines, tables, reports, plots) shows percent.

Each is the one place its job is orchestrated: the `lenet` command of the same name calls it.
The modules behind them have other names (lenet.training, lenet.sweeps, lenet.prediction, lenet.reproduction).
"""

from lenet.errors import LenetError
from lenet.version import __version__

__all__ = [
    "LenetError",
    "Prediction",
    "Report",
    "Run",
    "Sweep",
    "__version__",
    "ablate",
    "load",
    "load_mnist",
    "predict",
    "reproduce",
    "sweep",
    "train",
]
_API = frozenset(__all__) - {"__version__", "LenetError"}


def __getattr__(name: str) -> object:
    if name in _API:
        from lenet import api

        value = getattr(api, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
