"""Checkpoints are verified before they are trusted, never unpickle arbitrary objects, and never
hold a step whose loss, gradients or parameters went non-finite."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import pytest
import torch
from helpers import toy_problem as _problem

from prunekit import checkpoints
from prunekit.engine import train
from prunekit.engine_config import EngineConfig
from prunekit.errors import CheckpointError, NonFiniteLossError

STEPS = 6


def _cfg(**kw):
    return EngineConfig(**{"micro_batch": 8, "grad_accum": 1, "checkpoint_every": 2, **kw})


def _train(ckpt_dir, steps=STEPS, lr=1e-2, **cfg):
    model, loss_fn, batch_fn = _problem()
    return train(model, loss_fn, batch_fn, cfg=_cfg(**cfg), lr=lr, steps=steps, ckpt_dir=ckpt_dir)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("ref"))


def _assert_same(result, reference):
    assert [h["loss"] for h in result.history] == [h["loss"] for h in reference.history]
    for key, value in reference.state_dict.items():
        assert torch.equal(result.state_dict[key], value), key


def _interrupted(tmp_path, **cfg):
    """A run stopped after step 4, with intact checkpoints step_2 and step_4."""
    _train(tmp_path, steps=4, **cfg)
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_2", "step_4"]
    return tmp_path / "step_4"


def _model_file(folder):
    return next(folder.glob("*model_states.pt"))


def _damage_truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _damage_empty(path):
    path.write_bytes(b"")


def _damage_header(path):
    data = bytearray(path.read_bytes())
    data[:16] = b"\x00garbled header\x00"
    path.write_bytes(bytes(data))


def _damage_bitflip(path):
    # A bit of tensor data (far from the zip headers): the file still loads, with a different value.
    data = bytearray(path.read_bytes())
    marker = data.find(b"data/0")
    offset = data.find(b"PK", marker + 8) + 80 if marker >= 0 else len(data) // 2
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_damage_truncate, _damage_empty, _damage_header, _damage_bitflip])
def test_damaged_newest_checkpoint_is_named_and_resume_falls_back(tmp_path, reference, damage, caplog):
    newest = _interrupted(tmp_path)
    damage(_model_file(newest))
    with caplog.at_level(logging.WARNING, logger="prunekit"):
        resumed = _train(tmp_path)
    assert resumed.resumed_from == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(newest) in warnings[0] and _model_file(newest).name in warnings[0]
    _assert_same(resumed, reference)
    assert checkpoints.problem(tmp_path / "step_6") is None


def test_unsealed_checkpoint_is_incomplete(tmp_path, reference, caplog):
    newest = _interrupted(tmp_path)
    (newest / checkpoints.MANIFEST).unlink()  # as if killed between DeepSpeed's write and the seal
    with caplog.at_level(logging.WARNING, logger="prunekit"):
        resumed = _train(tmp_path)
    assert resumed.resumed_from == 2
    assert any("never completed" in r.getMessage() for r in caplog.records)
    _assert_same(resumed, reference)


def test_latest_naming_a_missing_step_is_reported(tmp_path, reference, caplog):
    _interrupted(tmp_path)
    (tmp_path / "latest").write_text("step_9\n")
    with caplog.at_level(logging.WARNING, logger="prunekit"):
        resumed = _train(tmp_path)
    assert resumed.resumed_from == 4
    assert any("names step_9, which does not exist" in r.getMessage() for r in caplog.records)
    _assert_same(resumed, reference)


def test_no_intact_checkpoint_restarts_with_a_warning(tmp_path, reference, caplog):
    newest = _interrupted(tmp_path)
    _damage_empty(_model_file(newest))
    _damage_empty(_model_file(tmp_path / "step_2"))
    with caplog.at_level(logging.WARNING, logger="prunekit"):
        resumed = _train(tmp_path)
    assert resumed.resumed_from == 0
    assert any("no intact checkpoint" in r.getMessage() for r in caplog.records)
    _assert_same(resumed, reference)


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.write_text, (pathlib.Path(self.marker), "payload ran"))


def _plant_pickle(folder, marker, *, reseal):
    target = _model_file(folder)
    with target.open("wb") as f:
        pickle.dump({"module": _Payload(marker)}, f, protocol=2)
    if reseal:  # an attacker who also rewrites the manifest
        checkpoints.seal(folder, checkpoints.step_of(folder.name))


def test_planted_pickle_is_never_loaded(tmp_path, reference):
    marker = tmp_path / "payload-ran"
    newest = _interrupted(tmp_path / "ckpt")
    _plant_pickle(newest, marker, reseal=False)
    resumed = _train(tmp_path / "ckpt")
    assert not marker.exists()
    assert resumed.resumed_from == 2  # the digest no longer matches: passed over
    _assert_same(resumed, reference)


def test_planted_pickle_with_a_forged_manifest_is_refused(tmp_path):
    marker = tmp_path / "payload-ran"
    newest = _interrupted(tmp_path / "ckpt")
    _plant_pickle(newest, marker, reseal=True)
    with pytest.raises(CheckpointError, match=r"refusing to load .*model_states\.pt: it holds more than tensors"):
        _train(tmp_path / "ckpt")
    assert not marker.exists()


@pytest.mark.parametrize("stage,precision", [(1, "fp32"), (2, "bf16"), (3, "bf16")])
def test_zero_checkpoints_load_without_pickle(tmp_path, stage, precision):
    """ZeRO's optimizer states hold a few DeepSpeed classes; they are allow-listed, nothing else."""
    full = _train(tmp_path / "a", zero_stage=stage, precision=precision)
    _interrupted(tmp_path / "b", zero_stage=stage, precision=precision)
    manifest = json.loads((tmp_path / "b" / "step_4" / checkpoints.MANIFEST).read_text())
    assert any("optim_states" in name for name in manifest["files"])
    resumed = _train(tmp_path / "b", zero_stage=stage, precision=precision)
    assert resumed.resumed_from == 4
    _assert_same(resumed, full)


