"""The run directory: resolved recipe, log, stage records, checkpoints, artefacts, metrics.

Layout of ``runs/NAME/``::

    recipe.yaml      the resolved recipe (what actually ran)
    run.log          everything logged to the console, plus debug lines
    run.json         status, versions, command line
    stages.json      completed stages and their (small, JSON) results
    checkpoints/     per-stage training checkpoints (``--resume`` continues from the newest)
    artifacts/       what stages produce (masks, experts, mixture/, images)
    metrics.json     the final metrics
    run.lock         who holds the directory now, or held it last (see below)

A run directory is never overwritten: an existing one is refused unless ``--resume`` is given,
and resuming refuses a recipe that differs from the one the directory was started with.

One process writes to a run directory at a time: ``run.lock`` (an ``flock`` held for the run's
lifetime, by rank 0 under a launcher) names its holder; a second ``run``/``--resume`` (or ``eval``,
``report``) of the same directory is refused with one line naming the holder's pid and host. The
kernel drops the lock when its holder dies, so the lock of a killed run is simply taken over.

A run that fails (any error, a full disk included) records ``status: failed`` and the reason in
``run.json``; ``run.json`` is kept padded to whole 4 KiB blocks so that this last record can be
rewritten in place when no new block can be had. What is written under a temporary name and renamed
(the records here, encoded shards, evaluation images, experts) removes that file when the write fails.

Why one module of this size: the lock, the padded ``run.json``, the atomic writers and the failure
record share one invariant (a single writer whose last record always lands); they are audited together.

Under a launcher every rank runs every stage (training is collective), but only rank 0 writes to
the run directory: it creates it, logs, records stages and metrics; the other ranks wait at the
stage boundaries and take rank 0's results, so all ranks continue from the same state.
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from prunekit import distributed
from prunekit.errors import RunDirError
from prunekit.recipe import Recipe
from prunekit.registry import Registry

LOGGER_NAME = "prunekit"


LOCK_FILE = "run.lock"
STATUS_BLOCK = 4096  # run.json is padded to whole blocks of this size (see Run._write_status)


@contextmanager
def atomic_target(path: Path) -> Iterator[Path]:
    """A temporary name next to ``path`` to write to: renamed to ``path`` when the block ends, removed
    when it raises (a full disk leaves no half-written temporary file behind). An ``OSError`` that
    names the temporary file, or no file, is re-raised naming ``path``, the file the user knows."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as exc:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename in (None, str(tmp)):
            exc.filename = str(path)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a kill never leaves a half-written file."""
    with atomic_target(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def _padded(data: bytes, size: int) -> bytes:
    """``data`` (JSON ending in a newline) followed by spaces and a newline, ``size`` bytes in all."""
    return data if len(data) >= size else data + b" " * (size - len(data) - 1) + b"\n"


def _rewrite_in_place(path: Path, info: dict[str, Any]) -> bool:
    """Overwrite ``path`` with ``info`` within its present size (no new block needed), shortening
    ``info["error"]`` if it does not fit. False when it cannot be done."""
    try:
        size = path.stat().st_size
    except OSError:
        return False
    data = (json.dumps(info, indent=2, default=_json_default) + "\n").encode()
    error = info.get("error")
    if len(data) > size and isinstance(error, str):
        keep = len(error.encode()) - (len(data) - size) - 3
        if keep > 0:
            info = {**info, "error": error.encode()[:keep].decode(errors="ignore") + "..."}
            data = (json.dumps(info, indent=2, default=_json_default) + "\n").encode()
    if len(data) > size:
        return False
    try:
        with open(path, "r+b") as handle:
            handle.write(_padded(data, size))
    except OSError:
        return False
    return True


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
    """Refuse to overwrite; refuse to resume something else; refuse a directory that another process
    is writing to. Cheap: called before heavy work (and again under the lock, when the run starts)."""
    if path.exists() and not path.is_dir():
        raise RunDirError(f"run directory {path} exists and is not a directory")
    refuse_if_locked(path)
    _check_contents(path, recipe, resume=resume)


def _check_contents(path: Path, recipe: Recipe, *, resume: bool) -> None:
    # run.lock alone is not a run: a run killed before it wrote anything else leaves just that
    exists = path.is_dir() and any(p.name != LOCK_FILE for p in path.iterdir())
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


# -- one writer per run directory ----------------------------------------------------------------


class RunLock:
    """``run.lock``: an exclusive ``flock`` on an open descriptor, held from the start of a run until
    :meth:`release`, or until its holder dies: the kernel drops it then, so the lock of a killed run
    is simply taken over. The file names the holder (pid, host, what, since) for the message of a
    process that is refused. It is rewritten in place and never removed once a run has used it, so
    it needs no new block on a full disk and no process can lock a file another has just replaced."""

    SIZE = 1024  # bytes the file is padded to
    RETRY_S = 0.5  # a competing holder may only be probing (refuse_if_locked): wait this long for it

    def __init__(self, file: Path, fd: int, *, action: str, created: bool, previous: dict[str, Any] | None) -> None:
        self.file = file
        self.action = action
        self.since = _dt.datetime.now().isoformat(sep=" ", timespec="seconds")
        self.created = created
        self.previous = previous  # the holder the file named when it was taken over (it was killed)
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, directory: str | Path, *, action: str = "run", what: str = "run directory") -> RunLock:
        """Take the lock of ``directory`` (which must exist) or raise :class:`RunDirError` naming the
        process that holds it."""
        import fcntl

        directory = Path(directory)
        file = directory / LOCK_FILE
        deadline = time.monotonic() + cls.RETRY_S
        while True:
            try:
                fd, created = os.open(file, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), True
            except FileExistsError:
                try:
                    fd, created = os.open(file, os.O_RDWR), False
                except FileNotFoundError:  # removed in between: create it again
                    continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() < deadline:
                    os.close(fd)
                    time.sleep(0.05)
                    continue
                holder = _read_holder(fd, wait=True)
                os.close(fd)
                raise RunDirError(_in_use_message(directory, holder, what)) from None
            except BaseException:
                os.close(fd)
                raise
            try:  # the file we locked must still be the one in the directory
                same = os.path.samestat(os.fstat(fd), os.stat(file))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = _read_holder(fd, wait=False)
        lock = cls(file, fd, action=action, created=created,
                   previous=previous if previous and previous.get("held") else None)
        lock._record(held=True)
        return lock

    def _record(self, *, held: bool) -> None:
        assert self._fd is not None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "action": self.action, "since": self.since,
                "held": held}
        data = json.dumps(info).encode()[: self.SIZE - 1]
        try:  # in place, within the file's own blocks; the lock holds whether or not this is written
            os.pwrite(self._fd, data + b" " * (self.SIZE - 1 - len(data)) + b"\n", 0)
        except OSError:
            pass

    def release(self, *, remove: bool = False) -> None:
        """Let go (idempotent). ``remove``: delete the file too (only when this process created it
        and nothing else was written to the directory)."""
        if self._fd is None:
            return
        try:
            if remove:
                with suppress(OSError):
                    self.file.unlink()
            else:
                self._record(held=False)
        finally:
            fd, self._fd = self._fd, None
            os.close(fd)  # drops the flock


def _read_holder(fd: int, *, wait: bool) -> dict[str, Any] | None:
    """What ``run.lock`` says about its holder (None when it says nothing readable). ``wait``: give a
    holder that has just taken the lock a moment to write its name."""
    for _ in range(20 if wait else 1):
        try:
            text = os.pread(fd, RunLock.SIZE, 0).decode(errors="replace").strip()
            holder = json.loads(text) if text else None
        except (OSError, ValueError):
            holder = None
        if isinstance(holder, dict):
            return holder
        if wait:
            time.sleep(0.05)
    return None


def _in_use_message(directory: Path, holder: Mapping[str, Any] | None, what: str) -> str:
    if not holder:
        return f"{what} {directory} is in use by another process (its {LOCK_FILE} does not say which)"
    return (f"{what} {directory} is in use by pid {holder.get('pid')} on {holder.get('host')} "
            f"(prunekit {holder.get('action', 'run')}, since {holder.get('since')}); "
            "wait for it to finish, or stop it first")


def refuse_if_locked(directory: Path, *, what: str = "run directory") -> None:
    """Raise :class:`RunDirError` when a live process holds ``directory``'s lock (a cheap early check;
    the lock itself is taken when the run starts)."""
    import fcntl

    try:
        fd = os.open(directory / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return  # no lock file (or none readable): nothing to refuse here
    try:
        deadline = time.monotonic() + RunLock.RETRY_S  # a holder killed a moment ago may still be exiting
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise RunDirError(_in_use_message(directory, _read_holder(fd, wait=True), what)) from None
                time.sleep(0.05)
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextmanager
def holding(directory: str | Path, *, action: str) -> Iterator[RunLock | None]:
    """Hold ``directory``'s run lock for the block (``prunekit eval`` and ``report`` write there too).
    In a directory this process may not write to, only check that no one holds it (yields None)."""
    try:
        lock = RunLock.acquire(directory, action=action)
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        refuse_if_locked(Path(directory))
        yield None
        return
    try:
        yield lock
    finally:
        lock.release()


# -- failures --------------------------------------------------------------------------------------

FILE_ONLY = {"file_only": True}  # ``extra=`` of a log record meant for run.log, not the console


def _console_record(record: logging.LogRecord) -> bool:
    return not getattr(record, "file_only", False)


def _os_error_in(exc: BaseException) -> OSError | None:
    """``exc`` itself when it is an OSError, else the nearest OSError it was raised from."""
    seen: set[int] = set()
    node: BaseException | None = exc
    while node is not None and id(node) not in seen:
        if isinstance(node, OSError) and node.strerror:
            return node
        seen.add(id(node))
        node = node.__cause__ or (None if node.__suppress_context__ else node.__context__)
    return None


def _little_space(directory: Path) -> bool:
    for d in (directory, *directory.parents):
        if d.exists():
            try:
                st = os.statvfs(d)
            except OSError:
                return False
            return st.f_bavail * st.f_frsize < 1 << 20
    return False


def failure_reason(exc: BaseException, run_dir: Path) -> str:
    """One line saying why a run stopped. An OSError (a full disk, a permission, a read-only file
    system) is a problem of the machine: its errno text and path. Libraries that write files (torch,
    safetensors) report a full disk in words of their own: a file system left with under 1 MiB free,
    or their words for it, name it."""
    from prunekit.errors import PrunekitError, RecipeError

    if isinstance(exc, PrunekitError):
        text = "; ".join(exc.problems) if isinstance(exc, RecipeError) else str(exc)
        return " ".join(text.split()) or type(exc).__name__
    started = (run_dir / "recipe.yaml").is_file()
    hint = "continue with --resume once that is fixed" if started else "run it again once that is fixed"
    os_error = _os_error_in(exc)
    if os_error is not None:
        where = os_error.filename if os_error.filename is not None else run_dir
        return f"{os_error.strerror}: {where}; {hint}"
    text = " ".join(str(exc).split())
    what = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    if len(what) > 400:
        what = what[:397] + "..."
    if any(word in str(exc) for word in ("No space left", "StorageFull")) or _little_space(run_dir):
        return f"{os.strerror(errno.ENOSPC)}: {run_dir} ({what}); {hint}"
    if any(word in str(exc) for word in _WRITE_FAILURES):
        return f"writing under {run_dir} failed, is the disk full? ({what}); {hint}"
    return f"{what} (the traceback is in {run_dir / 'run.log'})"


# How torch's file writer reports a write that failed (it raises RuntimeError, without the errno)
_WRITE_FAILURES = ("file write failed", "unexpected pos", "iostream error", "PytorchStreamWriter failed")


class _RunLogHandler(logging.FileHandler):
    """run.log. A write that fails (a full disk) drops the record quietly: plain logging would print
    '--- Logging error ---' and a traceback on the console for every line, and the run reports its
    own error once anyway."""

    def handleError(self, record: logging.LogRecord) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handleError(record)

    def flush(self) -> None:
        with suppress(OSError):
            super().flush()

    def close(self) -> None:
        with suppress(OSError):
            super().close()


# -- the run ----------------------------------------------------------------------------------------


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
        self._lock: RunLock | None = None
        self._closed = False
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
            made = not path.exists()
            path.mkdir(parents=True, exist_ok=True)
            # Rank 0 holds the lock until close(); nothing is written here before it has it.
            lock = RunLock.acquire(path, action="run --resume" if resume else "run")
            try:
                _check_contents(path, recipe, resume=resume)  # again: another run may have just finished here
                if not resume:
                    atomic_write_text(path / "recipe.yaml", recipe.to_yaml())
                for sub in ("checkpoints", "artifacts"):
                    (path / sub).mkdir(exist_ok=True)
            except BaseException:
                lock.release(remove=lock.created and not (path / "recipe.yaml").exists())
                if made:
                    with suppress(OSError):
                        path.rmdir()
                raise
            run._lock = lock

        distributed.run_on_main(create)  # the other ranks wait here for the directory
        try:
            run._setup_logging(console_log)
            previous = run._lock.previous if run._lock is not None else None
            if previous:
                run.log.info("%s: pid %s on %s (prunekit %s, since %s) is gone without releasing it; taken over",
                             LOCK_FILE, previous.get("pid"), previous.get("host"), previous.get("action"),
                             previous.get("since"))
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
        except BaseException as exc:
            run.close("failed", error=failure_reason(exc, path))
            raise
        return run

    def _write_status(self, status: str, **extra: Any) -> None:
        """run.json, padded to whole :data:`STATUS_BLOCK` blocks. When it cannot be replaced (a full
        disk: the new copy needs blocks), it is rewritten in place, in the blocks it already has."""
        from prunekit import __version__

        if not self.is_main:
            return
        info_file = self.dir / "run.json"
        try:
            info = json.loads(info_file.read_text()) if info_file.exists() else {}
        except ValueError:  # only a rewrite in place that was itself interrupted leaves it unreadable
            info = {}
        info.setdefault("started", _dt.datetime.now().isoformat(timespec="seconds"))
        if status != "failed":
            info.pop("error", None)  # a resumed run that completes no longer carries its old failure
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
        data = (json.dumps(info, indent=2, default=_json_default) + "\n").encode()
        try:
            with atomic_target(info_file) as tmp:
                tmp.write_bytes(_padded(data, -(-len(data) // STATUS_BLOCK) * STATUS_BLOCK))
        except OSError:
            if not _rewrite_in_place(info_file, info):
                raise

    def _setup_logging(self, console: bool) -> None:
        self.log.setLevel(logging.DEBUG)
        self.log.propagate = False
        if not self.is_main:
            # One log per run: the other ranks only report their own errors, to stderr.
            stderr = logging.StreamHandler()
            stderr.setLevel(logging.ERROR)
            stderr.setFormatter(logging.Formatter(f"[rank {self.rank}] %(message)s"))
            stderr.addFilter(_console_record)
            self.log.addHandler(stderr)
            self._log_handlers = [stderr]
            return
        file_handler = _RunLogHandler(self.dir / "run.log")
        file_handler.setLevel(logging.DEBUG)
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        handlers: list[logging.Handler] = [file_handler]
        if console:
            from rich.logging import RichHandler

            from prunekit.console import console as rich_console

            rich = RichHandler(console=rich_console(), show_path=False, markup=False)
            rich.setLevel(logging.INFO)
            rich.addFilter(_console_record)
            handlers.append(rich)
        for handler in handlers:
            self.log.addHandler(handler)
        self._log_handlers = handlers

    def close(self, status: str = "completed", **extra: Any) -> None:
        """Record the final status, close the log, release the lock (once; later calls do nothing).

        A failure is recorded as well as the disk allows, and never raises from here. When even the
        record of completion cannot be written, the run is recorded failed (if that can be) and the
        error raised: a run is completed only when its run.json says so.
        """
        if self._closed:
            return
        self._closed = True
        try:
            self._write_status(status, **extra)
        except OSError as exc:
            if status == "completed":
                with suppress(OSError):
                    self._write_status("failed", error=failure_reason(exc, self.dir))
                raise
        finally:
            for handler in self._log_handlers:
                self.log.removeHandler(handler)
                handler.close()
            self._log_handlers = []
            if self._lock is not None:
                self._lock.release()
                self._lock = None

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
