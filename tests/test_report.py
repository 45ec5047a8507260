"""The run report: every section from a tiny APTP run, numbers checked against their definitions.

The run trains on the shapes dataset and is evaluated on the embedded domain (whose prompts carry a
category), with a test metric that keeps per-image scores, so the routing table and the bootstrap
intervals have real data behind them.
"""

from __future__ import annotations

import json
import re
import shutil
from argparse import Namespace
from collections import Counter
from dataclasses import dataclass
from xml.etree import ElementTree

import pytest
import torch
from helpers import SMOKE, run_recipe, save_tiny_clip

from prunekit.hookspecs import hookimpl
from prunekit.metrics import spearman
from prunekit.report import SECTIONS, build_report, main_report, retained_mac_map, top_words, words_of
from prunekit.report.stats import bootstrap_ci, metric_intervals, paired_difference, summary

pytestmark = pytest.mark.usefixtures("single_thread")

EVAL_PROMPTS = 12
EVAL_DOMAIN = "{name: embedded_domain, size: 64, resolution: 32, seed: 3}"


@dataclass
class BrightnessConfig:
    pass


class Brightness:
    """Mean pixel value of the images in [0, 1]: a mean over images, so it gives per-image scores."""

    def __init__(self, config: BrightnessConfig) -> None:
        self.calls = 0

    def __call__(self, batch):
        return {"brightness": float(batch.images.float().mean() / 255)}

    def per_image(self, batch):
        return {"brightness": (batch.images.float().mean(dim=(1, 2, 3)) / 255).tolist()}


class TestMetrics:
    @hookimpl
    def prunekit_register_components(self, register):
        register("metric", "brightness", Brightness, schema=BrightnessConfig, doc="mean pixel value (tests)")


def section(page: str, section_id: str) -> str:
    match = re.search(rf'<section id="{section_id}">(.*?)</section>', page, re.S)
    assert match, section_id
    return match.group(1)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, single_thread):
    from prunekit.registry import Registry

    root = tmp_path_factory.mktemp("report")
    clip = save_tiny_clip(root / "clip")
    overrides = [
        # A near-zero initial logit makes the untrained codes keep ~half the units each, so the
        # experts differ after a few steps and the retained-MAC map is not all ones.
        "router.init_logit=0.0", "method.prune.warmup_iters=2", "method.prune.iters=2",
        "method.finetune.iters=1", "dataset.size=32",
        f"eval.prompts={EVAL_PROMPTS}", "eval.steps=2", "eval.resolution=32", "eval.samples_per_expert=2",
        f"eval.dataset={EVAL_DOMAIN}",
        "metrics.macs={}", "metrics.latency={repeats: 1, warmup: 0, steps: 1}", "metrics.domain_alignment={}",
        "metrics.brightness={}", f"metrics.clip_score.clip_path={clip}", f"metrics.cmmd.clip_path={clip}",
    ]
    registry = Registry()
    registry.load_entry_points()
    registry.add_plugin(TestMetrics(), name="test_metrics", origin="local")
    out = root / "run"
    run_recipe(SMOKE, overrides, output=out, registry=registry)
    return out


def test_report_has_every_section_and_embeds_its_images(run_dir):
    page = (run_dir / "report.html").read_text()
    ids = re.findall(r'<section id="([^"]*)">', page)
    # the core sections, and APTP's training curves (its prunekit_report_sections hook) after the samples
    assert ids == ["summary", "metrics", "experts", "routing", "architecture", "words", "samples", "losses", "complexity"]
    assert set(SECTIONS) <= set(ids)
    # the title is the recipe's name; the method and the run directory under it
    assert "<title>tiny_aptp_smoke</title>" in page and "<h1>tiny_aptp_smoke</h1>" in page
    assert "APTP run <code>run</code>" in page and "<th>APTP mixture</th>" in page
    images = re.findall(r'<img src="([^"]*)"', page)
    assert images and all(src.startswith("data:image/png;base64,") for src in images)
    assert "<script" not in page and "<link" not in page and "http" not in page.split("<pre>")[0]
    for word in ("circle", "square", "triangle"):
        assert word in section(page, "words")  # the words section names the shapes routed to experts
    assert "Spearman" in page and "word count" in page


