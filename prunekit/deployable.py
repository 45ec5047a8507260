"""What a method deployed, and what the core does with it after the method returns.

The contract: a method whose run ends with something a user deploys adds one entry to the dict its
``run(run)`` returns, ``"deployable": Deployable(kind, ...)``. The runner takes that entry out (it
never reaches ``metrics.json``) and then:

1. when the recipe has a ``metrics:`` section, runs the ``evaluate`` stage on it (settings: the
   recipe's ``eval:`` section) and merges the results into the metrics (``evaluation``, ``teacher``,
   ``mixture`` or ``model``, ``experts[i].metrics``);
2. saves ``metrics.json``;
3. for a mixture, writes ``report.html`` (the core sections plus those plugins add through the
   ``prunekit_report_sections`` hook).

A method that deploys nothing (an analysis, a classifier) returns no such entry and gets none of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from prunekit import run_files

KEY = "deployable"
KINDS = ("mixture", "pipeline")
PIPELINE_DIR = "pipeline"


@dataclass
class Deployable:
    """What a run deployed.

    ``kind``: ``mixture`` — a prunekit mixture folder (:mod:`prunekit.mixture`), always the run's
    ``artifacts/mixture`` (the report and ``prunekit eval`` find it there), whose ``artifacts/routing.json``
    and ``artifacts/encoded`` say which training prompts went to which expert (:mod:`prunekit.run_files`);
    or ``pipeline`` — a diffusers pipeline folder (``path``, default ``artifacts/pipeline``).

    ``entry`` (pipeline): what ``metrics.json`` records under ``model`` (path, sparsity, ...) when it
    is evaluated. ``pipeline`` (pipeline): the in-memory pipeline equal to the saved folder, evaluated
    as it is; without it the folder is loaded in float32, as a user loads it, and placed in the
    engine's precision. ``base`` (mixture): the already loaded model the experts were pruned from,
    reused as the mixture's base and as the teacher instead of loading the model again.
    """

    kind: Literal["mixture", "pipeline"]
    path: str | Path | None = None
    entry: dict[str, Any] | None = None
    pipeline: Any = None
    base: Any = None

    def folder(self, run: Any) -> Path:
        """The deployed folder (``path`` relative to the run directory, or absolute)."""
        if self.kind == "mixture":
            return run_files.mixture_dir(run)
        path = Path(self.path) if self.path is not None else run_files.artifacts_dir(run) / PIPELINE_DIR
        return path if path.is_absolute() else Path(run.dir) / path


def take_deployable(result: dict[str, Any]) -> Deployable | None:
    """Remove the ``deployable`` entry from a method's result and check it."""
    from prunekit.errors import PluginError

    found = result.pop(KEY, None)
    if found is None:
        return None
    if isinstance(found, Mapping):
        unknown = set(found) - {"kind", "path", "entry", "pipeline", "base"}
        if unknown:
            raise PluginError(f"the method's {KEY!r} entry has unknown keys {sorted(unknown)}")
        found = Deployable(**found)
    if not isinstance(found, Deployable):
        raise PluginError(f"the method's {KEY!r} entry is a {type(found).__name__}; expected prunekit.deployable.Deployable")
    if found.kind not in KINDS:
        raise PluginError(f"the method's {KEY!r} entry has kind {found.kind!r}; expected one of {', '.join(KINDS)}")
    if found.kind == "mixture" and found.path is not None:
        raise PluginError(f"the method's {KEY!r} mixture has a path: a mixture is always the run's artifacts/mixture")
    return found


def finish_deployed(run: Any, metrics: dict[str, Any], deployable: Deployable) -> None:
    """After the method: the ``evaluate`` stage when the recipe has ``metrics:`` (merged into
    ``metrics``), ``metrics.json``, then, for a mixture, the report."""
    from prunekit.evaluation.stage import evaluate_deployable, merge_evaluation

    if run.recipe.data.get("metrics"):
        evaluation = run.stage("evaluate", lambda: evaluate_deployable(run, deployable))
        if deployable.kind == "pipeline" and deployable.entry is not None:
            metrics["model"] = dict(deployable.entry)
        merge_evaluation(metrics, evaluation)
    run.save_metrics(**metrics)  # the report reads metrics.json
    if deployable.kind == "mixture":
        write_run_report(run, base=deployable.base)


def write_run_report(run: Any, *, base: Any = None) -> Path | None:
    """End of a mixture run: record the dataset's prompt complexity, write the samples if missing,
    build the report. Only rank 0 writes; returns the report path (None on other ranks)."""
    from prunekit import distributed
    from prunekit.evaluation.samples import write_run_samples
    from prunekit.report.build import build_report
    from prunekit.report.data import record_complexity

    if not distributed.is_main():
        return None
    prompts = run_files.encoded_prompts(run)
    record_complexity(run.dir, run.build("dataset"), prompts)
    if not (run_files.samples_dir(run) / run_files.SAMPLES_INDEX).is_file():
        write_run_samples(run.dir, run.recipe.data, run.registry, base=base)
    path = build_report(run.dir, registry=run.registry)
    run.log.info("report: %s", path)
    return path
