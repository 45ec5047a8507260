"""``prunekit report RUN_DIR``: its arguments and what it does."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from prunekit import run_files
from prunekit.report.build import build_report


def add_report_arguments(parser: Any) -> None:
    """Arguments of ``prunekit report``."""
    parser.add_argument("run_dir", help="a run directory whose run deployed a mixture (runs/NAME)")
    parser.add_argument("--output", "-o", help="HTML file to write (default: RUN_DIR/report.html)")
    parser.add_argument("--complexity", metavar="MODULE:FUNCTION",
                        help="prompt complexity function, e.g. prunekit_plugins.domain:complexity_of "
                             "(default: what the run recorded from its dataset, else the word count)")


def load_function(spec: str) -> Callable[[str], float]:
    """``package.module:function`` → the function (for ``--complexity``)."""
    import importlib

    from prunekit.errors import PluginError

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise PluginError(f"--complexity {spec!r}: expected MODULE:FUNCTION")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise PluginError(f"--complexity {spec!r}: {type(exc).__name__}: {exc}") from None
    if not callable(fn):
        raise PluginError(f"--complexity {spec!r} is not callable")
    return fn


def main_report(args: Any) -> int:
    """``prunekit report RUN_DIR``: rebuild the run's report from its directory."""
    from prunekit.errors import MissingPathError

    run_dir = Path(args.run_dir)
    if not run_files.has_mixture(run_dir):
        raise MissingPathError(f"{run_dir} is not a finished run with a mixture (no artifacts/mixture/manifest.json)")
    complexity = load_function(args.complexity) if args.complexity else None
    from prunekit.run import holding

    with holding(run_dir, action="report"):  # it writes report/ there, as the run does at its end
        print(f"wrote {build_report(run_dir, complexity=complexity, output=args.output)}")
    return 0
