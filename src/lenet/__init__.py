"""lenet: rerun, understand and use the classic LeNet-on-MNIST experiment."""

__version__ = "0.1.0"
