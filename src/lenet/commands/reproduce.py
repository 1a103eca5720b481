"""`lenet reproduce`: the original's whole analysis over n seeds, with a computed verdict per claim."""

from __future__ import annotations

import argparse
from pathlib import Path

from lenet.commands.common import (
    add_runner_flags,
    add_seeds,
    make_runner,
    positive_int,
    seed_list,
    setting_type,
    sweep_progress,
)
from lenet.config import field_named


def add_parser(sub) -> None:
    p = sub.add_parser(
        "reproduce",
        help="rerun the original's whole analysis over n seeds; write report.md and report.html",
        description="Train the seed protocol, lr 0.1 and 0.001, init std 0.5 and 1.0 (and longer runs of the "
        "larger inits) with every seed, then write a report with plots and a computed verdict per claim.",
    )
    add_seeds(p, default=5, unit="configuration")
    p.add_argument(
        "--epochs",
        type=positive_int,
        default=20,
        help="epochs per run (default: the original's 20; fewer only for a quick smoke run)",
    )
    p.add_argument(
        "--long-epochs",
        type=int,
        default=60,
        help="epochs of the longer init-std runs for claim C (default: 60; 0 skips them)",
    )
    p.add_argument(
        "--recipes",
        action="store_true",
        help="also run the ablation from the seed recipe to the improved one (as `lenet ablate`) and add "
        "it to the report as a last section",
    )
    add_phase_flags(p)
    p.add_argument(
        "--out", type=Path, default=Path("reports/reproduce"), help="report folder (default: %(default)s)"
    )
    add_runner_flags(p)


def add_phase_flags(p: argparse.ArgumentParser) -> None:
    from lenet.config import PHASE_LRS, PHASE_STDS

    p.add_argument(
        "--phase-diagram",
        action="store_true",
        help="also train the stall phase diagram (every --phase-lr x --phase-init-std with --phase-seeds "
        "seeds, --epochs each) and add it to the report",
    )
    p.add_argument(
        "--phase-seeds", type=positive_int, default=20, help="seeds per phase-diagram cell (default: 20)"
    )
    for setting, values, metavar, meaning in (
        ("lr", PHASE_LRS, "LR", "learning rates"),
        ("init_std", PHASE_STDS, "STD", "conv init stddevs"),
    ):  # the grid's axes, each checked by its setting's rules
        p.add_argument(
            f"--phase-{setting.replace('_', '-')}",
            type=setting_type(field_named(setting)),
            nargs="+",
            default=list(values),
            metavar=metavar,
            help=f"{meaning} of the phase diagram (default: %(default)s)",
        )


def phase_grid(args: argparse.Namespace):
    from lenet.reproduction import PhaseGrid

    if not args.phase_diagram:
        return None
    seeds = tuple(range(args.first_seed, args.first_seed + args.phase_seeds))
    return PhaseGrid(tuple(args.phase_lr), tuple(args.phase_init_std), seeds)


def run(args: argparse.Namespace) -> int:
    from lenet.reproduction import plan, run_reproduce

    seeds = seed_list(args)
    phase = phase_grid(args)
    specs = plan(args.out, seeds, args.long_epochs, args.epochs, args.device, args.recipes, phase)[2]
    print(f"reproducing the original's analysis: {len(specs)} runs in {args.out}")
    runner = make_runner(args)
    with sweep_progress(specs, "reproduce") as bar:
        report, verdicts = run_reproduce(
            args.out,
            runner,
            seeds,
            args.long_epochs,
            args.command_line,
            args.epochs,
            args.device,
            on_epoch=lambda: bar.update(1),
            recipes=args.recipes,
            phase=phase,
        )
    for letter, v in zip("ABC", verdicts, strict=True):
        print(f"Claim {letter}: {v.word} ({v.holds} of {v.n}, {v.interval}). {v.ours}")
    print(f"wrote {report} and {args.out / 'report.md'}")
    return 0
