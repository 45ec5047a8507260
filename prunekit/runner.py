"""``prunekit run``: preflight checks, the run directory, the method's stages, then what the core does
with what the method deployed (:mod:`prunekit.deployable`: the ``evaluate`` stage and the report)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prunekit.config import instantiate_schema
from prunekit.console import quiet_libraries
from prunekit.deployable import finish_deployed, take_deployable
from prunekit.errors import MissingPathError, PeerRankError, PrunekitError, RunFailedError
from prunekit.recipe import SINGLE_SECTIONS, Recipe
from prunekit.registry import Registry
from prunekit.run import FILE_ONLY, Run, check_run_dir, failure_reason, run_dir_for


def preflight(recipe: Recipe, registry: Registry) -> list[str]:
    """Problems that only show on this machine (missing model or data paths), found before any
    heavy import. A schema opts in by defining ``preflight(self) -> list[str]``."""
    problems: list[str] = []
    for key, kind in SINGLE_SECTIONS.items():
        section = recipe.data.get(key)
        if not section:
            continue
        component = registry.get(kind, section["name"])
        if component.schema is None or not hasattr(component.schema, "preflight"):
            continue
        options = {k: v for k, v in section.items() if k != "name"}
        problems.extend(instantiate_schema(component.schema, options).preflight() or [])
    from prunekit.evaluation.config import preflight_metrics

    problems.extend(preflight_metrics(recipe.data, registry))
    engine = recipe.data.get("engine") or {}
    if engine.get("precision") == "fp16":
        from prunekit.placement import check_precision, compute_device

        try:
            check_precision("fp16", compute_device())
        except ValueError as exc:
            problems.append(str(exc))
    return problems


def execute(
    recipe: Recipe,
    registry: Registry,
    *,
    output: str | Path | None = None,
    resume: bool = False,
    console_log: bool = True,
) -> tuple[Run, dict[str, Any]]:
    """Run ``recipe``; returns the run and its final metrics.

    Under a launcher every rank calls this; rank 0 checks the recipe against this machine and
    owns the run directory, the other ranks stop with it when it refuses.

    Whatever stops a run (a full disk, a bug) ends it as ``failed`` in run.json with the reason, and
    is raised as a :class:`PrunekitError` whose message is one line (:func:`failure_reason`); the
    traceback of an unexpected error goes to run.log only.
    """
    from prunekit import distributed

    if distributed.launched():
        distributed.init()

    def checks() -> None:
        check_run_dir(run_dir_for(recipe, output), recipe, resume=resume)
        problems = preflight(recipe, registry)
        if problems:
            raise MissingPathError("\n".join(problems))

    distributed.run_on_main(checks)
    try:
        run = Run.start(recipe, registry, output=output, resume=resume, console_log=console_log)
    except Exception as exc:  # Run.start recorded the failure where it could
        if isinstance(exc, PrunekitError):
            raise
        raise RunFailedError(failure_reason(exc, run_dir_for(recipe, output))) from exc
    try:
        quiet_libraries()
        _seed_everything(int(recipe.data.get("seed", 0)))
        method = registry.build("method", recipe.data["method"])
        metrics = dict(method.run(run) or {})
        deployable = take_deployable(metrics)
        if deployable is not None:  # evaluate stage (when the recipe has metrics:), metrics.json, report
            finish_deployed(run, metrics, deployable)
        run.save_metrics(**metrics)
        registry.hook.prunekit_run_end(run=run, metrics=run.metrics)
        run.log.info("run complete: %s", run.dir)
    except PeerRankError:
        run.close("failed")
        raise
    except PrunekitError as exc:
        run.log.error("%s", exc, extra=FILE_ONLY)  # the command line prints it, once
        run.close("failed", error=failure_reason(exc, run.dir))
        raise
    except Exception as exc:
        reason = failure_reason(exc, run.dir)
        # run.log gets the traceback; the console (and, under a launcher, rank 0's) only the reason
        run.log.error("run failed: %s", reason, exc_info=exc, extra=FILE_ONLY if run.is_main else None)
        run.close("failed", error=reason)
        raise RunFailedError(reason) from exc
    except BaseException as exc:  # KeyboardInterrupt, SystemExit: the command line says what to do
        run.log.error("run stopped: %s", type(exc).__name__, extra=FILE_ONLY)
        run.close("failed", error=f"stopped ({type(exc).__name__})")
        raise
    try:
        run.close("completed")
    except OSError as exc:  # completed only if run.json can say so; close() recorded it failed if it could
        raise RunFailedError(failure_reason(exc, run.dir)) from exc
    return run, run.metrics


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
