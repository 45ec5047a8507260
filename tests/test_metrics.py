"""Metric numerics and plugins: CMMD, Spearman, FID/KID via torchmetrics, CLIP score, local weights."""

from __future__ import annotations

import math
import random

import pytest
import torch
from helpers import save_tiny_clip

from prunekit.errors import MissingPathError
from prunekit.evaluation import EvalBatch, preflight_metrics
from prunekit.metrics import cmmd, rankdata, spearman
from prunekit.registry import get_registry

pytestmark = pytest.mark.usefixtures("single_thread")


def test_cmmd_matches_a_naive_double_loop():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4, generator=g) * 5
    y = torch.randn(5, 4, generator=g) * 5 + 2

    def k(a, b):
        return math.exp(-sum((p - q) ** 2 for p, q in zip(a, b)) / (2 * 10.0**2))

    xs, ys = x.tolist(), y.tolist()
    kxx = sum(k(a, b) for a in xs for b in xs) / len(xs) ** 2
    kyy = sum(k(a, b) for a in ys for b in ys) / len(ys) ** 2
    kxy = sum(k(a, b) for a in xs for b in ys) / (len(xs) * len(ys))
    expected = 1000 * (kxx + kyy - 2 * kxy)
    assert expected > 1  # the sets differ: the check is not trivially 0 == 0
    assert cmmd(x, y) == pytest.approx(expected, rel=1e-9)
    assert cmmd(x, x) == pytest.approx(0.0, abs=1e-9)
    assert cmmd(x, y, sigma=2.0, scale=1.0) != pytest.approx(expected / 1000, rel=1e-3)
    with pytest.raises(ValueError):
        cmmd(x, y[:, :3])


def _direct_spearman(x, y):
    def ranks(v):  # average rank of ties, written out from the definition
        return [sum(1 for w in v if w < a) + (sum(1 for w in v if w == a) + 1) / 2 for a in v]

    rx, ry = ranks(x), ranks(y)
    n = len(x)
    mx, my = sum(rx) / n, sum(ry) / n
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    return cov / math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))


def test_spearman_matches_a_direct_rank_computation():
    rng = random.Random(0)
    x = [rng.randint(1, 12) for _ in range(40)]  # word counts: many ties
    y = [rng.choice([0.6, 0.7, 0.7, 0.8, 0.95]) for _ in range(40)]  # expert MAC ratios: heavy ties
    assert rankdata([10, 20, 20, 5]) == [2.0, 3.5, 3.5, 1.0]
    assert spearman(x, y) == pytest.approx(_direct_spearman(x, y), abs=1e-12)
    distinct = rng.sample(range(100), 15)
    other = rng.sample(range(100), 15)
    d2 = sum((a - b) ** 2 for a, b in zip(rankdata(distinct), rankdata(other)))
    assert spearman(distinct, other) == pytest.approx(1 - 6 * d2 / (15 * (15**2 - 1)), abs=1e-12)
    assert spearman([1, 2, 3], [10, 20, 40]) == pytest.approx(1.0)
    assert math.isnan(spearman([1, 2, 3], [5, 5, 5]))


