"""Every hook spec is called where its documentation says."""

from __future__ import annotations

import inspect
import sys

import pytest

from prunekit import hookspecs
from prunekit.errors import RecipeError
from prunekit.hookspecs import hookimpl
from prunekit.recipe import load_recipe
from prunekit.registry import get_registry
from prunekit.runner import execute


class Recorder:
    def __init__(self):
        self.calls = []

    @hookimpl
    def prunekit_check_recipe(self, recipe):
        self.calls.append(("check", recipe["name"]))
        return ["dataset: recorder refuses"] if recipe["name"] == "refused" else None

    @hookimpl
    def prunekit_run_start(self, run):
        self.calls.append(("start", run.dir.name))

    @hookimpl
    def prunekit_stage_end(self, run, stage, result):
        self.calls.append(("stage", stage, dict(result)))

    @hookimpl
    def prunekit_run_end(self, run, metrics):
        self.calls.append(("end", sorted(metrics)))

    @hookimpl
    def prunekit_report_sections(self, run_dir, report):
        # only for a run that deployed a mixture: not in the run below (tests/test_report.py covers it)
        self.calls.append(("report", run_dir.name))
        return []


def test_every_hookspec_is_exercised_here():
    specs = {n for n, f in inspect.getmembers(hookspecs, inspect.isfunction) if n.startswith("prunekit_")}
    implemented = {n for n in vars(Recorder) if n.startswith("prunekit_")} | {"prunekit_register_components"}
    assert specs == implemented


def test_hooks_fire_in_order(tmp_path):
    recorder = Recorder()
    registry = get_registry(extra_plugins=[("recorder", recorder)])
    try:
        recipe_file = tmp_path / "r.yaml"
        recipe_file.write_text("name: hooked\nmethod: {name: route_counts}\nrouter: {name: word_hash}\n"
                               "dataset: {name: prompts, items: [a b, c d]}\n")
        with pytest.raises(RecipeError, match="route_counts"):
            load_recipe(recipe_file, registry=registry)  # the example plugin is not installed here
        registry.add_plugin(_example_plugin(), "example")
        recipe = load_recipe(recipe_file, registry=registry)
        execute(recipe, registry, output=tmp_path / "run", console_log=False)
        assert recorder.calls == [
            ("check", "hooked"),
            ("start", "run"),
            ("stage", "route", {"counts": recorder.calls[2][2]["counts"]}),
            ("end", ["routing"]),
        ]
        refused = tmp_path / "refused.yaml"
        refused.write_text(recipe_file.read_text().replace("hooked", "refused"))
        with pytest.raises(RecipeError, match="recorder refuses"):
            load_recipe(refused, registry=registry)
    finally:
        get_registry(refresh=True)


def _example_plugin():
    import importlib.util

    from helpers import FIXTURES

    spec = importlib.util.spec_from_file_location(
        "prunekit_example_router", FIXTURES / "thirdparty" / "prunekit_example_router.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(module)
    return module
