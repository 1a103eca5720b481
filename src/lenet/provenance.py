"""Where a result comes from: lenet's, Python's and torch's versions, the machine and its CPU, the device and
engine, and the git commit. Recorded in every run's config.json and named in every report.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch


@functools.cache  # once per process: a group of 1,000 runs would start git 1,000 times
def git_commit() -> str | None:
    """The commit of the source tree lenet runs from, if it is a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


@functools.cache
def cpu_name() -> str:
    """The processor's model name ("AMD EPYC"): results differ slightly between CPUs, so figures name it."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(device: torch.device, engine: str) -> dict[str, Any]:
    from lenet.version import __version__

    return {
        "lenet": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        **({"gpu": gpu_name(device)} if device.type == "cuda" else {}),
        "engine": engine,
        "git_commit": git_commit(),
    }


@functools.cache
def gpu_name(device: torch.device) -> str:
    """The GPU's model name ("NVIDIA H200"): figures name the device they were measured on."""
    return torch.cuda.get_device_name(device)