def test_every_chart_is_written_as_png_and_svg_and_embedded(run_dir):
    from PIL import Image

    page = (run_dir / "report.html").read_text()
    folder = run_dir / "report"
    charts = {"metrics", "architecture", "experts", "complexity", "loss_prune", "macs_prune", "loss_finetune", "samples"}
    assert charts <= {p.stem for p in folder.glob("*.png")}
    for stem in charts:
        with Image.open(folder / f"{stem}.png") as png:
            png.verify()
        with Image.open(folder / f"{stem}.png") as png:
            assert png.width > 300 and len(png.getcolors(1 << 20)) > 2  # drawn, not blank
        if stem == "samples":  # a grid of generated images: pixels, so PNG only
            assert not (folder / f"{stem}.svg").exists()
            continue
        root = ElementTree.parse(folder / f"{stem}.svg").getroot()
        assert root.tag.endswith("svg") and len(list(root.iter())) > 20
    # every chart but the sample grid is on the page, linked to its SVG (a path relative to the page)
    for stem in charts - {"samples"}:
        assert f'<a href="report/{stem}.svg">SVG</a>' in page, stem
    # the drawings are matplotlib's, text kept as text in the SVG
    assert "Pruning losses" in (folder / "loss_prune.svg").read_text()


def test_samples_show_teacher_and_expert_from_the_same_prompt_and_seed(run_dir):
    import numpy as np
    from PIL import Image

    page = (run_dir / "report.html").read_text()
    samples = json.loads((run_dir / "artifacts" / "samples" / "samples.json").read_text())
    assert samples and all(s.get("teacher_file") for s in samples)
    assert [s["seed"] for s in samples] == list(range(len(samples)))  # image n from seed eval.seed + n
    body = section(page, "samples")
    assert body.count('<figure class="pair">') == len(samples)
    folder = run_dir / "artifacts" / "samples"
    for s in samples:
        teacher, expert = Image.open(folder / s["teacher_file"]), Image.open(folder / s["file"])
        assert teacher.size == expert.size
        assert f'alt="teacher: {s["prompt"]}"' in body and f'alt="E{s["expert"]}: {s["prompt"]}"' in body
    # pruned experts draw something else than the teacher from the same noise
    pixels = [(np.asarray(Image.open(folder / s["teacher_file"]), dtype=int), np.asarray(Image.open(folder / s["file"]), dtype=int))
              for s in samples]
    assert any(np.abs(t - e).max() > 0 for t, e in pixels)


def _eval_rows_and_routes(run_dir):
    """The eval rows drawn (the embedded dataset of the fixture, in draw order) and the expert each
    image went to, as the generation batches recorded them: what the run's tables are checked against."""
    from prunekit_plugins.domain.dataset import EmbeddedDomain, EmbeddedDomainConfig

    from prunekit.evaluation import select_indices

    dataset = EmbeddedDomain(EmbeddedDomainConfig(size=64, resolution=32, seed=3))
    rows = select_indices(len(dataset), EVAL_PROMPTS, 0)
    batches = sorted((run_dir / "artifacts" / "eval_images" / "mixture" / "batches").glob("*.json"))
    return dataset, rows, [e for b in batches for e in json.loads(b.read_text())["experts"]]


