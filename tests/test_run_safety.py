"""Trustworthy runs: one writer per run directory (``run.lock``), and a clean failure: one ``error:``
line, run.json ``failed`` with the reason, no temporary file left, and ``--resume`` carries on once the
cause is gone; on a patched writer and on a real full disk (a small tmpfs)."""

from __future__ import annotations

import errno
import json
import logging
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
from helpers import REPO

from prunekit.cli import main
from prunekit.errors import RunDirError
from prunekit.run import (
    LOCK_FILE,
    STATUS_BLOCK,
    Run,
    RunLock,
    atomic_write_text,
    failure_reason,
    holding,
    refuse_if_locked,
)

DENSE = str(REPO / "recipes" / "tiny" / "dense_finetune.yaml")
# One optimizer step on 8 samples of 16 px (as the sweep tests): a complete run in a few seconds.
TINY = ["dataset.size=8", "dataset.resolution=16", "engine.micro_batch=4", "engine.zero_stage=0",
        "method.warmup_steps=0", "method.steps=1", "engine.checkpoint_every=1", "engine.threads=1"]
ENOSPC = os.strerror(errno.ENOSPC)


pytestmark = pytest.mark.usefixtures("restore_threads")  # the tiny runs use engine.threads=1


def _run(out: Path, *extra: str) -> int:
    return main(["run", DENSE, "--output", str(out), *TINY, *extra])


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def _temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp" in p.name]


def _status(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())


# -- one writer per run directory ------------------------------------------------------------------


def test_a_held_run_directory_is_refused_naming_its_holder(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(RunLock, "RETRY_S", 0.0)
    out = tmp_path / "run"
    out.mkdir()
    lock = RunLock.acquire(out, action="run --resume")
    holder = f"pid {os.getpid()} on {socket.gethostname()} (prunekit run --resume, since "
    with pytest.raises(RunDirError, match=r"is in use by pid \d+"):
        RunLock.acquire(out, action="eval")
    with pytest.raises(RunDirError, match="is in use by"):
        refuse_if_locked(out)

    # a fresh run racing it: one line, exit 2, nothing written next to the lock
    assert _run(out) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: run directory {out} is in use by ") and holder in lines[0]
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]
    # so are `prunekit report` and `eval` of it (they write there too)
    with pytest.raises(RunDirError, match="is in use by"), holding(out, action="report"):
        pass

    lock.release()
    again = RunLock.acquire(out)
    assert again.previous is None  # released, not killed: nothing to report
    again.release()
    refuse_if_locked(out)
    # the lock file alone is not a run: a fresh run may start there
    from prunekit.recipe import load_recipe
    from prunekit.run import check_run_dir

    check_run_dir(out, load_recipe(DENSE, TINY), resume=False)


def test_the_lock_of_a_killed_process_is_taken_over(tmp_path, monkeypatch):
    monkeypatch.setattr(RunLock, "RETRY_S", 0.0)
    code = ("import sys, time; from pathlib import Path; from prunekit.run import RunLock; "
            "RunLock.acquire(Path(sys.argv[1]), action='run'); print('held', flush=True); time.sleep(300)")
    child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(RunDirError, match=f"in use by pid {child.pid} on "):
            RunLock.acquire(tmp_path)
    finally:
        child.kill()
        child.wait()
    lock = RunLock.acquire(tmp_path, action="run --resume")
    assert lock.previous["pid"] == child.pid and lock.previous["held"] is True
    lock.release()


