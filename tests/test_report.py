"""The run report: every section from a tiny APTP run, numbers checked against their definitions."""

from __future__ import annotations

import json
import re
from argparse import Namespace

import pytest
import torch
from helpers import SMOKE, run_recipe, save_tiny_clip

from prunekit import plots
from prunekit.metrics import spearman
from prunekit.report import SECTIONS, build_report, main_report, retained_mac_map, top_words, words_of

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, single_thread):
    root = tmp_path_factory.mktemp("report")
    clip = save_tiny_clip(root / "clip")
    overrides = [
        # A near-zero initial logit makes the untrained codes keep ~half the units each, so the
        # experts differ after a few steps and the retained-MAC map is not all ones.
        "router.init_logit=0.0", "method.prune.warmup_iters=2", "method.prune.iters=2",
        "method.finetune.iters=1", "dataset.size=32",
        "eval.prompts=6", "eval.steps=2", "eval.resolution=32", "eval.samples_per_expert=2",
        "metrics.macs={}", "metrics.latency={repeats: 1, warmup: 0, steps: 1}",
        f"metrics.clip_score.clip_path={clip}", f"metrics.cmmd.clip_path={clip}",
    ]
    out = root / "run"
    run_recipe(SMOKE, overrides, output=out)
    return out


def test_report_has_every_section_and_embeds_its_images(run_dir):
    page = (run_dir / "report.html").read_text()
    for section in SECTIONS:
        assert f"<section id='{section}'>" in page, section
    # the core sections, and APTP's training curves (its prunekit_report_sections hook) after the samples
    assert re.findall(r"<section id='([^']*)'>", page) == [
        "summary", "metrics", "experts", "architecture", "words", "samples", "losses", "complexity"]
    assert "<h1>APTP run <code>run</code></h1>" in page and "<th>APTP mixture</th>" in page
    images = re.findall(r"<img src='([^']*)'", page)
    assert images and all(src.startswith("data:image/png;base64,") for src in images)
    pngs = sorted(p.stem for p in (run_dir / "report").glob("*.png"))
    assert {"architecture", "experts", "loss_prune", "macs_prune", "loss_finetune", "samples"} <= set(pngs)
    samples = json.loads((run_dir / "artifacts" / "samples" / "samples.json").read_text())
    assert len(images) == len(pngs) - 1 + len(samples)  # every chart but the sample grid, plus each sample
    assert "<script" not in page and "<link" not in page and "http" not in page.split("<pre>")[0]
    for word in ("circle", "square", "triangle"):
        assert word in page  # the words section names the shapes routed to experts
    assert "Spearman" in page and "word count" in page


