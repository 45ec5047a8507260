"""``prunekit validate RECIPE [overrides]``: validate a recipe (and its data) without running it.
A light command: imports no torch, diffusers or DeepSpeed."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("validate", help="validate a recipe and print it resolved")
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--print", action="store_true", dest="show", help="print the resolved recipe")
    parser.add_argument("--no-data", action="store_false", dest="check_data",
                        help="skip the data checks (dataset paths exist here, a sample reads, the budget's files "
                             "such as a latency table exist) and what a local model folder would say about the "
                             "model's prediction type: a recipe for another machine")
    parser.set_defaults(func=main)
    return parser


def main(args: argparse.Namespace) -> int:
    from prunekit.recipe import load_recipe

    loaded = load_recipe(args.recipe, args.overrides, model_files=args.check_data)
    if args.show:
        print(loaded.to_yaml(), end="")
    if args.check_data:  # a dataset path that does not exist here, or data without one readable sample
        from prunekit.data import preflight_budget, preflight_data
        from prunekit.errors import MissingPathError
        from prunekit.registry import get_registry

        registry = get_registry()
        problems = preflight_data(loaded.data, registry) + preflight_budget(loaded.data, registry)
        if problems:
            raise MissingPathError("\n".join(problems))
    print(f"{args.recipe}: valid (method {loaded.data['method']['name']!r})", file=sys.stderr)
    return 0
