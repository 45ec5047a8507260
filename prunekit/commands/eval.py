"""``prunekit eval PATH [overrides]``: evaluate a run's mixture again. The arguments and the work are
:mod:`prunekit.evaluation`'s (``add_eval_arguments``, ``main_eval``); this module only wires them in."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    from prunekit import evaluation

    parser = subparsers.add_parser("eval", help="evaluate a run's mixture (metrics of its recipe)")
    evaluation.add_eval_arguments(parser)
    parser.set_defaults(func=main)
    return parser


def main(args: argparse.Namespace) -> int:
    from prunekit.evaluation import main_eval

    return main_eval(args)
