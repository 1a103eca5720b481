"""Atomic file writes: a temporary file beside the target, fsync, then rename. Never a half-written file.

A temporary file is named `.NAME.PID.RANDOM.tmp`, so that a writer killed by `kill -9` or a power cut
leaves something `remove_stale_temps` can recognise and remove later.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# A temporary file untouched this long is stale even when its writer's process id cannot be told: a write
# (write, fsync, rename) takes seconds at most.
STALE_AFTER_S = 600


def write_atomic(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write `data` to `path` whole or not at all, with `mode` (default: 0o666 less the umask)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path.name), suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask() if mode is None else mode)  # mkstemp makes 0600
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def temp_prefix(name: str) -> str:
    """The start of a temporary file's or folder's name for `name`: hidden, with the writer's process id."""
    return f".{name}.{os.getpid()}."


def remove_stale_temps(folder: Path, names: Iterable[str], max_age_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove the temporary files and folders for `names` in `folder` that a killed writer left behind:
    those whose process is gone, or (an older lenet's, without a process id) untouched for `max_age_s`.
    Best effort: a folder it cannot read or write is left as it is. Returns what it removed."""
    prefixes = sorted((f".{n}." for n in names), key=len, reverse=True)
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    removed = []
    for entry in entries:
        prefix = next((p for p in prefixes if entry.name.startswith(p)), None)
        if prefix is None or not entry.name.endswith(".tmp") or not is_stale(entry, prefix, max_age_s):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        except OSError:
            continue
        removed.append(Path(entry.path))
    return removed


def is_stale(entry: os.DirEntry, prefix: str, max_age_s: float) -> bool:
    pid = entry.name[len(prefix) :].split(".", 1)[0]
    if pid.isdigit() and not process_alive(int(pid)):
        return True
    try:
        return time.time() - entry.stat(follow_symlinks=False).st_mtime > max_age_s
    except OSError:
        return False


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, as another user
        return True
    return True


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: Path, text: str) -> None:
    write_atomic(path, text.encode())


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(finite_or_none(obj), indent=2, allow_nan=False) + "\n")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    write_text(path, "".join(json.dumps(finite_or_none(r), allow_nan=False) + "\n" for r in rows))


def finite_or_none(value: Any) -> Any:
    """JSON has no NaN or infinity (Python would write the invalid token NaN): such a float becomes null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_none(v) for v in value]
    return value
