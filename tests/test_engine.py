"""The DeepSpeed engine: deterministic, resumable, NaN-guarded, and multi-process under torchrun."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from helpers import REPO, toy_problem

from prunekit.engine import global_micro_index, micro_batch_indices, train
from prunekit.engine_config import EngineConfig
from prunekit.errors import NonFiniteLossError


@pytest.mark.parametrize("stage", [0, 2, 3])
def test_kill_and_resume_equals_uninterrupted(tmp_path, stage):
    cfg = EngineConfig(zero_stage=stage, micro_batch=8, grad_accum=2, checkpoint_every=2)
    model, loss_fn, batch_fn = toy_problem()
    full = train(model, loss_fn, batch_fn, cfg=cfg, lr=1e-2, steps=6, ckpt_dir=tmp_path / "a", warmup_steps=2)

    model, loss_fn, batch_fn = toy_problem()
    train(model, loss_fn, batch_fn, cfg=cfg, lr=1e-2, steps=3, ckpt_dir=tmp_path / "b", warmup_steps=2)
    model, loss_fn, batch_fn = toy_problem()
    resumed = train(model, loss_fn, batch_fn, cfg=cfg, lr=1e-2, steps=6, ckpt_dir=tmp_path / "b", warmup_steps=2)

    assert resumed.resumed_from == 3
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in full.history], rel=1e-6)
    for key, value in full.state_dict.items():
        torch.testing.assert_close(resumed.state_dict[key], value, rtol=1e-6, atol=1e-7)
    assert full.history[0]["lr"] == pytest.approx(0.5e-2) and full.history[-1]["lr"] == pytest.approx(1e-2)
    assert full.history[-1]["loss"] < full.history[0]["loss"]
    kept = sorted(p.name for p in (tmp_path / "a").glob("step_*"))
    assert kept == ["step_4", "step_6"]  # keep_checkpoints=2


@pytest.mark.parametrize("stage", [0, 2, 3])
def test_gradient_accumulation_averages_every_micro_batch(tmp_path, stage):
    """``grad_accum`` micro-batches give the update of their mean loss, as plain PyTorch computes it,
    at every ZeRO stage (ZeRO-3 once kept only the last micro-batch's gradient: the loss calls the
    module, not DeepSpeed's forward, where ZeRO-3 counts micro-steps)."""
    cfg = EngineConfig(zero_stage=stage, micro_batch=4, grad_accum=3, checkpoint_every=100, grad_clip=0.0)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.GELU(), torch.nn.Linear(32, 3))
    reference = copy.deepcopy(model)
    x, y = torch.randn(48, 8), torch.randn(48, 3)

    def batch_fn(index):
        idx = micro_batch_indices(48, 4, index, 0)
        return {"x": x[idx], "y": y[idx]}

    def loss_fn(module, batch, step):
        return ((module(batch["x"]) - batch["y"]) ** 2).mean(), {}

    result = train(model, loss_fn, batch_fn, cfg=cfg, lr=1e-2, steps=3, ckpt_dir=tmp_path, warmup_steps=0)
    opt = torch.optim.AdamW(reference.parameters(), lr=1e-2, betas=tuple(cfg.betas), eps=cfg.eps,
                            weight_decay=cfg.weight_decay)
    for step in range(3):
        opt.zero_grad()
        for micro in range(3):
            batch = batch_fn(global_micro_index(step, micro, 0, 1, 3))
            (loss_fn(reference, batch, step)[0] / 3).backward()
        opt.step()
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(result.state_dict[key], value, rtol=1e-5, atol=1e-6)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    model, loss_fn, batch_fn = toy_problem()

    def nan_at_step_3(module, batch, step):
        loss, logs = loss_fn(module, batch, step)
        return (loss * float("nan") if step == 3 else loss), logs

    cfg = EngineConfig(micro_batch=8, checkpoint_every=2)
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at step 4 .*Last good checkpoint: step_2"):
        train(model, nan_at_step_3, batch_fn, cfg=cfg, lr=1e-2, steps=6, ckpt_dir=tmp_path)
    assert (tmp_path / "step_2").is_dir() and (tmp_path / "latest").read_text().strip() == "step_2"


def test_micro_batches_cover_epochs_without_repeats():
    seen = [i for index in range(8) for i in micro_batch_indices(20, 5, index, seed=3)]
    assert sorted(seen[:20]) == list(range(20)) and sorted(seen[20:40]) == list(range(20))
    assert micro_batch_indices(20, 5, 2, seed=3) == micro_batch_indices(20, 5, 2, seed=3)
    indices = {global_micro_index(s, m, r, 2, 3) for s in range(4) for m in range(3) for r in range(2)}
    assert indices == set(range(24))


@pytest.mark.distributed
def test_two_process_zero2_trains_a_tiny_unet(tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    out = tmp_path / "result"
    cmd = [torchrun, "--nproc_per_node", "2", "--master_port", str(29500 + os.getpid() % 1000),
           str(REPO / "tests" / "scripts" / "zero_train_unet.py"), "2", str(tmp_path / "ckpt"), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"result.rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world"] == 2 for r in ranks)
    assert ranks[0]["checksum"] == pytest.approx(ranks[1]["checksum"], rel=1e-9)  # replicas agree
    assert ranks[0]["losses"] == pytest.approx(ranks[1]["losses"])  # logged as the mean over ranks
    assert len(ranks[0]["losses"]) == 3
    assert (tmp_path / "ckpt" / "step_3").is_dir()
