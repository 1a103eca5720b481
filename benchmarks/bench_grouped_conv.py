"""Why sweeps do not use the vectorised (grouped-conv) step on a CPU: its backward against a loop.

Times forward + backward of conv1 for M models as one grouped convolution and as M separate ones.
    python benchmarks/bench_grouped_conv.py [--models 8] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F


def timed(fn, device: str, repeats: int = 5) -> float:
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeats * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=int, default=8)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    m, b, dev = args.models, 100, args.device
    x = torch.rand(b, m, 28, 28, device=dev)
    w = torch.randn(m * 4, 1, 5, 5, device=dev, requires_grad=True)
    per_model = x.transpose(0, 1).reshape(m, b, 1, 28, 28)

    def grouped() -> None:
        torch.autograd.grad(F.conv2d(x, w, groups=m).sum(), w)

    def loop() -> None:
        for i in range(m):
            torch.autograd.grad(F.conv2d(per_model[i], w[i * 4 : (i + 1) * 4]).sum(), w)

    g, lp = timed(grouped, dev), timed(loop, dev)
    print(f"conv1 forward+backward, {m} models, batch {b}, {dev}, {torch.get_num_threads()} threads")
    print(f"grouped conv: {g:8.2f} ms   separate convs: {lp:8.2f} ms   grouped / separate: {g / lp:.2f}x")


if __name__ == "__main__":
    main()