def test_eval_complexity_spearman_is_recomputed_from_the_routes(run_dir):
    from prunekit.metrics import spearman

    metrics = json.loads((run_dir / "metrics.json").read_text())
    recorded = metrics["mixture"]["generation"]["complexity"]
    dataset, rows, experts = _eval_rows_and_routes(run_dir)
    complexity = [dataset.complexity[i] for i in rows]
    manifest = json.loads((run_dir / "artifacts" / "mixture" / "manifest.json").read_text())
    ratio = {e["id"]: e["macs_ratio"] for e in manifest["experts"]}
    expected = spearman(complexity, [ratio[e] for e in experts])
    assert recorded["spearman"] == pytest.approx(expected, nan_ok=True)
    assert metrics["mixture"]["metrics"]["complexity_spearman"] == pytest.approx(expected, nan_ok=True)
    assert recorded["prompts"] == EVAL_PROMPTS


def test_routing_table_counts_the_eval_prompts_per_category_and_expert(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    table = metrics["mixture"]["generation"]["experts_by_category"]
    # recomputed from scratch: the categories of the eval rows drawn, the experts the batches recorded
    dataset, rows, experts = _eval_rows_and_routes(run_dir)
    categories = [dataset.categories[i] for i in rows]
    expected = Counter(zip(categories, experts))
    assert {(c, e): n for c, row in table.items() for e, n in enumerate(row) if n} == dict(expected)
    assert [sum(row[e] for row in table.values()) for e in range(4)] == [x["eval_images"] for x in metrics["experts"]]
    # the report shows exactly those counts, one row per category, and the totals
    report = json.loads((run_dir / "report" / "report.json").read_text())["routing"]
    assert report["categories"] == sorted(table) and report["counts"] == [table[c] for c in sorted(table)]
    page = (run_dir / "report.html").read_text()
    rows = re.findall(r"<tr><td class=\"l\">([^<]*)</td>\s*(.*?)<td>(\d+)</td></tr>", section(page, "routing"), re.S)
    shown = {name: [int(n) for n in re.findall(r">(\d+)(?: \(\d+%\))?</td>", cells)] for name, cells, _ in rows}
    assert {c: shown[c] for c in table} == table
    assert sum(int(total) for name, _, total in rows if name in table) == EVAL_PROMPTS


def test_bootstrap_interval_contains_the_estimate_is_reproducible_and_narrows():
    import numpy as np

    rng = np.random.default_rng(1)
    small, large = rng.normal(3.0, 1.0, 30).tolist(), rng.normal(3.0, 1.0, 3000).tolist()
    lo, hi = bootstrap_ci(small)
    assert lo < float(np.mean(small)) < hi
    assert bootstrap_ci(small) == (lo, hi)  # fixed seed: the same interval every time
    lo_l, hi_l = bootstrap_ci(large)
    assert lo_l < float(np.mean(large)) < hi_l and (hi_l - lo_l) < (hi - lo) / 5  # ~1/sqrt(100) as wide
    assert bootstrap_ci([1.0]) is None and bootstrap_ci([None, float("nan"), 2.0]) is None
    assert bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0)
    s = summary([1.0, 2.0, None, 3.0])
    assert s["n"] == 3 and s["mean"] == 2.0 and s["low"] <= 2.0 <= s["high"]
    # paired: a constant shift has a zero-width interval, whatever the spread of the scores
    a = rng.normal(0, 5, 50).tolist()
    d = paired_difference(a, [x + 0.25 for x in a])
    assert d["low"] == pytest.approx(0.25) and d["high"] == pytest.approx(0.25)
    evaluation = {"teacher": {"per_image": {"scores": {"m": a}}},
                  "mixture": {"per_image": {"scores": {"m": [x + 1 for x in a]}, "experts": [i % 2 for i in range(50)]}}}
    found = metric_intervals(evaluation)["metrics"]["m"]
    assert set(found) == {"teacher", "mixture", "difference", "experts"} and set(found["experts"]) == {"0", "1"}
    assert found["experts"]["0"]["n"] == 25


