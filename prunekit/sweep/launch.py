"""Running a sweep: :func:`run_sweep` validates it, takes each point through its states (skip a
completed one, resume a started one, run a new one, record a failed one and go on) and writes the
comparison; a point is launched in this process or as a ``prunekit run`` subprocess, and with
``jobs`` > 1 up to that many subprocesses run at once (one thread each waits on its process; the
sweep's state file is written under a lock)."""

from __future__ import annotations

import shlex
import shutil
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from prunekit.errors import MissingPathError, RunDirError
from prunekit.sweep.schema import Sweep, SweepPoint, _display_path, load_sweep, preflight_points
from prunekit.sweep.state import (
    _clear_stale,
    _earlier_records,
    _error_line,
    _not_completed,
    _one_line,
    _point_state,
    _record,
    _run_status,
    _write_state,
)
from prunekit.sweep.tables import write_results


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _run_inprocess(point: SweepPoint, resume: bool, registry: Any) -> str | None:
    from prunekit.runner import execute

    try:
        execute(point.recipe, registry, output=point.run_dir, resume=resume, console_log=False)  # type: ignore[arg-type]
    except Exception as exc:  # a failed point is recorded; the sweep goes on
        return _error_line(exc)
    return None


def _run_subprocess(sweep: Sweep, point: SweepPoint, resume: bool) -> str | None:
    import subprocess

    log = sweep.directory / "logs" / f"{point.run_dir.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as handle:
        handle.write(f"$ {shlex.join(sweep.command(point, resume=resume))}\n")
        handle.flush()
        code = subprocess.call(sweep.command(point, resume=resume), stdout=handle, stderr=subprocess.STDOUT)
    if code == 0:
        return None  # completed only if the run directory says so (_run_point checks)
    error = _run_status(point.run_dir).get("error")
    if error:
        return _one_line(error)
    lines = [line.strip() for line in log.read_text().splitlines() if line.strip()]
    return _one_line(lines[-1]) if lines else f"exit status {code}"


def run_sweep(path: str | Path, *, output: str | Path | None = None, resume: bool = True,
              overrides: Sequence[str] = (), jobs: int | None = None) -> Path:
    """Validate the sweep, run its points, write the comparison; returns the sweep directory.
    ``resume=False`` refuses a sweep directory that already holds points; ``overrides`` apply to every
    point (give the same ones when continuing a sweep); ``jobs`` (default: the file's
    ``launcher.jobs``) points run at once as subprocesses, in the file's order."""
    from prunekit.registry import get_registry

    if jobs is not None and jobs < 1:
        raise ValueError(f"jobs must be at least 1, not {jobs}")
    registry = get_registry()
    sweep = load_sweep(path, output=output, overrides=overrides, registry=registry)
    jobs = sweep.launcher.jobs if jobs is None else jobs
    problems = preflight_points(sweep, registry)
    if problems:
        raise MissingPathError("\n".join(problems))
    directory = sweep.directory
    if directory.exists() and not directory.is_dir():
        raise RunDirError(f"sweep directory {directory} exists and is not a directory")
    if not resume and directory.is_dir() and any(directory.iterdir()):
        raise RunDirError(f"sweep directory {directory} already exists; run again without --no-resume to "
                          "continue it, or choose another with --output")
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(sweep.file, directory / "sweep.yaml")
    (directory / "commands.sh").write_text(
        "#!/bin/sh\n# Every point of this sweep as an ordinary run (any of them may run on its own).\n"
        + "".join(f"{sweep.shown_command(p)}\n" for p in sweep.points))

    earlier = _earlier_records(directory)
    records = [_record(sweep, p, earlier.get(p.label, {})) for p in sweep.points]
    _write_state(sweep, records)
    total = len(sweep.points)
    lock = threading.Lock()

    parallel = jobs > 1

    def save() -> None:
        with lock:  # dict() copies each record in one step, while other points' threads update theirs
            _write_state(sweep, [dict(r) for r in records])

    def one(i: int) -> None:
        _run_point(sweep, sweep.points[i], records[i], f"[{i + 1}/{total}]", registry, save,
                   subprocess=parallel)
        save()

    try:
        if not parallel:
            for i in range(total):
                one(i)
        else:
            pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="sweep-point")
            try:
                for future in [pool.submit(one, i) for i in range(total)]:
                    future.result()
            finally:  # Ctrl-C reaches the points' processes too; start no further point
                pool.shutdown(wait=True, cancel_futures=True)
    except KeyboardInterrupt:
        for record in records:
            if record["status"] == "running":
                record["status"] = "interrupted"
        _write_state(sweep, records)
        write_results(sweep, records)
        raise
    write_results(sweep, records)
    failed = [r for r in records if r["status"] != "completed"]
    _say(f"sweep {sweep.name}: {total - len(failed)} of {total} points completed; table: "
         f"{_display_path(directory / 'results.md')}")
    for r in failed:
        _say(f"  failed: {r['label']}: {r['error']}")
    return directory


def _run_point(sweep: Sweep, point: SweepPoint, record: dict[str, Any], counter: str, registry: Any,
               save: Callable[[], None], *, subprocess: bool = False) -> None:
    from prunekit.run import check_run_dir, refuse_if_locked

    label = point.label or sweep.name
    try:  # another process is writing there (the same sweep run twice at once): not this one's to run
        refuse_if_locked(point.run_dir)
    except RunDirError as exc:
        record.update(status="failed", error=str(exc))
        _say(f"{counter} {label}: failed: {exc}")
        return
    state = _point_state(point)
    if state == "stale" and not _clear_stale(point.run_dir):
        record.update(status="failed", error=f"{point.run_dir} exists but holds no recipe.yaml; remove it")
        _say(f"{counter} {label}: failed: {record['error']}")
        return
    if state in ("completed", "started"):
        try:  # a directory left by a different recipe is never reused or resumed
            check_run_dir(point.run_dir, point.recipe, resume=True)  # type: ignore[arg-type]
        except RunDirError as exc:
            record.update(status="failed", error=str(exc))
            _say(f"{counter} {label}: failed: {exc}")
            return
    if state == "completed":
        record.update(status="completed", reused=True)
        _say(f"{counter} {label}: already completed, skipped")
        return
    resume = state == "started"
    _say(f"{counter} {label}: {'resuming' if resume else 'running'}: {record['command']}")
    record.update(status="running", error=None)
    save()
    start = time.perf_counter()
    if subprocess or sweep.launcher.mode == "subprocess":
        error = _run_subprocess(sweep, point, resume)
    else:
        error = _run_inprocess(point, resume, registry)
    record["seconds"] = round(time.perf_counter() - start, 2)
    if error is None:
        error = _not_completed(point.run_dir)
    if error is None:
        record.update(status="completed")
        _say(f"{counter} {label}: completed in {record['seconds']:.1f} s")
    else:
        record.update(status="failed", error=error)
        _say(f"{counter} {label}: failed: {error}")
