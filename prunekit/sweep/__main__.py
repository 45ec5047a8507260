"""``python -m prunekit.sweep SWEEP.yaml``: the sweep command on its own (as ``prunekit sweep``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import prunekit.sweep
from prunekit.commands.sweep import add_arguments, main
from prunekit.errors import PrunekitError, RecipeError


def _standalone(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prunekit.sweep",
                                     description=prunekit.sweep.__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return main(args)
    except PrunekitError as exc:
        for line in exc.problems if isinstance(exc, RecipeError) else str(exc).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted; run the same sweep again to continue it", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(_standalone())