def test_metrics_with_per_image_scores_get_intervals_in_the_report(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    evaluation = json.loads((run_dir / "artifacts" / "evaluation.json").read_text())
    intervals = json.loads((run_dir / "report" / "report.json").read_text())["intervals"]
    assert intervals["resamples"] == 1000 and intervals["level"] == 0.95
    # the metrics that keep per-image scores: the test's brightness, CLIP score, and domain alignment
    # (overall, per category); CMMD (a distance between two sets) has none
    assert {"brightness", "clip_score", "domain_alignment"} <= set(intervals["metrics"])
    assert all(k in ("brightness", "clip_score") or k.startswith("domain_alignment") for k in intervals["metrics"])
    for role in ("teacher", "mixture"):  # CLIP score's per-image scores average to its value (floored at 0)
        value = metrics[role]["metrics"]["clip_score"]
        assert max(0.0, intervals["metrics"]["clip_score"][role]["mean"]) == pytest.approx(value, abs=1e-3)
    scores = evaluation["mixture"]["per_image"]["scores"]["brightness"]
    assert len(scores) == EVAL_PROMPTS and evaluation["mixture"]["per_image"]["experts"] == [
        e for b in sorted((run_dir / "artifacts" / "eval_images" / "mixture" / "batches").glob("*.json"))
        for e in json.loads(b.read_text())["experts"]]
    entry = intervals["metrics"]["brightness"]
    for role in ("teacher", "mixture"):
        value = metrics[role]["metrics"]["brightness"]
        assert entry[role]["mean"] == pytest.approx(value, rel=1e-4)  # the per-image scores average to the metric
        assert entry[role]["low"] <= value <= entry[role]["high"]
    routed = Counter(evaluation["mixture"]["per_image"]["experts"])
    assert {int(e): s["n"] for e, s in entry["experts"].items()} == dict(routed)
    page = (run_dir / "report.html").read_text()
    table = section(page, "metrics")
    assert "<th>mixture − teacher</th>" in table and "95% interval, a percentile bootstrap" in table
    low, high = (f"{entry['mixture'][k]:.4g}".replace("-", "−") for k in ("low", "high"))
    assert f'<span class="ci">[{low}, {high}]</span>' in table
    assert table.count('<span class="ci">') >= 3  # teacher, mixture and their difference, per such metric
    # per expert, under each expert's value
    experts = section(page, "experts")
    for e, s in entry["experts"].items():
        if s["low"] is not None:
            low, high = (f"{s[k]:.4g}".replace("-", "−") for k in ("low", "high"))
            assert f'<span class="ci">[{low}, {high}]</span>' in experts, e


def test_autoescaping_escapes_prompts_and_plugin_text(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    index = copy / "artifacts" / "samples" / "samples.json"
    samples = json.loads(index.read_text())
    samples[0]["prompt"] = "<script>alert('x')</script> & a red circle"
    index.write_text(json.dumps(samples))
    page = build_report(copy, progress=False).read_text()
    assert "<script" not in page
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; a red circle" in section(page, "samples")


def test_metrics_json_lists_experts_and_the_mixture(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    stages = json.loads((run_dir / "stages.json").read_text())
    assert list(stages)[-2:] == ["export", "evaluate"]
    experts = metrics["experts"]
    assert len(experts) == 4 and sum(e["share"] for e in experts) == pytest.approx(1.0)
    for e in experts:
        assert 0 < e["macs_ratio"] < 1 and set(e) >= {"share", "metrics", "eval_share"}
        if e["eval_images"] >= 2:
            assert {"clip_score", "cmmd", "brightness"} <= set(e["metrics"])
    mixture, teacher = metrics["mixture"]["metrics"], metrics["teacher"]["metrics"]
    assert {"clip_score", "cmmd", "macs", "macs_ratio", "latency_s", "domain_alignment", "brightness"} <= set(mixture)
    assert teacher["macs_ratio"] == 1.0 and mixture["macs_ratio"] < 1.0
    assert metrics["evaluation"]["prompts"] == EVAL_PROMPTS


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
    page = out.read_text()
    assert "Complexity: test_report.letters." in page
    # the page is elsewhere: its SVG links still lead to the run's report/ folder
    link = re.search(r'<a href="([^"]*architecture\.svg)">SVG</a>', page).group(1)
    assert (out.parent / link).resolve() == (run_dir / "report" / "architecture.svg").resolve()
    data = json.loads((run_dir / "report" / "report.json").read_text())
    prompts, experts = routed_prompts(run_dir)
    ratio = {e["id"]: e["macs_ratio"] for e in data["manifest"]["experts"]}
    expected = spearman([letters(p) for p in prompts], [ratio[e] for e in experts])
    assert data["complexity"]["spearman"] == pytest.approx(expected)
    for e, interval in enumerate(data["complexity"]["interval_by_expert"]):
        if interval is not None:
            assert interval[0] <= data["complexity"]["mean_by_expert"][e] <= interval[1]
    build_report(run_dir, progress=False)  # back to the default: the word count, with the run's report in place
    assert "word count" in json.loads((run_dir / "report" / "report.json").read_text())["complexity"]["source"]


def test_words_drop_stop_words_and_rank_by_frequency():
    assert words_of("A man riding a horse on the beach, with 2 dogs.") == ["man", "riding", "horse", "beach", "dogs"]
    table = top_words({0: ["a red circle", "a red square", "a red circle"], 1: ["a blue circle", "the blue sky"]}, k=2)
    assert table[0]["frequent"] == [["red", 3], ["circle", 2]]
    assert table[1]["frequent"][0] == ["blue", 2]
    assert table[0]["distinctive"][0][0] == "red" and table[1]["distinctive"] == [["blue", 2.5]]


def test_eval_command_reevaluates_a_run_with_overrides(run_dir):
    import argparse

    from prunekit.evaluation import add_eval_arguments, main_eval

    parser = argparse.ArgumentParser()
    add_eval_arguments(parser)
    # the test metric is not installed in the process-wide registry `prunekit eval` uses
    args = parser.parse_args([str(run_dir), "eval.prompts=4", "metrics.latency=null", "metrics.cmmd=null",
                              "metrics.brightness=null"])
    assert main_eval(args) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["evaluation"]["prompts"] == 4
    assert "latency_s" not in metrics["mixture"]["metrics"] and "cmmd" not in metrics["mixture"]["metrics"]
    assert {"clip_score", "macs"} <= set(metrics["mixture"]["metrics"])
    evaluation = json.loads((run_dir / "artifacts" / "evaluation.json").read_text())
    assert sum(e["images"] for e in evaluation["experts"]) == 4
    page = (run_dir / "report.html").read_text()
    assert '<section id="metrics">' in page
    # the routing table follows the new evaluation: 4 prompts
    assert sum(sum(row) for row in metrics["mixture"]["generation"]["experts_by_category"].values()) == 4
    # brightness is gone: only CLIP score and domain alignment keep per-image scores now
    intervals = json.loads((run_dir / "report" / "report.json").read_text())["intervals"]["metrics"]
    assert "brightness" not in intervals and "clip_score" in intervals
    assert all(k == "clip_score" or k.startswith("domain_alignment") for k in intervals)


def test_a_plugin_adds_report_sections_through_the_hook(run_dir, tmp_path):
    from PIL import Image

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
    assert re.findall(r'<section id="([^"]*)">', page) == [
        "summary", "metrics", "extra", "experts", "routing", "architecture", "words", "samples", "losses",
        "complexity", "last"]
    assert '<nav><a href="#summary">summary</a><a href="#metrics">metrics</a><a href="#extra">extra</a>' in page
    assert "<h2>Extra &lt;b&gt;</h2>" in page and '<p class="note">nothing &lt;here&gt;</p>' in page
    # a plugin's PIL image: a PNG only, embedded
    assert (copy / "report" / "extra_chart.png").is_file() and not (copy / "report" / "extra_chart.svg").exists()
    assert 'alt="extra_chart"' in section(page, "extra")
