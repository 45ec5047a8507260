"""Sweeps: validation of the whole file at once, running points as ordinary runs, skipping and
resuming after a kill, failures recorded per point, the comparison table and plots."""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import DENSE, ONE_STEP, REPO, kill_at_checkpoint

from prunekit.errors import RunDirError
from prunekit.sweep import MetricColumn, column_value, load_sweep, lookup, macs_ratio, plot_series, run_sweep

USED_PLUGINS = ["models", "datasets", "losses", "finetune", "gates", "budgets", "aptp", "baselines", "domain", "metrics"]


pytestmark = pytest.mark.usefixtures("restore_threads")  # the tiny points run with engine.threads=1


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _sweep_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prunekit.sweep", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def test_a_broken_sweep_file_reports_every_problem_at_once_and_exits_2(tmp_path):
    broken = _write(tmp_path / "broken.yaml", f"""
nmae: broken
output_dir: {tmp_path / 'out'}
grid: {{budget.target: [0.6, 1.5]}}
points:
  - {{label: norm, recipe: {REPO}/recipes/tiny/norm.yaml, overides: [seed=1]}}
  - {{label: uni, recipe: {REPO}/recipes/tiny/uni_arch.yaml, overrides: [method.prune.iterz=3]}}
  - {{label: gone, recipe: missing.yaml}}
  - {{label: norm, recipe: {REPO}/recipes/tiny/norm.yaml}}
metrics: [experts.0.macs, {{name: loss, paths: [x]}}]
launcher: {{mode: threads}}
plot: {{series: [num_codes]}}
""")
    result = _sweep_cli(str(broken))
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    expected = [
        "nmae: unknown key (did you mean 'name'?)",
        "points[0].overides: unknown key (did you mean 'overrides'?)",
        "launcher.mode: 'threads' is not one of 'inprocess', 'subprocess'",
        "metrics[1].paths: unknown key (did you mean 'path'?)",
        "plot: 'num_codes' is not a grid axis",
        "the label 'norm@target=0.6' is used by 2 points",
        "points uni@target=0.6, uni@target=1.5: ",  # one line for a problem shared by several points
        "method.prune.iterz: unknown key (did you mean 'iters'?)",
        "budget.target: 1.5 is out of range (must be <= 1)",
        "points gone@target=0.6, gone@target=1.5: recipe ",
    ]
    for text in expected:
        assert any(text in line for line in lines), (text, lines)
    assert not (tmp_path / "out").exists(), "nothing may run or be created when the sweep file is invalid"


