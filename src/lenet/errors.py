"""lenet's errors: one family, so that `except LenetError` catches every error a user can provoke through
the Python API (lenet.train, load, predict, sweep, reproduce, ablate, load_mnist), each with a one-line
message that names the argument or the file. It is a ValueError: a lenet error is about what was given.

    LenetError
      ConfigError   a bad value; the message names the flag or keyword (lenet.config)
      RunError      a run folder, model or checkpoint missing or unusable (lenet.runs)
      ImageError    an image that cannot be read as a digit (lenet.prediction)
      InspectError  a request `lenet inspect` cannot serve (lenet.inspection)
    and, each declared with its module: DataError, SourceError (data and its download), DeviceError,
    ExportError, ServeError (tests/test_api.py lists which have joined).

The `lenet` command turns each into one line and an exit status (lenet.cli.exit_status). File-system
refusals (a full disk, a read-only folder) stay OSErrors, read as one line by `os_line`.
"""

from __future__ import annotations

import errno
import re


class LenetError(ValueError):
    """Something lenet was asked cannot be done; the message is one line naming the argument or file."""


OS_FIXES = {
    errno.ENOTDIR: "a part of that path is a file, not a folder: choose another path",
    errno.EISDIR: "a folder is where a file should be: move it away, or give a file path",
    errno.EEXIST: "a file is where a folder should be: move it away or choose another path",
    errno.ENOENT: "no such file or folder: check the path",
    errno.EACCES: "permission denied: choose a writable path",
    errno.EPERM: "not permitted: choose a writable path",
    errno.EROFS: "read-only file system: choose a writable path",
    errno.ENOSPC: "the disk is full: free some space and run it again",
}
ATOMIC_TMP = re.compile(r"(?<![^/])\.([^/]+)\.[^./]+\.tmp$")  # lenet.atomic's .NAME.RANDOM.tmp -> NAME


def os_line(e: OSError, path: object = None) -> str:
    """An OSError as one line that names the path (`path`, else the error's), what went wrong and what to
    do. lenet.atomic's temporary file is named for the file it makes."""
    given = [path] if path is not None else [e.filename, e.filename2]
    paths = list(dict.fromkeys(ATOMIC_TMP.sub(r"\1", str(p)) for p in given if p is not None))
    return f"{' -> '.join(paths) or 'a file'}: {os_reason(e)}"


def os_reason(e: OSError) -> str:
    """What the file system said and what to do about it, e.g. "No space left on device; the disk is full:
    free some space and run it again"."""
    reason = e.strerror or " ".join(str(e).split()) or type(e).__name__
    return f"{reason}; {OS_FIXES.get(e.errno, 'check the path and its permissions')}"


def one_line(error: BaseException) -> str:
    """An exception's message on one line (torch's and PIL's can span several), or its type's name."""
    return " ".join(str(error).split()) or type(error).__name__
