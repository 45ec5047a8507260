"""The ``prunekit`` command line: the parser, built from the command modules in :mod:`prunekit.commands`
(each sets ``func``), and the error printing (one ``error:`` line each, the exit codes of
:mod:`prunekit.errors`, the rank under a launcher). Light commands never import torch, diffusers or
DeepSpeed."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from prunekit import __version__
from prunekit.commands import COMMANDS
from prunekit.errors import PrunekitError, RecipeError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prunekit",
        description="Config-driven pruning of text-to-image diffusion models.",
    )
    parser.add_argument("--version", action="version", version=f"prunekit {__version__}")
    # The ``deepspeed`` launcher appends --local_rank=N to the command; LOCAL_RANK says the same.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:  # each module adds its sub-parser, with func= its main
        importlib.import_module(f"prunekit.commands.{name}").add_parser(sub)
    return parser


def _print_errors(exc: PrunekitError) -> None:
    from prunekit import distributed
    from prunekit.errors import PeerRankError

    if isinstance(exc, PeerRankError):
        return  # the failing rank printed it
    lines = exc.problems if isinstance(exc, RecipeError) else str(exc).splitlines()
    where = f"[rank {distributed.rank()}] " if distributed.world_size() > 1 else ""
    for line in lines:
        print(f"error: {where}{line}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    # Overrides may come before or after options (``run R.yaml --output D a.b=1``), which a plain
    # argparse positional cannot take; leftovers of the KEY=VALUE form are overrides.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if getattr(args, "overrides", None) is None or any(x.startswith("-") or "=" not in x for x in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    if args.command is None:
        parser.print_help()
        return 0
    try:
        code = args.func(args)
        from prunekit import distributed

        distributed.shutdown()
        return code
    except PrunekitError as exc:
        _print_errors(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted; continue with --resume", file=sys.stderr)
        return 130
    except OSError as exc:  # a problem of the machine (a full disk, a permission): errno text and path
        where = f": {exc.filename}" if exc.filename is not None else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except Exception as exc:
        from prunekit import distributed

        if distributed.world_size() <= 1:
            raise
        # Under a launcher a traceback per rank buries the cause; the run log holds rank 0's.
        print(f"error: [rank {distributed.rank()}] {type(exc).__name__}: {exc}".splitlines()[0], file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