def test_shipped_sweeps_validate_without_importing_torch():
    # Only the plugins these sweeps use: whether other plugins import torch is their own test's business.
    code = (
        "import sys, importlib\nfrom pathlib import Path\nfrom prunekit.registry import Registry\n"
        "from prunekit.sweep import load_sweep\n"
        "registry = Registry()\n"
        f"for name in {USED_PLUGINS!r}:\n"
        "    registry.add_plugin(importlib.import_module('prunekit_plugins.' + name), name=name)\n"
        "out = {}\n"
        "for path in sorted(Path('recipes/sweeps').glob('*.yaml')):\n"
        "    sweep = load_sweep(path, registry=registry)\n"
        "    out[path.stem] = [[p.label, p.method, (p.recipe.data.get('budget') or {}).get('target'),\n"
        "                       (p.recipe.data.get('router') or {}).get('num_codes'),\n"
        "                       (p.recipe.data['method'].get('finetune') or {}).get('iters', p.recipe.data['method'].get('steps')),\n"
        "                       sweep.shown_command(p)] for p in sweep.points]\n"
        "assert 'torch' not in sys.modules, 'validating a sweep imported torch'\n"
        "print(__import__('json').dumps(out))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    sweeps = json.loads(result.stdout)
    assert {"tiny_methods", "coco_table1", "coco_table3"} <= set(sweeps)
    table1 = {row[0]: row[1:] for row in sweeps["coco_table1"]}
    assert table1["norm"][:4] == ["norm", 0.78, None, 50000]
    assert table1["aptp_small"][:4] == ["aptp", 0.64, 8, 30000]
    assert table1["aptp_base"][:4] == ["aptp", 0.78, 8, 30000]
    assert table1["dense"][:4] == ["dense_finetune", None, None, 30000]
    assert all(row[4].startswith("torchrun --nproc_per_node=8 -m prunekit run ") for row in table1.values())
    table3 = {row[0]: row[1:] for row in sweeps["coco_table3"]}
    assert list(table3) == ["uni_arch", "contrastive_router", "optimal_transport", "distillation"]
    assert all(row[1] == 0.8 and row[3] == 10000 for row in table3.values())
    assert [row[0] for row in table3.values()] == ["uni_arch", "aptp", "aptp", "aptp"]
    assert all(row[2] == 8 for row in list(table3.values())[1:])
    methods = {(row[1], row[2]) for row in sweeps["tiny_methods"]}
    assert methods == {("aptp", 0.6), ("aptp", 0.8), ("norm", 0.6), ("norm", 0.8), ("uni_arch", 0.6),
                       ("uni_arch", 0.8), ("dense_finetune", None)}


def test_grid_expansion_labels_and_metric_lookups(tmp_path):
    sweep_file = _write(tmp_path / "grid.yaml", f"""
name: grid
base: {DENSE}
grid:
  - {{method.lr: [1.0e-4, 2.0e-4], seed: [0, 1]}}
  - {{method.lr: [5.0e-4], model.block_out_channels: [[16, 32]]}}
plot: {{series: [lr]}}
""")
    sweep = load_sweep(sweep_file, output=tmp_path / "out", overrides=["dataset.size=4"])
    assert [p.label for p in sweep.points] == [
        "lr=0.0001,seed=0", "lr=0.0001,seed=1", "lr=0.0002,seed=0", "lr=0.0002,seed=1",
        "lr=0.0005,block_out_channels=[16, 32]"]
    assert sweep.points[4].recipe.data["model"]["block_out_channels"] == [16, 32]
    assert sweep.points[1].recipe.data["seed"] == 1 and sweep.points[1].recipe.data["dataset"]["size"] == 4
    assert sweep.points[2].series == "grid@lr=0.0002"
    assert sweep.points[0].run_dir == tmp_path / "out" / "runs" / "lr=0.0001,seed=0"

    metrics = {"experts": [{"macs_ratio": 0.5, "share": 0.25, "final_loss": 2.0},
                           {"macs_ratio": 0.9, "share": 0.75, "final_loss": 1.0},
                           {"macs_ratio": 0.7, "share": 0.0}],
               "routing": {"counts": [1, 3, 0]}}
    assert macs_ratio(metrics) == pytest.approx(0.25 * 0.5 + 0.75 * 0.9)
    assert macs_ratio({"finetune": {"loss_last": 1.0}}) == 1.0  # no experts: the unpruned model
    assert lookup(metrics, "experts.*.final_loss") == pytest.approx(0.25 * 2.0 + 0.75 * 1.0)
    assert lookup(metrics, "routing.counts.1") == 3 and lookup(metrics, "experts.-1.share") == 0.0
    assert lookup(metrics, "experts.7.macs_ratio") is None and lookup(metrics, "nothing.here") is None
    assert column_value(metrics, MetricColumn("loss", ("finetune.loss_last", "experts.0.final_loss"))) == 2.0

    # two seeds at lr 1 average into one point; lr 2 is a point of its own; failed rows are left out
    rows = [{"series": "a", "status": "completed", "lr": lr, "seed": s, "macs_ratio": x, "fid": y}
            for lr, s, x, y in [(1, 0, 0.6, 10.0), (1, 1, 0.62, 12.0), (2, 0, 0.8, 8.0)]]
    rows.append({"series": "a", "status": "failed", "lr": 1, "seed": 2, "macs_ratio": 0.7, "fid": 1.0})
    assert plot_series(rows, "macs_ratio", "fid", axes=["lr", "seed"], average=["seed"]) == \
        {"a": [(pytest.approx(0.61), pytest.approx(11.0)), (0.8, 8.0)]}


def _completed(run_dir: Path) -> bool:
    info = run_dir / "run.json"
    return info.is_file() and json.loads(info.read_text()).get("status") == "completed"


def test_sweep_completes_after_a_kill_skipping_finished_points_and_writes_table_and_plot(tmp_path):
    out = tmp_path / "sweep"
    sweep_file = _write(tmp_path / "four.yaml", f"""
name: four
base: {DENSE}
overrides: {json.dumps(ONE_STEP)}
points:
  - {{label: a, overrides: [method.lr=1.0e-4]}}
  - {{label: b, overrides: [method.lr=2.0e-4]}}
  - {{label: c, overrides: [method.lr=3.0e-4, method.steps=8]}}
  - {{label: d, overrides: [method.lr=4.0e-4]}}
metrics: [finetune.loss_last, {{name: steps, path: [experts.0.finetune_steps, finetune.steps]}}]
""")
    proc = subprocess.Popen([sys.executable, "-m", "prunekit.sweep", str(sweep_file), "--output", str(out)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    runs = out / "runs"
    latest = runs / "c" / "checkpoints" / "finetune" / "latest"
    deadline = time.time() + 400
    try:
        kill_at_checkpoint(proc, latest, [f"step_{i}" for i in range(1, 7)], deadline=deadline)
    finally:
        if proc.poll() is None and time.time() >= deadline:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the sweep finished before it could be killed"
    assert _completed(runs / "a") and _completed(runs / "b")
    assert not _completed(runs / "c") and not (runs / "d").exists()
    finished = {p: [(runs / p / name).read_text() for name in ("run.json", "run.log")] for p in ("a", "b")}

    directory = run_sweep(sweep_file, output=out)
    assert directory == out
    state = json.loads((out / "sweep.json").read_text())
    status = {p["label"]: (p["status"], p["reused"]) for p in state["points"]}
    assert status == {"a": ("completed", True), "b": ("completed", True), "c": ("completed", False),
                      "d": ("completed", False)}
    for p in ("a", "b"):  # skipped: not run again (a resumed run appends to its log)
        assert [(runs / p / name).read_text() for name in ("run.json", "run.log")] == finished[p]
    assert "resuming" in (runs / "c" / "run.log").read_text()
    assert "finetune: resumed from checkpoint" in (runs / "c" / "run.log").read_text()
    history = json.loads((runs / "c" / "artifacts" / "finetune_history.json").read_text())
    assert [h["step"] for h in history] == [1, 2, 3, 4, 5, 6, 7, 8]

    with open(out / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["label"] for r in rows] == ["a", "b", "c", "d"]
    assert all(r["status"] == "completed" and float(r["macs_ratio"]) == 1.0 for r in rows)
    assert [int(float(r["steps"])) for r in rows] == [1, 1, 8, 1]
    table = (out / "results.md").read_text()
    assert "| label | series | method | status | macs_ratio | finetune.loss_last | steps |" in table
    assert table.count("| dense_finetune | completed |") == 4
    from PIL import Image

    plot = Image.open(out / "plots" / "finetune.loss_last.png")
    assert plot.size[0] > 300 and len(plot.getcolors(1 << 16)) > 2  # drawn, not blank
    assert "plots/finetune.loss_last.png" in table
    commands = (out / "commands.sh").read_text().splitlines()
    assert sum(line.startswith("prunekit run ") for line in commands) == 4


def test_a_point_failing_at_run_time_is_recorded_and_the_others_finish(tmp_path):
    out = tmp_path / "sweep"
    sweep_file = _write(tmp_path / "fail.yaml", f"""
name: fail
base: {DENSE}
overrides: {json.dumps(ONE_STEP)}
points:
  - {{label: broken, overrides: [model.cross_attention_dim=33]}}  # valid, but no text encoder has 33 / 2 heads
  - {{label: fine}}
metrics: [finetune.loss_last]
""")
    run_sweep(sweep_file, output=out)
    state = {p["label"]: p for p in json.loads((out / "sweep.json").read_text())["points"]}
    assert state["broken"]["status"] == "failed" and "not a multiple of the number of attention heads" in state["broken"]["error"]
    assert state["fine"]["status"] == "completed" and _completed(out / "runs" / "fine")
    table = (out / "results.md").read_text()
    assert "| broken | broken | dense_finetune | failed |" in table and "attention heads" in table

    from prunekit.sweep import main

    args = argparse.Namespace(sweep=str(sweep_file), output=str(out), resume=True, dry_run=False, overrides=[])
    assert main(args) == 1  # still failing on a rerun; the completed point is skipped
    assert json.loads((out / "sweep.json").read_text())["points"][1]["reused"] is True
    with pytest.raises(RunDirError, match="already exists"):
        run_sweep(sweep_file, output=out, resume=False)
    # a completed run of a different recipe is never passed off as this point's result
    _write(sweep_file, sweep_file.read_text().replace("{label: fine}", "{label: fine, overrides: [method.lr=0.5]}"))
    run_sweep(sweep_file, output=out)
    fine = json.loads((out / "sweep.json").read_text())["points"][1]
    assert fine["status"] == "failed" and "differs from the one it was started with" in fine["error"]


@pytest.mark.slow
def test_tiny_methods_sweep_through_subprocess_launches(tmp_path):
    """APTP, norm, uni-arch and dense fine-tuning, each launched as its own ``prunekit run`` process."""
    fast = ["dataset.size=16", "dataset.resolution=16", "engine.micro_batch=4", "engine.threads=1"]
    sweep_file = _write(tmp_path / "methods.yaml", f"""
name: methods
launcher: {{mode: subprocess}}
overrides: {json.dumps(fast)}
grid: {{budget.target: [0.7]}}
points:
  - {{label: aptp, recipe: {REPO}/recipes/tiny/aptp_smoke.yaml,
     overrides: [method.prune.warmup_iters=2, method.prune.iters=2, method.finetune.iters=1]}}
  - {{label: norm, recipe: {REPO}/recipes/tiny/norm.yaml, overrides: [method.finetune.iters=1]}}
  - {{label: uni_arch, recipe: {REPO}/recipes/tiny/uni_arch.yaml,
     overrides: [method.prune.iters=2, method.finetune.iters=1]}}
  - {{label: dense, recipe: {DENSE}, grid: null, overrides: [method.steps=1, engine.zero_stage=0]}}
metrics: [{{name: finetune_loss, path: [experts.*.final_loss, finetune.loss_last]}}]
""")
    out = run_sweep(sweep_file, output=tmp_path / "out")
    with open(out / "results.csv") as handle:
        rows = {r["label"]: r for r in csv.DictReader(handle)}
    assert list(rows) == ["aptp@target=0.7", "norm@target=0.7", "uni_arch@target=0.7", "dense"]
    assert all(r["status"] == "completed" for r in rows.values()), {k: r["error"] for k, r in rows.items()}
    assert abs(float(rows["norm@target=0.7"]["macs_ratio"]) - 0.7) <= 0.007
    assert abs(float(rows["uni_arch@target=0.7"]["macs_ratio"]) - 0.7) <= 0.007
    assert float(rows["dense"]["macs_ratio"]) == 1.0
    assert all(float(r["finetune_loss"]) > 0 for r in rows.values())
    assert (out / "logs" / "norm@target=0.7.log").read_text().startswith("$ ")
    assert (out / "plots" / "finetune_loss.png").is_file()


def test_a_point_is_completed_only_when_its_run_directory_says_so(tmp_path, capsys):
    """A launcher that exits 0 without running anything, or leaving a failed run, makes a failed point;
    a point whose run directory another process holds is not run alongside it."""
    from prunekit.run import RunLock
    from prunekit.sweep import main

    launcher = _write(tmp_path / "launcher.py", """
import json, sys
from pathlib import Path
args = sys.argv[1:]
out = Path(args[args.index("--output") + 1])
if "method.lr=0.5" in args:  # leaves a failed run behind, and exits 0 all the same
    out.mkdir(parents=True)
    (out / "recipe.yaml").write_text("name: x\\n")
    (out / "run.json").write_text(json.dumps({"status": "failed", "error": "No space left on device: /x"}))
""")
    out = tmp_path / "sweep"
    sweep_file = _write(tmp_path / "zero.yaml", f"""
name: zero
base: {DENSE}
overrides: {json.dumps(ONE_STEP)}
launcher: {{mode: subprocess, command: [{sys.executable}, {launcher}]}}
points:
  - {{label: nothing}}
  - {{label: failed, overrides: [method.lr=0.5]}}
  - {{label: held, overrides: [method.lr=0.6]}}
""")
    (out / "runs" / "held").mkdir(parents=True)
    lock = RunLock.acquire(out / "runs" / "held", action="run")
    try:
        args = argparse.Namespace(sweep=str(sweep_file), output=str(out), resume=True, dry_run=False, overrides=[])
        assert main(args) == 1
    finally:
        lock.release()
    state = {p["label"]: p for p in json.loads((out / "sweep.json").read_text())["points"]}
    assert {label: p["status"] for label, p in state.items()} == {"nothing": "failed", "failed": "failed",
                                                                  "held": "failed"}
    assert "left no run in" in state["nothing"]["error"] and "(no run.json)" in state["nothing"]["error"]
    assert "says status 'failed': No space left on device: /x" in state["failed"]["error"]
    assert f"is in use by pid {os.getpid()}" in state["held"]["error"]
    assert not (out / "runs" / "held" / "run.json").exists()  # the held point was not launched
    err = capsys.readouterr().err
    assert "0 of 3 points completed" in err and "  failed: nothing: the launch ended without an error" in err
    table = (out / "results.md").read_text()
    assert "| nothing | nothing | dense_finetune | failed |" in table and "left no run in" in table


def test_jobs_run_points_side_by_side_and_record_every_one(tmp_path):
    """With jobs: 2 two points' processes overlap in time, never more than two at once, and every
    point is recorded from its own run directory; the state file stays readable throughout."""
    launcher = _write(tmp_path / "launcher.py", """
import json, os, sys, time
from pathlib import Path
args = sys.argv[1:]
out = Path(args[args.index("--output") + 1])
with open(os.environ["SPANS"], "a") as spans:
    spans.write(f"start {time.time()}\\n")
time.sleep(1.0)
out.mkdir(parents=True)
(out / "recipe.yaml").write_text("name: x\\n")
lr = [a for a in args if a.startswith("method.lr=")][0].split("=")[1]
(out / "metrics.json").write_text(json.dumps({"lr_seen": float(lr)}))
(out / "run.json").write_text(json.dumps({"status": "completed"}))
with open(os.environ["SPANS"], "a") as spans:
    spans.write(f"end {time.time()}\\n")
""")
    sweep_file = _write(tmp_path / "jobs.yaml", f"""
name: jobs
base: {DENSE}
overrides: {json.dumps(ONE_STEP)}
launcher: {{command: [{sys.executable}, {launcher}], jobs: 2}}
grid: {{method.lr: [0.1, 0.2, 0.3, 0.4]}}
metrics: [lr_seen]
""")
    os.environ["SPANS"] = str(tmp_path / "spans.txt")
    try:
        out = run_sweep(sweep_file, output=tmp_path / "out")
    finally:
        del os.environ["SPANS"]
    events = sorted((float(t), kind) for kind, t in (line.split() for line in (tmp_path / "spans.txt").read_text().splitlines()))
    running, most = 0, 0
    for _, kind in events:
        running += 1 if kind == "start" else -1
        most = max(most, running)
    assert most == 2
    state = json.loads((out / "sweep.json").read_text())
    assert [p["status"] for p in state["points"]] == ["completed"] * 4
    with open(out / "results.csv") as handle:
        assert [float(r["lr_seen"]) for r in csv.DictReader(handle)] == [0.1, 0.2, 0.3, 0.4]
    # the command-line option wins over the file; 0 jobs is refused before anything runs
    with pytest.raises(ValueError, match="at least 1"):
        run_sweep(sweep_file, output=tmp_path / "other", jobs=0)
    assert not (tmp_path / "other").exists()
    bad = _write(tmp_path / "bad.yaml", sweep_file.read_text().replace("jobs: 2", "jobs: 0"))
    result = _sweep_cli(str(bad), "--dry-run")
    assert result.returncode == 2 and "launcher.jobs: 0 must be at least 1" in result.stderr


def test_summary_over_seeds_gives_mean_std_and_counts_only_finished_points():
    import statistics

    from prunekit.sweep.summary import format_stat, separated, summary_rows

    rows = [{"series": "aptp", "budget": 0.6, "seed": s, "status": "completed", "q": q}
            for s, q in enumerate([0.30, 0.34, 0.32])]
    rows += [{"series": "norm", "budget": 0.6, "seed": 0, "status": "completed", "q": 0.20},
             {"series": "norm", "budget": 0.6, "seed": 1, "status": "completed", "q": 0.22},
             {"series": "norm", "budget": 0.6, "seed": 2, "status": "failed", "q": 9.0},
             {"series": "norm", "budget": 0.8, "seed": 0, "status": "completed", "q": float("nan")}]
    lines = summary_rows(rows, axes=["budget", "seed"], average=["seed"], columns=["q"])
    assert [(line["series"], line["budget"], line["points"], line["completed"]) for line in lines] == [
        ("aptp", 0.6, 3, 3), ("norm", 0.6, 3, 2), ("norm", 0.8, 1, 1)]
    assert lines[0]["q"]["mean"] == pytest.approx(0.32) and lines[0]["q"]["std"] == pytest.approx(
        statistics.stdev([0.30, 0.34, 0.32]))
    assert lines[1]["q"] == {"mean": pytest.approx(0.21), "std": pytest.approx(statistics.stdev([0.2, 0.22])), "n": 2}
    assert lines[2]["q"] == {"mean": None, "std": None, "n": 0}  # a NaN is not a value
    assert separated(lines[0]["q"], lines[1]["q"])
    assert not separated(lines[0]["q"], {"mean": 0.31, "std": 0.05, "n": 3})
    assert not separated(lines[0]["q"], {"mean": 0.1, "std": None, "n": 1})  # one point: no spread, no verdict
    assert format_stat(lines[0]["q"]) == "0.32 ± 0.02"
