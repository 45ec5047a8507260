"""The run directory: resolved recipe, log, stage records, checkpoints, artefacts, metrics.

Layout of ``runs/NAME/``::

    recipe.yaml      the resolved recipe (what actually ran)
    run.log          everything logged to the console, plus debug lines
    run.json         status, versions, command line
    stages.json      completed stages and their (small, JSON) results
    checkpoints/     per-stage training checkpoints (``--resume`` continues from the newest)
    artifacts/       what stages produce (masks, experts, mixture/, images)
    metrics.json     the final metrics

A run directory is never overwritten: an existing one is refused unless ``--resume`` is given,
and resuming refuses a recipe that differs from the one the directory was started with.

Under a launcher every rank runs every stage (training is collective), but only rank 0 writes to
the run directory: it creates it, logs, records stages and metrics; the other ranks wait at the
stage boundaries and take rank 0's results, so all ranks continue from the same state.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prunekit import distributed
from prunekit.errors import RunDirError
from prunekit.recipe import Recipe
from prunekit.registry import Registry

LOGGER_NAME = "prunekit"


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a kill never leaves a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out = []
        for key in sorted(set(a) | set(b), key=str):
            out += _diff_keys(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else str(key))
        return out
    return [] if a == b else [prefix or "<root>"]


def run_dir_for(recipe: Recipe, output: str | Path | None) -> Path:
    if output is not None:
        return Path(output)
    return Path(recipe.data.get("output_dir", "runs")) / recipe.name


def check_run_dir(path: Path, recipe: Recipe, *, resume: bool) -> None:
    """Refuse to overwrite; refuse to resume something else. Cheap: called before heavy work."""
    exists = path.exists() and any(path.iterdir()) if path.exists() else False
    if path.exists() and not path.is_dir():
        raise RunDirError(f"run directory {path} exists and is not a directory")
    if exists and not resume:
        raise RunDirError(
            f"run directory {path} already exists; pass --resume to continue it or --output DIR for a new one"
        )
    if resume:
        saved = path / "recipe.yaml"
        if not saved.exists():
            raise RunDirError(f"cannot resume {path}: it holds no recipe.yaml (nothing was started there)")
        from omegaconf import OmegaConf

        before = OmegaConf.to_container(OmegaConf.load(saved), resolve=False)
        changed = _diff_keys(before, recipe.data)
        if changed:
            raise RunDirError(
                f"cannot resume {path}: the recipe differs from the one it was started with "
                f"(changed: {', '.join(changed[:8])}{', ...' if len(changed) > 8 else ''})"
            )


class Run:
    """One run: its directory, logger, progress bars and stage bookkeeping."""

    def __init__(self, recipe: Recipe, path: Path, registry: Registry, *, resume: bool = False) -> None:
        self.recipe = recipe
        self.dir = path
        self.registry = registry
        self.resume = resume
        self.log = logging.getLogger(LOGGER_NAME)
        self.metrics: dict[str, Any] = {}
        self._stages: dict[str, Any] = {}
        self._log_handlers: list[logging.Handler] = []
        self.rank = distributed.rank()
        self.world_size = distributed.world_size()

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes to the run directory."""
        return self.rank == 0

    # -- lifecycle --------------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        recipe: Recipe,
        registry: Registry,
        *,
        output: str | Path | None = None,
        resume: bool = False,
        console_log: bool = True,
    ) -> Run:
        path = run_dir_for(recipe, output)
        run = cls(recipe, path, registry, resume=resume)

        def create() -> None:
            check_run_dir(path, recipe, resume=resume)
            path.mkdir(parents=True, exist_ok=True)
            for sub in ("checkpoints", "artifacts"):
                (path / sub).mkdir(exist_ok=True)
            if not resume:
                atomic_write_text(path / "recipe.yaml", recipe.to_yaml())

        distributed.run_on_main(create)  # the other ranks wait here for the directory
        run._setup_logging(console_log)
        if resume:
            stages_file = path / "stages.json"
            if stages_file.exists():
                run._stages = json.loads(stages_file.read_text())
            metrics_file = path / "metrics.json"
            if metrics_file.exists():
                run.metrics = json.loads(metrics_file.read_text())
            run.log.info("resuming %s (completed stages: %s)", path, ", ".join(run._stages) or "none")
        run._write_status("running", world_size=run.world_size)
        registry.hook.prunekit_run_start(run=run)
        return run

    def _write_status(self, status: str, **extra: Any) -> None:
        from prunekit import __version__

        if not self.is_main:
            return
        info_file = self.dir / "run.json"
        info = json.loads(info_file.read_text()) if info_file.exists() else {}
        info.setdefault("started", _dt.datetime.now().isoformat(timespec="seconds"))
        info.update(
            status=status,
            updated=_dt.datetime.now().isoformat(timespec="seconds"),
            prunekit=__version__,
            python=sys.version.split()[0],
            command=sys.argv,
            recipe=str(self.recipe.path),
            overrides=self.recipe.overrides,
            **extra,
        )
        atomic_write_json(info_file, info)

    def _setup_logging(self, console: bool) -> None:
        self.log.setLevel(logging.DEBUG)
        self.log.propagate = False
        if not self.is_main:
            # One log per run: the other ranks only report their own errors, to stderr.
            stderr = logging.StreamHandler()
            stderr.setLevel(logging.ERROR)
            stderr.setFormatter(logging.Formatter(f"[rank {self.rank}] %(message)s"))
            self.log.addHandler(stderr)
            self._log_handlers = [stderr]
            return
        file_handler = logging.FileHandler(self.dir / "run.log")
        file_handler.setLevel(logging.DEBUG)
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        handlers: list[logging.Handler] = [file_handler]
        if console:
            from rich.logging import RichHandler

            from prunekit.console import console as rich_console

            rich = RichHandler(console=rich_console(), show_path=False, markup=False)
            rich.setLevel(logging.INFO)
            handlers.append(rich)
        for handler in handlers:
            self.log.addHandler(handler)
        self._log_handlers = handlers

    def close(self, status: str = "completed", **extra: Any) -> None:
        self._write_status(status, **extra)
        for handler in self._log_handlers:
            self.log.removeHandler(handler)
            handler.close()
        self._log_handlers = []

    # -- stages -----------------------------------------------------------------------------

    @property
    def completed_stages(self) -> list[str]:
        return list(self._stages)

    def stage(self, name: str, fn: Callable[[], Mapping[str, Any] | None]) -> dict[str, Any]:
        """Run ``fn`` as stage ``name`` unless a resumed run already completed it.

        ``fn`` returns a small JSON-able dict (paths, counts, MACs); bulky results belong in
        ``artifacts/``. A stage that was interrupted is re-run, and continues from its own
        checkpoints under ``checkpoint_dir(name)`` if it keeps any.
        """
        if name in self._stages:
            self.log.info("stage %s: already completed, skipped", name)
            return self._stages[name]
        self.log.info("stage %s: started", name)
        result = dict(fn() or {})
        # Every rank ran the stage; rank 0's record (its timings, its paths) is the one kept, and
        # handing it over is also the barrier after which rank 0's files are there for everyone.
        result = distributed.broadcast(result)
        self._stages[name] = result
        if self.is_main:
            atomic_write_json(self.dir / "stages.json", self._stages)
        self.log.info("stage %s: done", name)
        self.registry.hook.prunekit_stage_end(run=self, stage=name, result=result)
        return result

    def checkpoint_dir(self, stage: str) -> Path:
        path = self.dir / "checkpoints" / stage
        path.mkdir(parents=True, exist_ok=True)
        return path

    def artifact(self, *parts: str) -> Path:
        """A path under ``artifacts/`` (parents created)."""
        path = self.dir.joinpath("artifacts", *parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    # -- components and results ---------------------------------------------------------------

    def build(self, key: str, **context: Any) -> Any:
        """Build the component that recipe section ``key`` selects (``router``, ``model``, ...)."""
        from prunekit.recipe import SINGLE_SECTIONS

        return self.registry.build(SINGLE_SECTIONS[key], self.recipe.data[key], **context)

    def build_all(self, key: str, **context: Any) -> dict[str, Any]:
        """Build every component of a multi section (``losses``, ``metrics``), keyed by name."""
        from prunekit.recipe import MULTI_SECTIONS

        kind = MULTI_SECTIONS[key]
        return {
            name: self.registry.build(kind, {"name": name, **options}, **context)
            for name, options in (self.recipe.data.get(key) or {}).items()
        }

    def save_metrics(self, **updates: Any) -> Path:
        self.metrics.update(updates)
        path = self.dir / "metrics.json"
        if self.is_main:
            atomic_write_json(path, self.metrics)
        return path

    def on_main(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` (which writes into the run directory) on rank 0 only; every rank gets its result."""
        return distributed.run_on_main(fn)

    @contextmanager
    def progress(self, description: str, total: int | None) -> Iterator[Callable[..., None]]:
        """A rich progress bar; yields ``advance(n=1, **fields)``."""
        if not self.is_main:
            yield lambda n=1, **fields: None
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from prunekit.console import console as rich_console

        columns = [
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
        ]
        with Progress(*columns, console=rich_console(), transient=False) as bar:
            task = bar.add_task(description, total=total, info="")

            def advance(n: int = 1, **fields: Any) -> None:
                info = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
                bar.update(task, advance=n, info=info)

            yield advance
