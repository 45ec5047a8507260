"""``prunekit plugins [--kind KIND]``: the registered components as a table.
A light command: imports no torch, diffusers or DeepSpeed."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("plugins", help="list registered components")
    parser.add_argument("--kind", help="only this kind (router, gate, loss, ...)")
    parser.set_defaults(func=main)
    return parser


def main(args: argparse.Namespace) -> int:
    from rich.table import Table

    from prunekit.console import console
    from prunekit.errors import PluginError
    from prunekit.registry import KINDS, get_registry, unknown_name_message

    kind = args.kind
    if kind is not None and kind not in KINDS:
        raise PluginError(unknown_name_message("kind", kind, KINDS))
    registry = get_registry()
    table = Table(title="prunekit components", show_lines=False)
    for column in ("kind", "name", "origin", "description"):
        table.add_column(column, overflow="fold")
    for c in registry.components(kind):
        table.add_row(c.kind, c.name, c.origin, c.summary)
    from rich.console import Console

    Console(width=max(console().width, 120)).print(table)
    return 0
