"""``prunekit report RUN_DIR``: rebuild a run's report.html. The arguments and the work are
:mod:`prunekit.report`'s (``add_report_arguments``, ``main_report``); this module only wires them in."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    from prunekit import report

    parser = subparsers.add_parser("report", help="rebuild a run's report.html from its directory")
    report.add_report_arguments(parser)
    parser.set_defaults(func=main)
    return parser


def main(args: argparse.Namespace) -> int:
    from prunekit.report import main_report

    return main_report(args)
