"""The recipe's ``metrics:`` section as the evaluation uses it: machine-specific checks before any heavy
import (weights and eval data paths) and the metric plugins built. The ``eval:`` section itself is
:mod:`prunekit.eval_config`, re-exported here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prunekit.eval_config import SECTION, EvalConfig, Scheduler, eval_config, eval_dataset_section

__all__ = ["SECTION", "EvalConfig", "Scheduler", "build_metrics", "eval_config", "eval_dataset_section",
           "preflight_metrics"]


def preflight_metrics(recipe_data: Mapping[str, Any], registry: Any) -> list[str]:
    """Machine-specific problems of a recipe's ``metrics:`` section and eval dataset (weights and data
    paths that do not exist here), one line each, found before any heavy import."""
    from prunekit.config import instantiate_schema, validate_options
    from prunekit.registry import unknown_name_message

    problems: list[str] = []
    for name, options in (recipe_data.get("metrics") or {}).items():
        component = registry.find("metric", str(name))
        if options is None or component is None or component.schema is None:
            continue
        if hasattr(component.schema, "preflight"):
            problems.extend(instantiate_schema(component.schema, options).preflight() or [])
    where = f"{SECTION}.dataset"
    if recipe_data.get("metrics") and not eval_dataset_section(recipe_data):
        problems.append(f"{where}: the recipe has metrics but no dataset to take prompts and real "
                        f"images from (set {where} or a dataset section)")
    section = eval_config(recipe_data).dataset
    if section:
        component = registry.find("dataset", str(section.get("name")))
        if component is None:
            return [*problems, f"{where}.name: {unknown_name_message('dataset', str(section.get('name')), registry.names('dataset'))}"]
        options = {k: v for k, v in section.items() if k != "name"}
        if component.schema is not None:
            invalid = validate_options(component.schema, options, where)
            if invalid:
                return [*problems, *invalid]
            if hasattr(component.schema, "preflight"):
                # A dataset's preflight names its keys as in a `dataset:` section; here they live under `where`.
                problems.extend(p.replace("set dataset.", f"set {where}.")
                                for p in instantiate_schema(component.schema, options).preflight() or [])
    return problems


def build_metrics(recipe_data: Mapping[str, Any], registry: Any) -> dict[str, Any]:
    return {str(name): registry.build("metric", {"name": name, **options})
            for name, options in (recipe_data.get("metrics") or {}).items() if options is not None}
