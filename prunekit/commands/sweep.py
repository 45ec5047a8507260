"""``prunekit sweep SWEEP.yaml [overrides]``: run a sweep's points and compare them (see :mod:`prunekit.sweep`)."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("sweep", help="run a grid or list of recipes and compare them")
    add_arguments(parser)
    parser.set_defaults(func=main)
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``prunekit sweep`` (added to its sub-parser)."""
    parser.add_argument("sweep", help="sweep YAML file")
    parser.add_argument("overrides", nargs="*", help="dotlist overrides for every point, e.g. model.path=/models/sd21")
    parser.add_argument("--output", "-o", help="sweep directory (default: OUTPUT_DIR/NAME from the sweep file)")
    parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                        help="skip completed points and resume interrupted ones (default); "
                             "--no-resume refuses an existing sweep directory")
    parser.add_argument("--jobs", "-j", type=_positive, default=None,
                        help="points run at once, each as its own process (default: launcher.jobs of the "
                             "sweep file, 1); give each its share, e.g. engine.threads=1 on a CPU")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate the sweep and every point's recipe, print the commands, run nothing")


def main(args: argparse.Namespace) -> int:
    """``prunekit sweep``: 0 when every point completed, 1 when some failed; invalid sweep files
    raise :class:`RecipeError` (exit 2)."""
    import json

    from prunekit.sweep.launch import _say, run_sweep
    from prunekit.sweep.schema import load_sweep

    if args.dry_run:
        sweep = load_sweep(args.sweep, output=args.output, overrides=args.overrides)
        for point in sweep.points:
            print(f"{point.label or sweep.name}\t{sweep.shown_command(point)}")
        _say(f"{args.sweep}: valid ({len(sweep.points)} points, sweep directory {sweep.directory})")
        return 0
    directory = run_sweep(args.sweep, output=args.output, resume=args.resume, overrides=args.overrides,
                          jobs=getattr(args, "jobs", None))
    state = json.loads((directory / "sweep.json").read_text())
    return 0 if all(p["status"] == "completed" for p in state["points"]) else 1
