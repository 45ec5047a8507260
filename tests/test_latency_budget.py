"""The measured-latency budget: the latency table (file), its differentiable estimate, the ``latency``
budget plugin, ``prunekit profile`` and a run under it. No timing is asserted here (benchmarks/
latency_table.py measures how well a table predicts experts); tables are profiled with one round."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import SMOKE, run_cli, run_recipe
from unet_helpers import LATENT, TEXT_LEN, TINY_SD1, TINY_SD2, build_unet

from prunekit.errors import RecipeError
from prunekit.latency_table import LatencyTable, LatencyTableError
from prunekit.unet import make_prunable, round_mask
from prunekit.unet.latency import LatencyModel, fit_scale, node_widths, profile_latency


@pytest.fixture(scope="module")
def sd2():
    return build_unet(TINY_SD2)


@pytest.fixture(scope="module")
def table(sd2) -> LatencyTable:
    return profile_latency(sd2, height=LATENT, width=LATENT, text_len=TEXT_LEN, points=4, repeats=1, warmup=1,
                           check=())


@pytest.fixture(scope="module")
def staircase(sd2) -> LatencyTable:
    return profile_latency(sd2, height=LATENT, width=LATENT, text_len=TEXT_LEN, tile=16, repeats=1, warmup=0,
                           check=())


def _budget(prunable, path, **options):
    from prunekit_plugins.budgets import LatencyBudget, LatencyBudgetConfig

    config = LatencyBudgetConfig(table=str(path), **options)
    return LatencyBudget(config, prunable=prunable, height=LATENT, width=LATENT, text_len=TEXT_LEN)


def _with_width(prunable, layer, kept: int) -> torch.Tensor:
    mask = torch.ones(prunable.num_units, dtype=torch.float64)
    mask[layer.start + kept:layer.stop] = 0.0
    return mask


def test_table_round_trips_and_records_what_it_measured(table, tmp_path):
    path = table.save(tmp_path / "t.json")
    loaded = LatencyTable.load(path)
    assert loaded == table
    data = json.loads(path.read_text())
    assert data["format"] == "prunekit.latency_table" and data["version"] == 1
    for key in ("device", "device_name", "torch_version", "diffusers_version", "dtype", "batch", "height", "width",
                "text_len", "unet_config_hash", "dense_s", "layers", "blocks"):
        assert key in data, key
    assert (data["height"], data["width"], data["text_len"], data["batch"], data["dtype"]) == (LATENT, LATENT,
                                                                                               TEXT_LEN, 1, "fp32")
    inventory = make_prunable(build_unet(TINY_SD2)).inventory
    assert set(data["layers"]) == {layer.path for layer in inventory.width_layers}
    for curve in table.layers.values():
        assert curve.widths[0] == 0 and curve.widths[-1] == curve.channels
        assert all(b >= a for a, b in zip(curve.seconds, curve.seconds[1:]))  # the isotonic fit
    # two attention layers of the same shape share one measurement
    assert any(curve.same_as for curve in table.layers.values())


def test_malformed_or_foreign_files_are_refused_in_one_line(table, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(LatencyTableError, match="not a prunekit latency table"):
        LatencyTable.load(bad)
    data = table.to_json()
    data["version"] = 99
    bad.write_text(json.dumps(data))
    with pytest.raises(LatencyTableError, match="version 99"):
        LatencyTable.load(bad)
    with pytest.raises(LatencyTableError, match="no latency table"):
        LatencyTable.load(tmp_path / "missing.json")


def test_estimate_equals_the_table_at_its_measured_widths(sd2, table):
    prunable = make_prunable(sd2)
    model = LatencyModel(table, prunable.inventory)
    dense = float(model(torch.ones(prunable.num_units, dtype=torch.float64)))
    assert dense == pytest.approx(table.dense_s, rel=1e-12)
    assert float(model.ratio(prunable.dense_gates())) == pytest.approx(1.0)
    for layer in prunable.inventory.width_layers:
        curve = table.layers[layer.path]
        for width, seconds in zip(curve.widths, curve.seconds):
            estimate = float(model(_with_width(prunable, layer, width // layer.size)))
            assert estimate - dense == pytest.approx(table.scale * (seconds - curve.seconds[-1]), abs=1e-12)


def test_estimate_is_differentiable_and_monotone_in_every_width(sd2, table):
    prunable = make_prunable(sd2)
    model = LatencyModel(table, prunable.inventory)
    gates = torch.rand(3, prunable.num_units, generator=torch.Generator().manual_seed(0)).requires_grad_()
    model.ratio(gates).sum().backward()
    assert gates.grad is not None and torch.isfinite(gates.grad).all()
    assert (gates.grad >= 0).all() and (gates.grad[:, prunable.width_indices] > 0).any()
    # Hard masks: cutting one more unit of any layer never costs more, and the dense point has a
    # gradient (the left slope), so a method can start pruning from it.
    dense = prunable.dense_gates().double().requires_grad_()
    model(dense).backward()
    assert dense.grad is not None
    for layer in prunable.inventory.width_layers:
        costs = [float(model(_with_width(prunable, layer, k))) for k in range(layer.count + 1)]
        assert all(b >= a for a, b in zip(costs, costs[1:])), layer.path
        if table.layers[layer.path].seconds[-1] > table.layers[layer.path].seconds[-2]:
            assert float(dense.grad[layer.stop - 1]) > 0, layer.path


def test_a_dropped_block_costs_nothing_for_its_width_layers(sd2, table):
    prunable = make_prunable(sd2)
    model = LatencyModel(table, prunable.inventory)
    inventory = prunable.inventory
    depth = next(d for d in inventory.depth_layers if d.kind == "depth_transformer")
    inner = [layer for layer in inventory.width_layers if layer.depth_unit == depth.start]
    assert inner
    dropped = torch.ones(prunable.num_units, dtype=torch.float64)
    dropped[depth.start] = 0.0
    narrowed = dropped.clone()
    for layer in inner:
        narrowed[layer.start + 1:layer.stop] = 0.0
    assert float(model(narrowed)) == pytest.approx(float(model(dropped)), abs=1e-15)
    # ... and the block's own glue goes too: dropping it saves more than its inner layers
    full_inner = table.scale * sum(table.layers[layer.path].seconds[-1] for layer in inner)
    assert float(model(torch.ones_like(dropped))) - float(model(dropped)) >= full_inner - 1e-12
    gates = dropped.clone().requires_grad_()
    model(gates).backward()
    assert gates.grad is not None
    for layer in inner:
        assert (gates.grad[layer.start:layer.stop] == 0).all()


def test_rounding_is_charged(sd2, table, tmp_path):
    path = table.save(tmp_path / "t.json")
    prunable = make_prunable(sd2)
    plain, rounded = _budget(prunable, path), _budget(prunable, path, round_to=16)
    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        mask = torch.rand(prunable.num_units, generator=g) < 0.6
        mask[prunable.depth_indices] = True
        # charged for exactly the architecture round_mask (and so the export) builds
        assert rounded.cost_of(mask) == pytest.approx(plain.cost_of(round_mask(prunable, mask, 16)), rel=1e-12)
    soft = torch.rand(prunable.num_units, generator=g, dtype=torch.float64).requires_grad_()
    rounded.ratio(soft).backward()  # straight-through: the rounded value, the curve's gradient
    assert soft.grad is not None and (soft.grad[prunable.width_indices] > 0).any()


def test_staircase_table_charges_the_next_step_up(sd2, staircase):
    prunable = make_prunable(sd2)
    model = LatencyModel(staircase, prunable.inventory)
    assert staircase.interpolation == "staircase" and staircase.tile == 16
    checked = 0
    for layer in prunable.inventory.width_layers:
        curve = staircase.layers[layer.path]
        assert curve.widths == [k * layer.size for k in node_widths(layer, points=0, tile=16)]
        for k in range(layer.count + 1):
            step = min(w for w in curve.widths if w >= k * layer.size)
            expected = staircase.scale * (curve.seconds[curve.widths.index(step)] - curve.seconds[-1])
            assert float(model(_with_width(prunable, layer, k))) - staircase.dense_s == pytest.approx(expected,
                                                                                                    abs=1e-12)
            checked += step != k * layer.size
    assert checked  # some widths lie between steps
    gates = torch.full((prunable.num_units,), 0.7, dtype=torch.float64, requires_grad=True)
    model(gates).backward()
    assert gates.grad is not None and (gates.grad > 0).any()


def test_a_table_of_another_unet_or_input_size_is_refused(table, tmp_path):
    path = table.save(tmp_path / "t.json")
    other = make_prunable(build_unet(TINY_SD1))
    with pytest.raises(RecipeError) as err:
        _budget(other, path)
    (line,) = err.value.problems
    assert line.startswith("budget.table: ") and "another U-Net" in line and "prunekit profile" in line
    from prunekit_plugins.budgets import LatencyBudget, LatencyBudgetConfig

    with pytest.raises(RecipeError, match=r"measured at a 16x16 latent with 7 tokens, this run uses 8x8 with 7"):
        LatencyBudget(LatencyBudgetConfig(table=str(path)), prunable=make_prunable(build_unet(TINY_SD2)),
                      height=8, width=8, text_len=TEXT_LEN)


def test_budget_contract_and_selection_under_latency(sd2, table, tmp_path):
    from prunekit_plugins.baselines.budget_selection import select_under_budget

    from prunekit.interfaces import Budget

    prunable = make_prunable(sd2)
    budget = _budget(prunable, table.save(tmp_path / "t.json"), target=0.6)
    assert isinstance(budget, Budget) and budget.unit == "s" and budget.target == 0.6
    assert budget.cost_of(None) == budget.dense == pytest.approx(table.dense_s)
    scores = torch.rand(prunable.num_units, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    selection = select_under_budget(budget, prunable.inventory, scores, 0.75)
    assert selection.ratio <= 0.75 + 1e-9 and selection.ratio == pytest.approx(
        budget.cost_of(selection.mask) / budget.dense)
    assert selection.ratio > 0.6  # it lands just under the target, not far below


def test_fit_scale_is_the_median_saving_ratio():
    rows = [{"predicted_ratio": 1 - d, "measured_ratio": 1 - f * d} for d, f in ((0.2, 1.1), (0.4, 1.05), (0.6, 1.5))]
    assert fit_scale(rows) == pytest.approx(1.1)  # one disturbed check does not move it
    assert fit_scale([{"predicted_ratio": 1.0, "measured_ratio": 1.0}]) == 1.0


def test_validate_names_a_missing_table_in_one_line(tmp_path):
    missing = tmp_path / "none.json"
    proc = run_cli("validate", str(SMOKE), "budget.name=latency", f"budget.table={missing}")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: budget.table: no latency table at") and "prunekit profile" in lines[0]
    assert run_cli("validate", str(SMOKE), "budget.name=latency", f"budget.table={missing}", "--no-data").returncode == 0
    proc = run_cli("validate", str(SMOKE), "budget.name=latency", f"budget.table={missing}", "method.round_to=8",
                   "--no-data")
    assert proc.returncode == 2 and "budget.round_to" in proc.stderr


def test_profile_command_then_an_aptp_run_under_the_latency_budget(tmp_path, capsys):
    from prunekit.cli import main

    table_path = tmp_path / "smoke_table.json"
    small = ["dataset.size=16"]
    assert main(["profile", str(SMOKE), *small, "--output", str(table_path), "--repeats", "1", "--points", "3",
                 "--check", "0.5"]) == 0
    out = capsys.readouterr().out
    assert str(table_path) in out and "budget.table=" in out
    table = LatencyTable.load(table_path)
    # the latent size and text length of the recipe's runs: 32 px / VAE scale 2, the tokenizer's 32
    assert (table.height, table.width, table.text_len) == (16, 16, 32) and len(table.checks) == 1
    assert main(["profile", str(SMOKE), "--output", str(table_path)]) == 2  # no silent overwrite
    assert "exists" in capsys.readouterr().err

    run, metrics = run_recipe(SMOKE, [*small, "budget.name=latency", f"budget.table={table_path}",
                                      "budget.target=0.7", "method.prune.warmup_iters=2", "method.prune.iters=3",
                                      "method.finetune.iters=1", "engine.micro_batch=8"], output=tmp_path / "run")
    kept = run.dir / "artifacts" / "latency_table.json"
    assert kept.read_text() == table_path.read_text()  # the run records the table it used
    routing = metrics["routing"]
    assert 0 < routing["mean_macs_ratio"] <= 1.0 and len(routing["macs_ratio"]) == 4  # latency ratios here
    assert (run.dir / "artifacts" / "mixture").is_dir()
