"""What the directories say: a point's state from its run directory (``run.json``: a point is completed
only when its run says so) and the sweep's own state, ``sweep.json`` (one record per point: label,
command, status, error, seconds, run directory)."""

from __future__ import annotations

import datetime as _dt
import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prunekit.errors import PrunekitError, RecipeError
from prunekit.sweep.schema import FORMAT, Sweep, SweepPoint, _display_path


def _point_state(point: SweepPoint) -> str:
    """new, completed, started (resumable) or stale (created but nothing recorded)."""
    d = point.run_dir
    if not d.is_dir() or not any(d.iterdir()):
        return "new"
    if _run_status(d).get("status") == "completed":
        return "completed"
    if (d / "recipe.yaml").is_file():
        return "started"
    return "stale"


def _run_status(run_dir: Path) -> dict[str, Any]:
    """``run_dir``'s run.json ({} when there is none, or none readable)."""
    try:
        info = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _not_completed(run_dir: Path) -> str | None:
    """Why ``run_dir`` does not hold a completed run (None when it does): a point is completed only
    when its run directory says so, whatever its launcher's exit status."""
    if not (run_dir / "run.json").is_file():
        return f"the launch ended without an error but left no run in {_display_path(run_dir)} (no run.json)"
    info = _run_status(run_dir)
    if info.get("status") == "completed":
        return None
    said = f"status {info['status']!r}" if info.get("status") else "no readable status"
    error = f": {_one_line(info['error'])}" if info.get("error") else ""
    return f"the launch ended without an error but {_display_path(run_dir / 'run.json')} says {said}{error}"


def _clear_stale(run_dir: Path) -> bool:
    """A run killed before it wrote recipe.yaml left only its log and empty folders: start afresh."""
    from prunekit.run import LOCK_FILE

    entries = list(run_dir.iterdir())
    empty_dirs = all(not any(e.iterdir()) for e in entries if e.is_dir())
    if {e.name for e in entries} <= {"run.log", "run.json", LOCK_FILE, "checkpoints", "artifacts"} and empty_dirs:
        shutil.rmtree(run_dir)
        return True
    return False


def _error_line(exc: BaseException) -> str:
    if isinstance(exc, RecipeError):
        text = "; ".join(exc.problems)
    elif isinstance(exc, PrunekitError):
        text = str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}"
    return _one_line(text) or type(exc).__name__


def _one_line(text: str, limit: int = 400) -> str:
    """A message on one line (tables and logs), shortened to ``limit`` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _now() -> str:
    return _dt.datetime.now().isoformat(timespec="seconds")


def _write_state(sweep: Sweep, records: list[dict[str, Any]]) -> None:
    from prunekit.run import atomic_write_json

    atomic_write_json(sweep.directory / "sweep.json", {
        "format": FORMAT, "name": sweep.name, "sweep_file": str(sweep.file.resolve()), "updated": _now(),
        "points": records,
    })


def _earlier_records(directory: Path) -> dict[str, dict[str, Any]]:
    state = directory / "sweep.json"
    if not state.is_file():
        return {}
    return {r["label"]: r for r in json.loads(state.read_text()).get("points", [])}


def _record(sweep: Sweep, point: SweepPoint, earlier: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "label": point.label, "series": point.series, "method": point.method, "axes": point.axes,
        "recipe": str(point.recipe_file), "overrides": point.overrides,
        "run_dir": str(point.run_dir.relative_to(sweep.directory)),
        "command": sweep.shown_command(point), "status": "pending", "error": None,
        "seconds": earlier.get("seconds"), "reused": False,
    }
