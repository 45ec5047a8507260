"""Hook specifications: everything a prunekit plugin can implement.

A plugin is any module or object with functions named like the hooks below, decorated with
``prunekit.hookimpl``. It is found through the ``prunekit`` entry-point group (built-ins use the
same group as third-party packages, see ``pyproject.toml``) or passed to
``prunekit.registry.get_registry(extra_plugins=...)``.

Hooks are grouped by the phase of a run in which they are called:

1. registration — once, when the registry is built (``prunekit plugins``, ``validate``, ``run``);
2. recipe — after a recipe is loaded and merged, before anything heavy is imported;
3. run — while ``prunekit run`` executes a method's stages;
4. report — when ``report.html`` of a run that deployed a mixture is built (at the end of the run, by
   ``prunekit eval`` and by ``prunekit report``).

Every hook here is documented in CONTRIBUTING.md and exercised by ``tests/test_hooks.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from pathlib import Path

    from prunekit.registry import Register
    from prunekit.report.sections import ReportSection
    from prunekit.run import Run

PROJECT = "prunekit"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --- 1. registration --------------------------------------------------------------------------


@hookspec
def prunekit_register_components(register: Register) -> None:
    """Register named components, each with its kind, factory and config schema.

    Call ``register(kind, name, factory, schema=SchemaDataclass, doc="...")`` once per component.
    ``kind`` is one of :data:`prunekit.registry.KINDS` (``router``, ``gate``, ``loss``,
    ``budget``, ``method``, ``model``, ``dataset``, ``metric``, ``prompt_encoder``).
    ``factory(config, **context)`` receives an instance of ``schema`` filled from the recipe
    section that selects the component; the recipe is validated against ``schema`` before any
    model or data is loaded. Registering a name twice for the same kind is an error that names
    both plugins.
    """


# --- 2. recipe --------------------------------------------------------------------------------


@hookspec
def prunekit_check_recipe(recipe: dict[str, Any]) -> list[str] | None:
    """Return extra problems with a fully merged recipe (a plain dict), one message each.

    Called after per-section schema validation, only when the recipe is otherwise valid; use it
    for checks that span several sections (e.g. a method that needs its budget below 1 when a
    given router is selected). Messages are reported together with every other problem.
    """


# --- 3. run -----------------------------------------------------------------------------------


@hookspec
def prunekit_run_start(run: Run) -> None:
    """Called once the run directory exists and the resolved recipe is written, before stage one."""


@hookspec
def prunekit_stage_end(run: Run, stage: str, result: dict[str, Any]) -> None:
    """Called after a stage completes (not when ``--resume`` skips an already completed stage)."""


@hookspec
def prunekit_run_end(run: Run, metrics: dict[str, Any]) -> None:
    """Called after the last stage, once ``metrics.json`` has been written."""


# --- 4. report --------------------------------------------------------------------------------


@hookspec
def prunekit_report_sections(run_dir: Path, report: dict[str, Any]) -> list[ReportSection] | None:
    """Return sections to add to a run's ``report.html`` (:class:`prunekit.report.ReportSection`).

    ``run_dir`` is the run directory (read its files through :mod:`prunekit.run_files`); ``report``
    the data of the core sections (:func:`prunekit.report.collect`: ``metrics``, ``stages``,
    ``manifest``, ``histories`` — every ``artifacts/<name>_history.json`` by name — ...). Called with
    the run directory alone (``prunekit report`` has no run object), so a section must be rebuilt from
    files. Each section says which section it follows (``after``); return nothing for a run it does
    not concern.
    """
