"""``prunekit eval RUN_OR_MIXTURE [overrides]``: re-run the evaluation of a finished run (or of a bare
mixture folder with ``--recipe``); for a run, update its metrics.json and rebuild its report."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prunekit import run_files
from prunekit.evaluation.config import preflight_metrics
from prunekit.evaluation.stage import evaluate_mixture, merge_evaluation
from prunekit.report.build import build_report


def add_eval_arguments(parser: Any) -> None:
    """Arguments of ``prunekit eval``."""
    parser.add_argument("path", help="run directory (runs/NAME) or mixture folder (.../artifacts/mixture)")
    parser.add_argument("overrides", nargs="*",
                        help="dotlist overrides of the run's recipe, e.g. metrics.fid.inception_weights=/w/inception.pth")
    parser.add_argument("--recipe", help="recipe giving metrics, eval and dataset (default: the run's recipe.yaml)")
    parser.add_argument("--output", "-o", help="JSON file for the results (default: the run's artifacts/evaluation.json, "
                                               "or MIXTURE/evaluation.json)")
    parser.add_argument("--device", default=None, help="device for generation (default: the model section's)")


def _locate(path: Path) -> tuple[Path, Path | None]:
    from prunekit.errors import MissingPathError
    from prunekit.mixture import MANIFEST

    if run_files.has_mixture(path):
        return run_files.mixture_dir(path), path
    if (path / MANIFEST).is_file():
        run_dir = path.parent.parent
        return path, run_dir if (run_dir / "recipe.yaml").is_file() and path.parent.name == run_files.ARTIFACTS else None
    raise MissingPathError(f"{path} is neither a run directory with artifacts/mixture nor a mixture folder")


def _print_summary(result: Mapping[str, Any]) -> None:
    rows = [("teacher", result.get("teacher", {}).get("metrics", {})), ("mixture", result["mixture"]["metrics"])]
    rows += [(f"expert {e['expert']} ({e['images']} img)", e.get("metrics", {})) for e in result.get("experts", [])]
    keys = list(dict.fromkeys(k for _, m in rows for k in m))
    for label, values in rows:
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items() if k in keys)
        print(f"{label}: {shown}")


def main_eval(args: Any) -> int:
    """``prunekit eval PATH [overrides]``: evaluate a run's mixture again (updates its metrics and report).
    A run directory is held (its ``run.lock``) meanwhile, as a run holds it."""
    from prunekit.run import holding

    _, run_dir = _locate(Path(args.path))
    if run_dir is None:
        return _main_eval(args)
    with holding(run_dir, action="eval"):
        return _main_eval(args)


def _main_eval(args: Any) -> int:
    from prunekit.errors import MissingPathError
    from prunekit.recipe import load_recipe
    from prunekit.registry import get_registry
    from prunekit.run import atomic_write_json

    mixture_dir, run_dir = _locate(Path(args.path))
    recipe_file = Path(args.recipe) if args.recipe else (run_dir / "recipe.yaml" if run_dir else None)
    if recipe_file is None:
        raise MissingPathError(f"{mixture_dir} is not inside a run directory; pass --recipe R.yaml with the metrics to use")
    registry = get_registry()
    recipe = load_recipe(recipe_file, list(args.overrides or []), registry=registry)
    problems = preflight_metrics(recipe.data, registry)
    if problems:
        raise MissingPathError("\n".join(problems))
    from prunekit.console import quiet_libraries

    quiet_libraries()
    result = evaluate_mixture(mixture_dir, recipe.data, registry, device=args.device)
    output = Path(args.output) if args.output else (run_files.evaluation_file(run_dir) if run_dir
                                                    else mixture_dir / run_files.EVALUATION)
    atomic_write_json(output, result)
    print(f"wrote {output}")
    if run_dir is not None and not args.output:
        metrics_file = run_dir / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
        atomic_write_json(metrics_file, merge_evaluation(metrics, result))
        print(f"wrote {build_report(run_dir, registry=registry)}")
    _print_summary(result)
    return 0