class TinyFeatures(torch.nn.Module):
    """A fixed random projection of 4x4-pooled pixels: a stand-in for Inception in tests."""

    num_features = 6

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("proj", torch.randn(48, 6, generator=torch.Generator().manual_seed(0)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.adaptive_avg_pool2d(images.float() / 255, 4).flatten(1)
        return x @ self.proj


def _shape_images(count: int, seed: int) -> torch.Tensor:
    from prunekit_plugins.datasets.shapes import Shapes, ShapesConfig

    shapes = Shapes(ShapesConfig(size=count, resolution=16, seed=seed))
    return torch.stack([torch.from_numpy(shapes.image(i)).permute(2, 0, 1) for i in range(count)])


def test_fid_and_kid_plugins_give_the_torchmetrics_values():
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    registry = get_registry()
    real, other_real = _shape_images(48, 0), _shape_images(48, 1)
    noise = torch.randint(0, 256, real.shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    feature = TinyFeatures()
    fid = registry.build("metric", {"name": "fid", "batch_size": 7}, feature=feature)
    kid = registry.build("metric", {"name": "kid", "subsets": 5, "subset_size": 20}, feature=feature)

    def direct_fid(fake):
        metric = FrechetInceptionDistance(feature=TinyFeatures())
        metric.update(real, real=True)
        metric.update(fake, real=False)
        return float(metric.compute())

    same = fid(EvalBatch(["p"] * 48, other_real, real))["fid"]
    far = fid(EvalBatch(["p"] * 48, noise, real))["fid"]
    assert same == pytest.approx(direct_fid(other_real), rel=1e-5)
    assert far == pytest.approx(direct_fid(noise), rel=1e-5)
    assert same < 0.1 * far

    torch.manual_seed(3)
    kid_far = kid(EvalBatch(["p"] * 48, noise, real))
    torch.manual_seed(3)
    direct = KernelInceptionDistance(feature=TinyFeatures(), subsets=5, subset_size=20)
    direct.update(real, real=True)
    direct.update(noise, real=False)
    mean, std = direct.compute()
    assert kid_far["kid"] == pytest.approx(float(mean), rel=1e-5)
    assert kid_far["kid_std"] == pytest.approx(float(std), rel=1e-5)
    assert kid(EvalBatch(["p"] * 48, other_real, real))["kid"] < 0.1 * kid_far["kid"]
    with pytest.raises(MissingPathError, match="eval.dataset"):
        fid(EvalBatch(["p"] * 48, noise, None))


@pytest.mark.parametrize("name, key", [("fid", "metrics.fid.inception_weights"), ("kid", "metrics.kid.inception_weights"),
                                       ("clip_score", "metrics.clip_score.clip_path"), ("cmmd", "metrics.cmmd.clip_path")])
def test_missing_weights_fail_with_one_line_naming_the_key(name, key, tmp_path):
    registry = get_registry()
    for options in ({}, {key.rsplit(".", 1)[1]: str(tmp_path / "absent")}):
        with pytest.raises(MissingPathError) as err:
            registry.build("metric", {"name": name, **options})
        message = str(err.value)
        assert "\n" not in message and f"set {key}=" in message
        problems = preflight_metrics({"metrics": {name: options}, "dataset": {"name": "shapes"}}, registry)
        assert problems == [message]


def test_fid_inception_loads_local_state_dicts_and_rejects_others(tmp_path):
    from safetensors.torch import save_file

    from prunekit.metrics import fid_inception, load_fid_inception

    torch.manual_seed(0)
    source = fid_inception().eval()
    state = {k: v.clone() for k, v in source.state_dict().items()}
    # The published files also hold the 1008-class head; it is not on the feature path.
    state["fc.weight"], state["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)
    save_file(state, str(tmp_path / "inception.safetensors"))
    torch.save(state, tmp_path / "inception.pth")
    for name in ("inception.safetensors", "inception.pth"):
        loaded = load_fid_inception(tmp_path / name)
        got = loaded.state_dict()
        assert got.keys() == source.state_dict().keys()
        assert all(torch.equal(got[k], v) for k, v in source.state_dict().items())
    image = torch.randint(0, 256, (1, 3, 40, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    loaded.input_size = 75  # the smallest input InceptionV3 takes: the same path at 1/16 of the cost
    features = loaded(image)
    assert features.shape == (1, 2048) and torch.isfinite(features).all() and features.abs().sum() > 0

    del state["Mixed_7c.branch_pool.conv.weight"]
    save_file(state, str(tmp_path / "broken.safetensors"))
    with pytest.raises(MissingPathError, match=r"missing: Mixed_7c\.branch_pool\.conv\.weight.*metrics\.fid\.inception_weights"):
        load_fid_inception(tmp_path / "broken.safetensors")
    torch.save({"weights": Opaque()}, tmp_path / "pickled.pth")
    with pytest.raises(MissingPathError, match="tensor-only"):
        load_fid_inception(tmp_path / "pickled.pth")


class Opaque:
    """Not a tensor: a file holding it must not be unpickled."""


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny_clip")


def test_clip_score_and_cmmd_plugins_use_the_local_clip(clip_folder):
    from torchmetrics.multimodal.clip_score import CLIPScore

    from prunekit.metrics import clip_image_embeddings, load_clip

    registry = get_registry()
    real, fake = _shape_images(6, 0), _shape_images(6, 1)
    prompts = ["a large red circle", "a small blue square", "a circle", "a square", "red", "blue"]
    batch = EvalBatch(prompts, fake, real)
    clip_score = registry.build("metric", {"name": "clip_score", "clip_path": str(clip_folder)})(batch)["clip_score"]
    model, processor = load_clip(clip_folder, key="metrics.clip_score.clip_path")
    direct = CLIPScore(model_name_or_path=lambda: (model, processor))
    direct.update(fake, prompts)
    assert clip_score == pytest.approx(float(direct.compute()), rel=1e-5)

    plugin = registry.build("metric", {"name": "cmmd", "clip_path": str(clip_folder)})
    value = plugin(batch)["cmmd"]
    x, y = clip_image_embeddings(real, model, processor), clip_image_embeddings(fake, model, processor)
    torch.testing.assert_close(x.norm(dim=1), torch.ones(6))
    assert value == pytest.approx(cmmd(x, y), rel=1e-6) and value > 0
    assert plugin(EvalBatch(prompts, real, real))["cmmd"] == pytest.approx(0.0, abs=1e-6)


def test_clip_score_per_image_scores_average_to_the_metric(clip_folder):
    """The per-image scores (the report's intervals) are torchmetrics' score of each image alone, and
    their mean is the plugin's value; a prompt longer than the text model's positions is cut the same way."""
    from torchmetrics.multimodal.clip_score import CLIPScore

    from prunekit.evaluation.scoring import per_image_scores
    from prunekit.metrics import load_clip

    fake = _shape_images(5, 2)
    prompts = ["a large red circle", "a small blue square", "two green triangles", "blue",
               " ".join(["a very long prompt"] * 40)]
    plugin = get_registry().build("metric", {"name": "clip_score", "clip_path": str(clip_folder), "batch_size": 2})
    batch = EvalBatch(prompts, fake, None)
    scores = plugin.per_image(batch)["clip_score"]
    model, processor = load_clip(clip_folder, key="metrics.clip_score.clip_path")
    for image, prompt, score in zip(fake, prompts, scores):
        alone = CLIPScore(model_name_or_path=lambda: (model, processor))
        alone.update(image[None], [prompt])
        assert score == pytest.approx(float(alone.score / alone.n_samples), abs=1e-3)
    assert len(set(round(s, 4) for s in scores)) == 5
    value = plugin(batch)["clip_score"]
    assert value == pytest.approx(max(0.0, sum(scores) / 5), abs=1e-3)
    # through evaluation's batching (eval.metric_batch images at a time), in prompt order
    kept = per_image_scores({"clip": plugin}, [EvalBatch(prompts[:3], fake[:3], None), EvalBatch(prompts[3:], fake[3:], None)])
    assert kept["clip_score"] == pytest.approx(scores, abs=1e-4)
