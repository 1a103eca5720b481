"""lenet: rerun, understand and use the classic LeNet-on-MNIST experiment.

From Python (implemented in lenet.api, loaded on first use so `import lenet` stays light):
    lenet.train(**settings) -> Run     lenet.load(path) -> Run        lenet.predict(image, model=None)
    lenet.sweep(seeds, **grid) -> Sweep   lenet.reproduce(seeds) -> Report   lenet.load_mnist() -> Split

`train`, `predict`, `sweep` and `reproduce` are also the names of submodules. As attributes of the
package they are always the functions; reach a submodule with `from lenet.train import ...` (or
importlib.import_module("lenet.train")), never as `lenet.train.NAME`.
"""

import sys
import types

__version__ = "0.1.0"
__all__ = [
    "Report",
    "Run",
    "Sweep",
    "__version__",
    "load",
    "load_mnist",
    "predict",
    "reproduce",
    "sweep",
    "train",
]
_API = frozenset(__all__) - {"__version__"}


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: object) -> None:
        if name in _API and isinstance(value, types.ModuleType):
            return  # the import system naming a submodule after its parent: the function keeps the name
        super().__setattr__(name, value)


def __getattr__(name: str) -> object:
    if name in _API:
        from lenet import api

        value = getattr(api, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})


sys.modules[__name__].__class__ = _Package