def test_two_resumes_of_one_run_directory_the_second_is_refused_a_third_takes_over(tmp_path, capsys):
    """The first ``--resume`` holds the directory; the second, a moment later, is refused in one line
    naming the first and writes nothing; after the first is killed, a third takes the lock over."""
    from prunekit.recipe import load_recipe

    out = tmp_path / "run"
    out.mkdir()
    (out / "recipe.yaml").write_text(load_recipe(DENSE, TINY).to_yaml())  # a run started, then stopped
    first = subprocess.Popen([sys.executable, "-m", "prunekit", "run", DENSE, "--output", str(out), "-q", *TINY,
                              "--resume"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and first.poll() is None:
            if (out / "run.json").is_file() and _status(out)["status"] == "running":
                os.killpg(first.pid, signal.SIGSTOP)  # it holds the directory: keep it holding
                break
            time.sleep(0.01)
        assert first.poll() is None, "the first --resume ended before it could be held still"
        log_before = (out / "run.log").read_bytes()
        time.sleep(1)

        assert _run(out, "-q", "--resume") == 2
        err = capsys.readouterr().err
        assert _error_lines(err) == err.strip().splitlines()
        assert len(_error_lines(err)) == 1
        assert f"is in use by pid {first.pid} on {socket.gethostname()} (prunekit run --resume, " in err
        assert (out / "run.log").read_bytes() == log_before  # the refused one wrote nothing
        assert _status(out)["status"] == "running"
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()

    assert _run(out, "-q", "--resume") == 0, capsys.readouterr().err
    assert _status(out)["status"] == "completed"
    log = (out / "run.log").read_text()
    assert log.count("is gone without releasing it; taken over") == 1
    assert f"{LOCK_FILE}: pid {first.pid} on " in log


# -- clean failure ---------------------------------------------------------------------------------


def test_a_failed_write_ends_the_run_in_one_line_and_resume_completes(tmp_path, capsys, monkeypatch):
    """The disk fills while the encode stage is recorded: every write under a temporary name fails
    from then on, half-written. Console logging is on: still one error line and no traceback."""
    out = tmp_path / "run"
    write_text, write_bytes = pathlib.Path.write_text, pathlib.Path.write_bytes
    full = []

    def failing(original):
        def write(self, data, *args, **kwargs):
            if self.name.startswith(".stages.json.tmp"):
                full.append(self)
            if full and ".tmp" in self.name:
                original(self, data[: len(data) // 2], *args, **kwargs)
                raise OSError(errno.ENOSPC, ENOSPC)
            return original(self, data, *args, **kwargs)
        return write

    monkeypatch.setattr(pathlib.Path, "write_text", failing(write_text))
    monkeypatch.setattr(pathlib.Path, "write_bytes", failing(write_bytes))
    assert _run(out) == 1
    err = capsys.readouterr().err
    assert full, "the patched write was never reached"
    assert "Traceback" not in err and "Logging error" not in err
    [line] = _error_lines(err)
    assert line == f"error: {ENOSPC}: {out / 'stages.json'}; continue with --resume once that is fixed"
    info = _status(out)
    assert info["status"] == "failed" and info["error"] == line[len("error: "):]
    assert (out / "run.json").stat().st_size % STATUS_BLOCK == 0  # rewritten in place: it could not be replaced
    assert _temp_files(out) == []
    assert "Traceback" in (out / "run.log").read_text()  # the details are in the log

    monkeypatch.undo()  # space again
    assert _run(out, "-q", "--resume") == 0, capsys.readouterr().err
    info = _status(out)
    assert info["status"] == "completed" and "error" not in info
    assert json.loads((out / "metrics.json").read_text())["finetune"]["steps"] == 1


def test_a_run_that_cannot_even_start_leaves_nothing_behind(tmp_path, capsys, monkeypatch):
    write_text = pathlib.Path.write_text

    def no_space(self, data, *args, **kwargs):
        if self.name.startswith(".recipe.yaml.tmp"):
            write_text(self, data[:10], *args, **kwargs)
            raise OSError(errno.ENOSPC, ENOSPC)
        return write_text(self, data, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", no_space)
    out = tmp_path / "run"
    assert _run(out, "-q") == 1
    assert _error_lines(capsys.readouterr().err) == [
        f"error: {ENOSPC}: {out / 'recipe.yaml'}; run it again once that is fixed"]
    assert not out.exists()  # neither a lock file nor a directory that would have to be removed by hand


def test_an_unexpected_error_is_one_line_and_its_traceback_goes_to_the_log(tmp_path, capsys):
    out = tmp_path / "run"
    assert _run(out, "model.cross_attention_dim=33") == 1  # valid, but no text encoder has 33 / 2 heads
    err = capsys.readouterr().err
    assert "Traceback" not in err
    [line] = _error_lines(err)
    assert "ValueError: The hidden size (33) is not a multiple of the number of attention heads (2)" in line
    assert line.endswith(f"(the traceback is in {out / 'run.log'})")
    assert _status(out)["status"] == "failed" and "attention heads" in _status(out)["error"]
    assert "Traceback" in (out / "run.log").read_text()
    RunLock.acquire(out).release()  # released on the way out


def test_run_json_is_rewritten_in_place_when_it_cannot_be_replaced(tmp_path, monkeypatch):
    recipe = types.SimpleNamespace(path="r.yaml", overrides=[])
    run = Run(recipe, tmp_path, registry=None)  # type: ignore[arg-type]
    run._write_status("running")
    info_file = tmp_path / "run.json"
    inode = info_file.stat().st_ino
    assert info_file.stat().st_size == STATUS_BLOCK

    def no_space(self, data):
        raise OSError(errno.ENOSPC, ENOSPC)

    monkeypatch.setattr(pathlib.Path, "write_bytes", no_space)
    run._write_status("failed", error="x" * 6000)  # too long for the file: shortened to fit
    assert info_file.stat().st_ino == inode and info_file.stat().st_size == STATUS_BLOCK
    info = json.loads(info_file.read_text())
    assert info["status"] == "failed" and info["error"].startswith("xxx") and info["error"].endswith("...")
    assert _temp_files(tmp_path) == []
    info_file.unlink()
    with pytest.raises(OSError, match="No space left"):  # nothing to rewrite: the error is raised
        run._write_status("failed", error="x")


def test_the_run_log_on_a_full_disk_stays_quiet(capsys):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    from prunekit.run import _RunLogHandler

    def log_to(handler: logging.Handler) -> str:
        logger = logging.getLogger(f"prunekit.test.{id(handler)}")
        logger.propagate = False
        logger.addHandler(handler)
        try:
            for i in range(50):
                logger.error("line %d %s", i, "x" * 200)
        finally:
            logger.removeHandler(handler)
        try:
            handler.close()
        except OSError as exc:
            return capsys.readouterr().err + f"close raised {exc}"
        return capsys.readouterr().err

    assert "Logging error" in log_to(logging.FileHandler("/dev/full"))  # what a plain handler does
    assert log_to(_RunLogHandler("/dev/full")) == ""


def test_writers_remove_their_temporary_file_when_a_write_fails(tmp_path, monkeypatch):
    import torch

    from prunekit import shards

    target = tmp_path / "notes.txt"
    write_text = pathlib.Path.write_text

    def half(self, data, *args, **kwargs):
        write_text(self, data[:3], *args, **kwargs)
        raise OSError(errno.ENOSPC, ENOSPC)

    monkeypatch.setattr(pathlib.Path, "write_text", half)
    with pytest.raises(OSError) as caught:
        atomic_write_text(target, "some text")
    assert caught.value.filename == str(target)  # named as the file the user knows
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()

    import safetensors.torch

    def half_safetensors(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 10)
        raise safetensors.SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")

    monkeypatch.setattr(safetensors.torch, "save_file", half_safetensors)
    with pytest.raises(safetensors.SafetensorError):
        shards._atomic_save({"x": torch.zeros(2)}, tmp_path / "shard.safetensors", {})
    assert list(tmp_path.iterdir()) == []


def test_failure_reasons_are_one_line(tmp_path):
    (tmp_path / "recipe.yaml").write_text("name: x\n")  # a run was started here: it can be resumed
    disk = OSError(errno.ENOSPC, ENOSPC, str(tmp_path / "metrics.json"))
    assert failure_reason(disk, tmp_path) == f"{ENOSPC}: {tmp_path / 'metrics.json'}; continue with --resume once that is fixed"
    try:  # an OSError a library turned into an error of its own
        try:
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), "/x/y")
        except OSError as exc:
            raise RuntimeError("could not save") from exc
    except RuntimeError as exc:
        assert failure_reason(exc, tmp_path).startswith(f"{os.strerror(errno.EACCES)}: /x/y;")
    torch_full = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 8131008 vs 8130896")
    assert "disk full" in failure_reason(torch_full, tmp_path) or ENOSPC in failure_reason(torch_full, tmp_path)
    (tmp_path / "recipe.yaml").unlink()  # nothing to resume
    assert failure_reason(disk, tmp_path).endswith("; run it again once that is fixed")
    bug = ValueError("first line:\n  second line")
    assert failure_reason(bug, tmp_path) == f"ValueError: first line: second line (the traceback is in {tmp_path / 'run.log'})"


# -- a real full disk ------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of 8 MiB: the tiny run's encoded data fits, its first training checkpoint does not."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8M", "tmpfs", str(disk)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_a_full_disk_fails_cleanly_and_resume_completes_once_there_is_room(small_disk, capsys):
    out = small_disk / "run"
    assert _run(out, "-q") == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Logging error" not in err
    [line] = _error_lines(err)
    assert ENOSPC in line or "disk full" in line, line
    assert line.endswith("continue with --resume once that is fixed")
    info = _status(out)
    assert info["status"] == "failed" and info["error"] == line[len("error: "):]
    assert "encode" in json.loads((out / "stages.json").read_text())  # it failed mid-run, after a stage
    assert _temp_files(out) == []

    grown = subprocess.run(["mount", "-o", "remount,size=64M", str(small_disk)], capture_output=True, text=True)
    assert grown.returncode == 0, grown.stderr
    assert _run(out, "-q", "--resume") == 0, capsys.readouterr().err
    info = _status(out)
    assert info["status"] == "completed" and "error" not in info
    assert json.loads((out / "metrics.json").read_text())["finetune"]["steps"] == 1
    assert _temp_files(out) == []
