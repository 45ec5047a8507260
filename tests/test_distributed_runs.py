"""Whole runs under launchers: 2 ranks on one node, 2 one-rank "nodes", kill -9 and --resume under
torchrun, and data-parallel semantics (N ranks x micro-batch b == 1 rank x b x N accumulation)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import POSTTRAIN_RECIPES, REPO, SMOKE, kill_at_checkpoint
from safetensors.torch import load_file

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

# The smoke recipe, prune stages long enough to be killed in; micro-batch 4 so the two ways of
# making a global micro-batch of 8 can be compared.
ARGS = ["method.encode.shard_size=16", "method.prune.warmup_iters=4", "method.prune.iters=24", "method.prune.micro_batch=4",
        "engine.checkpoint_every=4", "method.finetune.iters=2", "eval.samples_per_expert=1",
        # an evaluate stage, so generation split over ranks is exercised too
        "eval.prompts=12", "eval.steps=3", "metrics.macs={}", "metrics.domain_fid={}"]
ROUTER_FILES = ["router_warmup.safetensors", "router_joint.safetensors", "mixture/router/diffusion_pytorch_model.safetensors"]
EXPERT_FILES = [f"mixture/experts/expert_{i:02d}/diffusion_pytorch_model.safetensors" for i in range(4)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"  # two ranks share two cores
    return env


def _torchrun(*launcher_args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *launcher_args, "-m", "prunekit"]


def _two_ranks(out: Path, *extra: str, resume: bool = False) -> list[str]:
    cmd = _torchrun("--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(_free_port()))
    return [*cmd, "run", str(SMOKE), "--output", str(out), "-q", *ARGS, *extra, *(["--resume"] if resume else [])]


def _run(cmd: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=REPO, env=_clean_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _kill_tree(pid: int) -> None:
    """SIGKILL the launcher and its workers at once, as a lost node would (torchrun starts its
    workers in sessions of their own, so a process-group kill misses them)."""
    import psutil

    parent = psutil.Process(pid)
    for p in [*parent.children(recursive=True), parent]:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass


def _assert_same(a_dir: Path, b_dir: Path, names: list[str], **tol: float) -> None:
    for name in names:
        a, b = load_file(a_dir / "artifacts" / name), load_file(b_dir / "artifacts" / name)
        assert a.keys() == b.keys(), name
        for key in a:
            torch.testing.assert_close(a[key], b[key], **tol, msg=lambda m, n=name, k=key: f"{n}:{k}: {m}")


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("two_ranks") / "run"
    proc = _run(_two_ranks(out))
    return out, proc


def test_two_ranks_one_directory_one_report(two_rank_run):
    out, proc = two_rank_run
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "completed" and info["world_size"] == 2
    assert (out / "report.html").is_file()
    assert sorted(p.name for p in out.parent.iterdir()) == ["run"]  # nothing beside it
    log = (out / "run.log").read_text()
    assert log.count("stage encode: started") == 1  # one writer: rank 0's log only
    stages = json.loads((out / "stages.json").read_text())
    assert stages["encode"]["samples"] == 64  # both ranks' shares, gathered
    assert stages["prune"]["steps"] == 24


def test_two_ranks_equal_one_rank_with_accumulation(two_rank_run, tmp_path):
    """Same global micro-batches, same gradient average: the routers agree to float noise."""
    out, _ = two_rank_run
    single = tmp_path / "single"
    _run([sys.executable, "-m", "prunekit", "run", str(SMOKE), "--output", str(single), "-q", *ARGS,
          "method.prune.grad_accum=2", "method.finetune.grad_accum=2"])
    _assert_same(out, single, ROUTER_FILES, rtol=1e-5, atol=1e-5)
    a = json.loads((out / "stages.json").read_text())["route"]
    b = json.loads((single / "stages.json").read_text())["route"]
    assert a["counts"] == b["counts"] and a["macs"] == b["macs"]
    _assert_same(out, single, EXPERT_FILES, rtol=1e-4, atol=1e-5)
    # Evaluation: each rank generated half of the prompts (same seeds per prompt); rank 0 scored all.
    ev2 = json.loads((out / "artifacts" / "evaluation.json").read_text())
    ev1 = json.loads((single / "artifacts" / "evaluation.json").read_text())
    assert ev2["prompts"] == ev1["prompts"] == 12
    assert [e["images"] for e in ev2["experts"]] == [e["images"] for e in ev1["experts"]]
    for role in ("teacher", "mixture"):
        assert ev2[role]["metrics"]["domain_fid"] == pytest.approx(ev1[role]["metrics"]["domain_fid"], rel=1e-3)
    # The encode stage split over 2 ranks gives the cache one rank writes, to float noise.
    from prunekit.shards import EncodedShards

    e2, e1 = EncodedShards(out / "artifacts" / "encoded"), EncodedShards(single / "artifacts" / "encoded")
    assert e2.prompts == e1.prompts
    for column in ("latents", "text", "z"):
        torch.testing.assert_close(e2.column(column), e1.column(column), rtol=1e-3, atol=1e-3)


def test_sigkill_mid_prune_then_resume_under_torchrun(two_rank_run, tmp_path):
    full, _ = two_rank_run
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_two_ranks(killed), cwd=REPO, env=_clean_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    latest = killed / "checkpoints" / "prune_joint" / "latest"
    kill_at_checkpoint(proc, latest, ("step_8", "step_12", "step_16"), deadline=time.time() + 400, kill=_kill_tree)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert json.loads((killed / "run.json").read_text())["status"] == "running"
    _run(_two_ranks(killed, resume=True))
    _assert_same(full, killed, ROUTER_FILES + EXPERT_FILES, rtol=0, atol=0)
    log = (killed / "run.log").read_text()
    assert "prune_joint: resumed from checkpoint" in log
    assert log.count("stage prune: done") == 1 and log.count("run complete") == 1


def test_two_nodes_on_one_machine_run_like_two_ranks(two_rank_run, tmp_path):
    full, _ = two_rank_run
    out = tmp_path / "nodes"
    port = str(_free_port())
    procs = []
    for node in (0, 1):
        cmd = _torchrun("--nnodes", "2", "--node_rank", str(node), "--nproc_per_node", "1",
                        "--master_addr", "127.0.0.1", "--master_port", port)
        procs.append(subprocess.Popen([*cmd, "run", str(SMOKE), "--output", str(out), "-q", *ARGS], cwd=REPO,
                                      env=_clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    assert json.loads((out / "run.json").read_text())["status"] == "completed"
    _assert_same(full, out, ROUTER_FILES + EXPERT_FILES, rtol=1e-6, atol=1e-7)


def test_a_failing_rank_stops_every_rank_with_its_error(tmp_path):
    """Rank 0 refuses an existing run directory; rank 1 does not hang waiting for it."""
    out = tmp_path / "taken"
    out.mkdir()
    (out / "something").write_text("x")
    start = time.time()
    proc = subprocess.run(_two_ranks(out), cwd=REPO, env=_clean_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "already exists" in proc.stderr
    assert proc.stderr.count("error: ") == 1, proc.stderr[-2000:]  # the failing rank's line, once
    assert time.time() - start < 120
    assert sorted(p.name for p in out.iterdir()) == ["something"]


def test_post_training_method_under_two_ranks_prunes_like_one(tmp_path):
    """Calibration runs on every rank alike; rank 0 writes the pruned weights and the pipeline."""
    recipe = POSTTRAIN_RECIPES / "tiny_wanda.yaml"
    cmd = _torchrun("--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(_free_port()))
    _run([*cmd, "run", str(recipe), "--output", str(tmp_path / "two"), "-q"])
    _run([sys.executable, "-m", "prunekit", "run", str(recipe), "--output", str(tmp_path / "one"), "-q"])
    assert json.loads((tmp_path / "two" / "run.json").read_text())["world_size"] == 2
    _assert_same(tmp_path / "one", tmp_path / "two", ["pruned/unet.safetensors", "pruned/text_encoder.safetensors"],
                 rtol=0, atol=0)


def test_text_encoders_train_under_two_ranks_zero3_like_one_rank_with_accumulation(tmp_path):
    """SDXL's two CLIPs and its U-Net trained jointly (``dense_finetune``, ``train_text_encoder``) at
    ZeRO-3 over 2 ranks end where 1 rank with 2 accumulation steps does; every rank exits 0."""
    from helpers import DENSE

    from prunekit.tiny import save_tiny_family

    folder = save_tiny_family("sdxl", tmp_path / "sdxl")
    args = ["model.name=diffusers_sd", f"model.path={folder}", "eval.scheduler=pipeline", "method.train_text_encoder=true",
            "dataset.size=16", "dataset.resolution=16", "engine.micro_batch=2", "engine.zero_stage=3",
            "method.warmup_steps=0", "method.steps=3", "method.lr=1e-3", "method.cond_dropout=0.5",
            "engine.checkpoint_every=3"]
    cmd = _torchrun("--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(_free_port()))
    _run([*cmd, "run", str(DENSE), "--output", str(tmp_path / "two"), "-q", *args])
    _run([sys.executable, "-m", "prunekit", "run", str(DENSE), "--output", str(tmp_path / "one"), "-q", *args,
          "engine.grad_accum=2"])
    files = [f"pipeline/{part}/model.safetensors" for part in ("text_encoder", "text_encoder_2")]
    files.append("pipeline/unet/diffusion_pytorch_model.safetensors")
    _assert_same(tmp_path / "one", tmp_path / "two", files, rtol=1e-4, atol=1e-5)
    before = load_file(str(folder / "text_encoder_2" / "model.safetensors"))
    after = load_file(str(tmp_path / "two" / "artifacts" / "pipeline" / "text_encoder_2" / "model.safetensors"))
    assert sum(not torch.equal(before[k], after[k]) for k in before) > len(before) / 2
