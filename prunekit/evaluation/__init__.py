"""Evaluation, a core service: what a run deployed (:mod:`prunekit.deployable`), generated from and
scored with the recipe's ``metric`` plugins, settings from the recipe's top-level ``eval:`` section.

The runner runs the ``evaluate`` stage after the method for any method that says what it deployed;
``prunekit eval RUN_OR_MIXTURE`` re-runs it on a finished run (:func:`main_eval`).

Modules: :mod:`prunekit.eval_config` (the ``eval:`` section, outside this package so that validating
a recipe imports nothing more), :mod:`~prunekit.evaluation.config` (metric preflight and plugins),
:mod:`~prunekit.evaluation.generation` (images from prompts), :mod:`~prunekit.evaluation.data` (the
eval split), :mod:`~prunekit.evaluation.scoring` (the metric runner, :class:`EvalBatch`),
:mod:`~prunekit.evaluation.stage` (a mixture or a pipeline against its teacher, the ``evaluate``
stage), :mod:`~prunekit.evaluation.samples` (the report's sample grid) and
:mod:`~prunekit.evaluation.command` (``prunekit eval``).
"""

from __future__ import annotations

from prunekit.evaluation.command import add_eval_arguments, main_eval
from prunekit.evaluation.config import (
    SECTION,
    EvalConfig,
    Scheduler,
    build_metrics,
    eval_config,
    eval_dataset_section,
    preflight_metrics,
)
from prunekit.evaluation.data import eval_data_source, load_eval_data, select_indices
from prunekit.evaluation.generation import (
    Generation,
    _batch_caller,
    expert_pipeline,
    generate,
    is_routed,
    native_resolution,
    resize_uint8,
    same_dtype_pipe,
    to_uint8,
    with_scheduler,
)
from prunekit.evaluation.samples import SAMPLES_DIR, write_run_samples, write_samples
from prunekit.evaluation.scoring import EvalBatch, evaluate, run_metrics
from prunekit.evaluation.stage import (
    evaluate_deployable,
    evaluate_mixture,
    evaluate_mixture_stage,
    evaluate_pipeline,
    evaluate_pipeline_stage,
    load_mixture,
    merge_evaluation,
)
from prunekit.run_files import EVAL_IMAGES as EVAL_IMAGES_DIR
from prunekit.run_files import EVALUATION as EVALUATION_FILE
from prunekit.run_files import routed_prompts

__all__ = [
    "EVALUATION_FILE", "EVAL_IMAGES_DIR", "SAMPLES_DIR", "SECTION", "EvalBatch", "EvalConfig", "Generation",
    "Scheduler", "_batch_caller", "add_eval_arguments", "build_metrics", "eval_config", "eval_data_source",
    "eval_dataset_section", "evaluate", "evaluate_deployable", "evaluate_mixture", "evaluate_mixture_stage",
    "evaluate_pipeline", "evaluate_pipeline_stage", "expert_pipeline", "generate", "is_routed", "load_eval_data",
    "load_mixture", "main_eval", "merge_evaluation", "native_resolution", "preflight_metrics", "resize_uint8",
    "routed_prompts", "run_metrics", "same_dtype_pipe", "select_indices", "to_uint8", "with_scheduler",
    "write_run_samples", "write_samples",
]
