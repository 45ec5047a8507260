"""The measured-latency budget on transformer denoisers (PixArt, SD3, Flux): tables profiled on tiny
random models, the estimate checked against its own definition computed here from the table alone,
the ``latency`` budget plugin, and ``prunekit profile`` / ``prunekit validate`` on the DiT recipe.
No timing is asserted (tables are profiled with one round); tests/test_latency_budget.py covers U-Nets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import REPO, run_cli
from transformer_helpers import FFN_GROUPS, LATENT, TEXT_LEN, build

from prunekit.errors import RecipeError
from prunekit.latency import LatencyModel, profile_latency
from prunekit.latency_table import LatencyTable
from prunekit.transformer import make_prunable

pytestmark = pytest.mark.usefixtures("single_thread")
FAMILIES = ["pixart", "sd3", "flux"]
DIT_RECIPE = REPO / "recipes" / "aptp_tiny_dit.yaml"


@pytest.fixture(scope="module", params=FAMILIES)
def family(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def model(family: str) -> torch.nn.Module:
    return build(family)


@pytest.fixture(scope="module")
def table(model: torch.nn.Module) -> LatencyTable:
    return profile_latency(model, height=LATENT, width=LATENT, text_len=TEXT_LEN, points=3, repeats=1, warmup=1,
                           ffn_groups=FFN_GROUPS, check=())


@pytest.fixture(scope="module")
def prunable(model: torch.nn.Module):
    return make_prunable(model, ffn_groups=FFN_GROUPS)


def _block_glue(table: LatencyTable, block: str) -> float:
    """A block's seconds less its width layers' full seconds (layers found by path, not by inventory)."""
    inner = sum(c.seconds[-1] for path, c in table.layers.items() if path.startswith(block + "."))
    return max(0.0, table.blocks[block] - inner)


def _expected(table: LatencyTable, prunable, mask: torch.Tensor) -> float:
    """What the table says a hard mask costs, from the table and the unit ranges alone: fixed cost, plus
    every width layer of a kept block at its kept channels (linear between measured widths), plus the
    glue of every kept block."""
    inventory = prunable.inventory
    blocks = list(table.blocks)
    assert {d.path for d in inventory.depth_layers} == set(blocks)
    kept_block = {d.path: bool(mask[d.start]) for d in inventory.depth_layers}
    full = sum(c.seconds[-1] for c in table.layers.values()) + sum(_block_glue(table, b) for b in blocks)
    fixed = table.dense_s - table.scale * full
    variable = sum(_block_glue(table, b) for b in blocks if kept_block[b])
    for layer in inventory.width_layers:
        block = next(b for b in blocks if layer.path.startswith(b + "."))
        if not kept_block[block]:
            continue
        curve = table.layers[layer.path]
        channels = int(mask[layer.start:layer.stop].sum()) * layer.size
        variable += float(np.interp(channels, curve.widths, curve.seconds))
    return fixed + table.scale * variable


def _mask(prunable, seed: int, keep: float = 0.6) -> torch.Tensor:
    return (torch.rand(prunable.num_units, generator=torch.Generator().manual_seed(seed)) < keep).double()


def test_table_covers_every_layer_and_block_and_times_flux_single_blocks_whole(family, prunable, table, tmp_path):
    inventory = prunable.inventory
    assert set(table.layers) == {layer.path for layer in inventory.width_layers}
    assert list(table.blocks) == list(inventory.blocks)
    assert table.unet_class == type(prunable.unet).__name__
    for layer in inventory.width_layers:
        curve = table.layers[layer.path]
        assert (curve.kind, curve.channels, curve.unit) == (layer.kind, layer.channels, layer.size)
        if layer.path.startswith("single_transformer_blocks."):
            # heads and MLP share the block's proj_out: timed in the block, charged on top of width 0
            assert curve.timed == layer.path.rsplit(".", 1)[0] and curve.seconds[0] == 0.0
        else:  # an attention (joint ones with both streams) or a feed-forward, timed alone
            assert curve.timed is None
    assert (family == "flux") == any(curve.timed for curve in table.layers.values())
    loaded = LatencyTable.load(table.save(tmp_path / "t.json"))
    assert loaded == table
    assert loaded.variable_s() == pytest.approx(
        sum(c.seconds[-1] for c in table.layers.values()) + sum(_block_glue(table, b) for b in table.blocks))


def test_dense_and_random_masks_cost_what_the_table_defines(prunable, table):
    model = LatencyModel(table, prunable.inventory)
    dense = torch.ones(prunable.num_units, dtype=torch.float64)
    assert float(model(dense)) == pytest.approx(table.dense_s, rel=1e-12)
    for seed in range(4):
        mask = _mask(prunable, seed)
        assert float(model(mask)) == pytest.approx(_expected(table, prunable, mask), rel=1e-9, abs=1e-15)


def test_a_dropped_block_removes_exactly_its_layers_and_its_glue(prunable, table):
    model = LatencyModel(table, prunable.inventory)
    mask = _mask(prunable, 7)
    mask[prunable.depth_indices] = 1.0
    for depth in prunable.inventory.depth_layers:
        inner = [layer for layer in prunable.inventory.width_layers if layer.path.startswith(depth.path + ".")]
        assert inner
        charged = sum(float(np.interp(int(mask[layer.start:layer.stop].sum()) * layer.size,
                                      table.layers[layer.path].widths, table.layers[layer.path].seconds))
                      for layer in inner)
        dropped = mask.clone()
        dropped[depth.start] = 0.0
        saved = float(model(mask)) - float(model(dropped))
        assert saved == pytest.approx(table.scale * (charged + _block_glue(table, depth.path)), rel=1e-9, abs=1e-15)


def test_zeroing_one_layer_charges_its_zero_width_entry(prunable, table):
    model = LatencyModel(table, prunable.inventory)
    dense = torch.ones(prunable.num_units, dtype=torch.float64)
    for layer in prunable.inventory.width_layers:
        curve = table.layers[layer.path]
        zeroed = dense.clone()
        zeroed[layer.start:layer.stop] = 0.0
        assert float(model(zeroed)) - table.dense_s == pytest.approx(
            table.scale * (curve.seconds[0] - curve.seconds[-1]), abs=1e-12), layer.path


def test_estimate_is_differentiable_in_the_width_gates(prunable, table):
    model = LatencyModel(table, prunable.inventory)
    gates = torch.rand(2, prunable.num_units, generator=torch.Generator().manual_seed(0)).requires_grad_()
    model.ratio(gates).sum().backward()
    assert gates.grad is not None and torch.isfinite(gates.grad).all() and (gates.grad >= 0).all()
    assert (gates.grad[:, prunable.width_indices] > 0).any()


def test_a_layout_with_fewer_depth_units_moves_the_rest_into_the_fixed_cost(model, table):
    shallow = make_prunable(model, depth=None, ffn_groups=FFN_GROUPS)
    estimate = LatencyModel(table, shallow.inventory)
    assert shallow.inventory.depth_layers == ()
    assert float(estimate(torch.ones(shallow.num_units, dtype=torch.float64))) == pytest.approx(table.dense_s,
                                                                                                 rel=1e-12)


def _budget(prunable, path, **sizes):
    from prunekit_plugins.budgets import LatencyBudget, LatencyBudgetConfig

    where = {"height": LATENT, "width": LATENT, "text_len": TEXT_LEN, **sizes}
    return LatencyBudget(LatencyBudgetConfig(table=str(path)), prunable=prunable, **where)


def test_latency_budget_plugin_on_a_transformer(family, prunable, table, tmp_path):
    path = table.save(tmp_path / "t.json")
    budget = _budget(prunable, path)
    assert budget.cost_of(None) == budget.dense == pytest.approx(table.dense_s)
    gates = torch.rand(3, prunable.num_units, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ratios = budget.ratio(gates)
    assert ratios.shape == (3,) and bool(((ratios > 0) & (ratios <= 1 + 1e-12)).all())
    mask = _mask(prunable, 3)
    assert budget.cost_of(mask) == pytest.approx(_expected(table, prunable, mask), rel=1e-9)
    assert 0 < budget.cost_of(mask) <= budget.dense
    with pytest.raises(RecipeError, match=f"with {TEXT_LEN} tokens, this run uses {LATENT}x{LATENT} with 9"):
        _budget(prunable, path, text_len=9)
    other = FAMILIES[(FAMILIES.index(family) + 1) % len(FAMILIES)]
    with pytest.raises(RecipeError) as err:
        _budget(make_prunable(build(other), ffn_groups=FFN_GROUPS), path)
    (line,) = err.value.problems
    assert "another denoiser" in line and "prunekit profile" in line


def test_profile_then_validate_the_dit_recipe_under_the_latency_budget(tmp_path, capsys):
    from prunekit.cli import main
    from prunekit.registry import get_registry

    path = tmp_path / "dit_table.json"
    random_dit = "model.name=embedded_dit_random"
    assert main(["profile", str(DIT_RECIPE), random_dit, "--output", str(path), "--repeats", "1", "--points", "3",
                 "--check", "0.5"]) == 0
    assert "SD3Transformer2DModel" in capsys.readouterr().out
    table = LatencyTable.load(path)
    # What the recipe's runs feed the transformer (tests/test_embedded_dit.py: encoded latents 4x16x16,
    # text 16 tokens: the CLIP tokens alone, the recorded max_sequence_length 0 for T5).
    assert (table.height, table.width, table.text_len) == (16, 16, 16) and len(table.checks) == 1
    assert table.unet_class == "SD3Transformer2DModel"
    proc = run_cli("validate", str(DIT_RECIPE), random_dit, "budget.name=latency", f"budget.table={path}")
    assert proc.returncode == 0, proc.stderr
    # the run's budget accepts it on the same random transformer (config hash, sizes)
    from prunekit.denoisers import make_prunable as make_any

    pipeline = get_registry().build("model", {"name": "embedded_dit_random"})
    budget = _budget(make_any(pipeline.transformer), path, height=16, width=16, text_len=16)
    assert budget.dense == pytest.approx(table.dense_s)
    assert json.loads(path.read_text())["version"] == 1


def test_profile_refuses_a_denoiser_it_cannot_prune_in_one_line(tmp_path, capsys, monkeypatch):
    from types import SimpleNamespace

    from prunekit.cli import main
    from prunekit.registry import get_registry

    registry = get_registry()
    monkeypatch.setattr(registry, "build", lambda *a, **k: SimpleNamespace(transformer=torch.nn.Linear(2, 2)))
    assert main(["profile", str(DIT_RECIPE), "model.name=embedded_dit_random", "--output",
                 str(tmp_path / "t.json")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Linear is not a supported" in lines[0]
    assert not (tmp_path / "t.json").exists()