def test_step_with_finite_loss_but_infinite_gradient_is_not_saved(tmp_path):
    model, loss_fn, batch_fn = _problem()

    def loss_with_a_kink_at_step_3(module, batch, step):
        loss, logs = loss_fn(module, batch, step)
        if step == 2:  # sqrt(|w - w|) is 0 with an infinite gradient: the loss stays finite
            w = module[0].weight[0, 0]
            loss = loss + torch.sqrt((w - w.detach()).abs())
        return loss, logs

    with pytest.raises(NonFiniteLossError, match=r"step 3 produced .*; stopped, step not saved\. "
                       r"Last good checkpoint: step_2 in "):
        train(model, loss_with_a_kink_at_step_3, batch_fn, cfg=_cfg(), lr=1e-2, steps=STEPS, ckpt_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_2"]
    state = checkpoints.safe_load(_model_file(tmp_path / "step_2"))["module"]
    assert all(torch.isfinite(v).all() for v in state.values())


def test_contrastive_loss_does_not_raise_on_nan():
    from prunekit_plugins.losses import ContrastiveLoss, ContrastiveLossConfig

    class Inputs:
        extra: dict = {}

        def __init__(self, **values):
            self.values = values

        def get(self, key, who):
            return self.values[key]

    loss = ContrastiveLoss(ContrastiveLossConfig())
    z = torch.randn(4, 8)
    v = torch.randn(4, 8)
    finite = loss(Inputs(prompt_embeddings=z, arch_vectors=v))
    assert torch.isfinite(finite)
    v[1, 2] = float("nan")
    assert torch.isnan(loss(Inputs(prompt_embeddings=z, arch_vectors=v)))


def test_exploding_learning_rate_in_a_run_stops_at_the_guard_with_a_finite_checkpoint(tmp_path):
    """The issue's probe: ``method.prune.lr=1e30`` on the smoke recipe."""
    from helpers import REPO, run_cli

    out = tmp_path / "run"
    proc = run_cli("run", str(REPO / "recipes/tiny/aptp_smoke.yaml"), "method.prune.lr=1e30",
                   "engine.checkpoint_every=1", "--output", str(out), "-q")
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "non-finite parameter values" in errors[0] and "Last good checkpoint: step_1 in " in errors[0]
    ckpt = Path(errors[0].split("Last good checkpoint: step_1 in ")[1].strip())
    assert ckpt.is_relative_to(out)
    state = checkpoints.safe_load(_model_file(ckpt / "step_1"))["module"]
    assert state and all(torch.isfinite(v).all() for v in state.values())
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "failed" and "non-finite" in info["error"]