def test_metrics_json_lists_experts_and_the_mixture(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    stages = json.loads((run_dir / "stages.json").read_text())
    assert list(stages)[-2:] == ["export", "evaluate"]
    experts = metrics["experts"]
    assert len(experts) == 4 and sum(e["share"] for e in experts) == pytest.approx(1.0)
    for e in experts:
        assert 0 < e["macs_ratio"] < 1 and set(e) >= {"share", "metrics", "eval_share"}
        if e["eval_images"] >= 2:
            assert {"clip_score", "cmmd"} <= set(e["metrics"])
    mixture, teacher = metrics["mixture"]["metrics"], metrics["teacher"]["metrics"]
    assert {"clip_score", "cmmd", "macs", "macs_ratio", "latency_s"} <= set(mixture)
    assert teacher["macs_ratio"] == 1.0 and mixture["macs_ratio"] < 1.0
    assert metrics["evaluation"]["prompts"] == 6


def test_retained_mac_map_agrees_with_count_macs(run_dir):
    from prunekit.unet import count_macs, make_prunable, read_expert_spec
    from prunekit.unet.prune import meta_skeleton

    mixture = run_dir / "artifacts" / "mixture"
    data = retained_mac_map(mixture)
    manifest = json.loads((mixture / "manifest.json").read_text())
    config, spec = read_expert_spec(mixture / manifest["experts"][0]["path"])
    unet = meta_skeleton(dict(config), spec.class_name)
    prunable = make_prunable(unet, depth=list(spec.depth), ffn_groups=spec.ffn_groups)
    h, w = manifest["latent_size"]
    kwargs = dict(height=h, width=w, text_len=manifest["text_len"])
    dense = count_macs(prunable, None, **kwargs)
    mask = torch.tensor(spec.mask, dtype=torch.float64)
    retained = data["experts"][0]["retained"]
    assert len(set(round(r, 3) for r in retained)) > 3  # a real pruning pattern, not all ones
    checked = 0
    for b, block in enumerate(data["blocks"]):
        units = [u.index for u in prunable.units if u.path == block or u.path.startswith(block + ".")]
        if not units:
            continue
        only_this_block = torch.ones_like(mask)
        only_this_block[units] = mask[units]
        removed = dense - count_macs(prunable, only_this_block, **kwargs)
        assert data["dense_macs"][b] * (1 - retained[b]) == pytest.approx(removed, rel=1e-6, abs=1.0), block
        checked += 1
    assert checked == len(data["blocks"])
    # all experts together: block MACs are part of the dense total, and each expert's blocks stay in [0, 1]
    assert sum(data["dense_macs"]) < dense
    assert all(0 <= r <= 1 for e in data["experts"] for r in e["retained"])


def letters(prompt: str) -> float:
    """A prompt complexity for the test: characters, plus a bonus for large shapes."""
    return float(len(prompt)) + (5.0 if "large" in prompt else 0.0)


def test_report_rebuilds_from_the_run_directory_with_a_complexity_function(run_dir, tmp_path):
    from prunekit.run_files import routed_prompts

    out = tmp_path / "again.html"
    assert main_report(Namespace(run_dir=str(run_dir), output=str(out), complexity="test_report:letters")) == 0
    assert "Complexity: test_report.letters." in out.read_text()
    data = json.loads((run_dir / "report" / "report.json").read_text())
    prompts, experts = routed_prompts(run_dir)
    ratio = {e["id"]: e["macs_ratio"] for e in data["manifest"]["experts"]}
    expected = spearman([letters(p) for p in prompts], [ratio[e] for e in experts])
    assert data["complexity"]["spearman"] == pytest.approx(expected)
    build_report(run_dir)  # back to the default: the word count, with the run's report in place
    assert "word count" in json.loads((run_dir / "report" / "report.json").read_text())["complexity"]["source"]


def test_words_drop_stop_words_and_rank_by_frequency():
    assert words_of("A man riding a horse on the beach, with 2 dogs.") == ["man", "riding", "horse", "beach", "dogs"]
    table = top_words({0: ["a red circle", "a red square", "a red circle"], 1: ["a blue circle", "the blue sky"]}, k=2)
    assert table[0]["frequent"] == [["red", 3], ["circle", 2]]
    assert table[1]["frequent"][0] == ["blue", 2]
    assert table[0]["distinctive"][0][0] == "red" and table[1]["distinctive"] == [["blue", 2.5]]


def test_plots_draw_what_they_are_given():
    heat = plots.heatmap([[0.0, 1.0], [0.5, None]], row_labels=["a", "b"], col_labels=["x", "y"], annotate=False,
                         cell=(30, 20))
    colors = {color: n for n, color in heat.getcolors(100000)}
    cell = 28 * 18  # inside the 1 px white outline of each cell
    for value in (0.0, 1.0, 0.5):
        assert colors.get(plots.color_scale(value), 0) >= cell, value
    assert colors[(200, 200, 200)] >= cell  # None: grey
    assert plots.color_scale(1.0) == (8, 48, 107) and plots.color_scale(0.0) == (247, 251, 255)
    line = plots.line_chart({"loss": [(1, 1.0), (2, 0.1), (3, 0.01)]}, log_y=True, title="t")
    bars = plots.bar_chart(["E0", "E1"], {"ratio": [0.5, 1.0]}, title="a title much wider than the default width of a bar chart that holds only two bars")
    assert line.size == (720, 380) and bars.width > 420
    assert plots.nice_ticks(0, 1) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert plots.data_uri(line).startswith("data:image/png;base64,iVBOR")


def test_eval_command_reevaluates_a_run_with_overrides(run_dir):
    import argparse

    from prunekit.evaluation import add_eval_arguments, main_eval

    parser = argparse.ArgumentParser()
    add_eval_arguments(parser)
    args = parser.parse_args([str(run_dir), "eval.prompts=4", "metrics.latency=null", "metrics.cmmd=null"])
    assert main_eval(args) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["evaluation"]["prompts"] == 4
    assert "latency_s" not in metrics["mixture"]["metrics"] and "cmmd" not in metrics["mixture"]["metrics"]
    assert {"clip_score", "macs"} <= set(metrics["mixture"]["metrics"])
    evaluation = json.loads((run_dir / "artifacts" / "evaluation.json").read_text())
    assert sum(e["images"] for e in evaluation["experts"]) == 4
    assert "<section id='metrics'>" in (run_dir / "report.html").read_text()


def test_a_plugin_adds_report_sections_through_the_hook(run_dir, tmp_path):
    import shutil

    from PIL import Image

    from prunekit.hookspecs import hookimpl
    from prunekit.registry import get_registry
    from prunekit.report import ReportSection

    seen = {}

    class Sections:
        @hookimpl
        def prunekit_report_sections(self, run_dir, report):
            seen.update(run_dir=run_dir, histories=sorted(report["histories"]))
            return [ReportSection(id="extra", title="Extra <b>", charts={"extra_chart": Image.new("RGB", (8, 8))},
                                  after="metrics"),
                    ReportSection(id="last", title="Last", empty="nothing <here>", after="nowhere")]

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    try:
        page = build_report(copy, registry=get_registry(extra_plugins=[("sections", Sections())])).read_text()
    finally:
        get_registry(refresh=True)
    assert seen["run_dir"] == copy and {"prune_warmup", "prune_joint", "finetune_expert_0"} <= set(seen["histories"])
    assert re.findall(r"<section id='([^']*)'>", page) == [
        "summary", "metrics", "extra", "experts", "architecture", "words", "samples", "losses", "complexity", "last"]
    assert "<nav><a href='#summary'>summary</a><a href='#metrics'>metrics</a><a href='#extra'>extra</a>" in page
    assert "<h2>Extra &lt;b&gt;</h2>" in page and "<p class='note'>nothing &lt;here&gt;</p>" in page
    assert (copy / "report" / "extra_chart.png").is_file() and "alt='extra_chart'" in page

