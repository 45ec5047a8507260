"""``prunekit run RECIPE [overrides]``: run a recipe in its run directory."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("run", help="run a recipe (validates it first)")
    parser.add_argument("recipe", help="recipe YAML file")
    parser.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. budget.target=0.7")
    parser.add_argument("--output", "-o", help="run directory (default: OUTPUT_DIR/NAME from the recipe)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run in its directory")
    parser.add_argument("--quiet", "-q", action="store_true", help="log to the run's file only")
    parser.set_defaults(func=main)
    return parser


def main(args: argparse.Namespace) -> int:
    from prunekit.recipe import load_recipe
    from prunekit.registry import get_registry
    from prunekit.runner import execute

    recipe = load_recipe(args.recipe, args.overrides)
    execute(recipe, get_registry(), output=args.output, resume=args.resume, console_log=not args.quiet)
    return 0
