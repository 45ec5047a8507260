"""The embedded domain: generator, prompt parsing, the shipped classifier, its metrics and the shipped teacher."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from helpers import REPO
from prunekit_plugins.domain.dataset import EmbeddedDomain, EmbeddedDomainConfig
from prunekit_plugins.domain.prompts import DomainPromptError, attributes_for_prompt, parse_prompt
from prunekit_plugins.domain.vocab import COLORS, SIZES

from prunekit.evaluation import EvalBatch
from prunekit.registry import get_registry


def domain(size: int, seed: int, **options) -> EmbeddedDomain:
    return EmbeddedDomain(EmbeddedDomainConfig(size=size, seed=seed, **options))


@pytest.fixture(scope="module")
def classifier():
    from prunekit_plugins.domain.classifier import load_classifier

    return load_classifier()


def test_same_seed_same_prompts_and_pixels_other_seed_differs():
    a, b, c = domain(64, seed=5), domain(64, seed=5), domain(64, seed=6)
    assert a.prompts == b.prompts and a.attributes == b.attributes
    assert torch.equal(a.uint8_images(), b.uint8_images())
    assert a.prompts != c.prompts
    assert not torch.equal(a.uint8_images(), c.uint8_images())
    # a larger set extends the same list: prompt i and drawing i depend on (seed, i) only
    longer = domain(100, seed=5)
    assert longer.prompts[:64] == a.prompts
    assert torch.equal(longer.uint8_images(range(64)), a.uint8_images())


def test_items_have_the_training_format():
    item = domain(4, seed=0)[3]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert -1.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    assert item["attributes"] == attributes_for_prompt(item["prompt"])


def test_complexity_orders_the_categories():
    data = domain(600, seed=1)
    by_category: dict[str, list[float]] = {}
    for category, score in zip(data.categories, data.complexity):
        by_category.setdefault(category, []).append(score)
    assert set(by_category) == {"object", "pair", "digit", "number"}
    order = ["object", "digit", "pair", "number"]
    for easier, harder in zip(order, order[1:]):
        assert max(by_category[easier]) < min(by_category[harder]), (easier, harder)
    # a size word makes an object prompt more complex
    assert parse_prompt("a large red circle").complexity > parse_prompt("a red circle").complexity


def test_attributes_for_prompt_round_trips_every_generated_prompt():
    data = domain(3000, seed=2)
    for prompt, attributes, spec in zip(data.prompts, data.attributes, data.specs):
        assert attributes_for_prompt(prompt) == attributes
        assert parse_prompt(prompt).text == prompt
        assert attributes["complexity"] == spec.complexity
    pair = attributes_for_prompt("a small blue square left of a large yellow triangle")
    assert pair["relation"] == "left of"
    assert [(o["size"], o["color"], o["shape"]) for o in pair["objects"]] == [
        ("small", "blue", "square"), ("large", "yellow", "triangle")]
    assert [o["digit"] for o in attributes_for_prompt("the number 42 in red")["objects"]] == [4, 2]
    for bad in ("a red dog", "the digit 42 in red", "the number 7 in red", "a circle", "the number 07 in red",
                "a red circle next to a blue square"):
        with pytest.raises(DomainPromptError):
            parse_prompt(bad)


def test_drawings_follow_their_prompts():
    data = domain(400, seed=3)
    for i in range(len(data)):
        scene, image = data.scene(i), torch.from_numpy(data.image(i))
        for placed, stated in zip(scene.placed, data.attributes[i]["objects"]):
            if stated["size"] is not None:
                assert placed.obj.size == stated["size"]
            ink = (image == torch.tensor(COLORS[placed.obj.color], dtype=torch.uint8)).all(-1)
            assert int(ink.sum()) >= 6, (data.prompts[i], placed)
        if scene.spec.category == "pair":
            first, second = scene.placed
            along = {"left of": second.x - first.x, "right of": first.x - second.x,
                     "above": second.y - first.y, "below": first.y - second.y}[scene.spec.relation]
            across = abs(first.y - second.y) if scene.spec.relation in ("left of", "right of") else abs(first.x - second.x)
            gap = along - (SIZES[first.obj.size] + SIZES[second.obj.size]) * data.resolution
            assert gap >= 1.9 and across <= 2.0, (data.prompts[i], scene.placed)


def test_shipped_classifier_reads_fresh_real_images(classifier):
    from prunekit_plugins.domain.evaluate import alignment_scores

    data = domain(400, seed=4242)
    scores = alignment_scores(classifier, data.uint8_images(), attributes=data.attributes)
    assert scores["alignment"] > 0.95, scores
    assert min(v for k, v in scores.items() if k.startswith("alignment_")) > 0.9, scores
    # from prompts alone (parsed) it reads the same
    assert alignment_scores(classifier, data.uint8_images(), prompts=data.prompts) == scores


def test_alignment_is_low_for_wrong_prompts_and_noise(classifier):
    from prunekit_plugins.domain.evaluate import alignment_scores

    data = domain(300, seed=77)
    images = data.uint8_images()
    shifted = data.prompts[1:] + data.prompts[:1]
    assert alignment_scores(classifier, images, prompts=shifted)["alignment"] < 0.05
    noise = torch.randint(0, 256, images.shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert alignment_scores(classifier, noise, prompts=data.prompts)["alignment"] < 0.05
    blank = torch.full_like(images, 245)
    assert alignment_scores(classifier, blank, prompts=data.prompts)["alignment"] < 0.05


def test_metric_plugins_on_an_eval_batch():
    registry = get_registry()
    alignment = registry.build("metric", {"name": "domain_alignment"})
    fid = registry.build("metric", {"name": "domain_fid"})
    real, other = domain(256, seed=10), domain(256, seed=11)
    real_images, other_images = real.uint8_images(), other.uint8_images()
    noise = torch.randint(0, 256, real_images.shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(1))

    batch = EvalBatch(prompts=other.prompts, images=other_images, real_images=real_images)
    scores = alignment(batch)
    assert scores["domain_alignment"] > 0.95 and "domain_alignment_pair" in scores
    # per image: 1/0 that average to the batch score, per category only inside the category
    per_image = alignment.per_image(batch)
    assert len(per_image["domain_alignment"]) == len(other.prompts)
    for key, value in scores.items():
        present = [v for v in per_image[key] if v is not None]
        assert set(present) <= {0.0, 1.0} and sum(present) / len(present) == pytest.approx(value), key
    real_vs_real = fid(batch)["domain_fid"]
    real_vs_noise = fid(EvalBatch(prompts=real.prompts, images=noise, real_images=real_images))["domain_fid"]
    blank = torch.full_like(real_images, 245)
    real_vs_blank = fid(EvalBatch(prompts=real.prompts, images=blank, real_images=real_images))["domain_fid"]
    # the feature scale is the classifier's own: compare with the finite-sample floor of real vs real
    assert real_vs_noise > 10 * real_vs_real and real_vs_blank > 10 * real_vs_real, (real_vs_real, real_vs_noise, real_vs_blank)
    # without real images, reference drawings come from the prompts (same prompts: below real vs real)
    drawn = fid(EvalBatch(prompts=other.prompts, images=other_images))["domain_fid"]
    assert drawn < real_vs_real, (drawn, real_vs_real)


def test_embedded_teacher_loads_from_the_shipped_folder_and_generates():
    from diffusers import StableDiffusionPipeline

    pipeline = get_registry().build("model", {"name": "embedded"})
    assert isinstance(pipeline, StableDiffusionPipeline)
    assert type(pipeline.scheduler).__name__ == "PNDMScheduler"
    assert all(p.dtype == torch.float32 for p in pipeline.unet.parameters())  # stored fp16, loaded fp32
    config = pipeline.unet.config
    assert sum(t.startswith("CrossAttn") for t in config.down_block_types) >= 2
    assert config.sample_size * 2 == 32 and config.cross_attention_dim == pipeline.text_encoder.config.hidden_size
    assert all(len(pipeline.tokenizer.tokenize(w)) == 1 for w in ("triangle", "purple", "below", "number"))
    out = pipeline(["a red circle", "the number 42 in red"], num_inference_steps=3, guidance_scale=7.5,
                   output_type="np", generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (2, 32, 32, 3)
    assert 0.0 <= out.images.min() and out.images.max() <= 1.0 and out.images.std() > 0.01


def test_registering_the_domain_imports_no_torch():
    code = ("import sys; import prunekit_plugins.domain as d; d.attributes_for_prompt('a red circle');"
            "print('HEAVY', [m for m in ('torch', 'numpy', 'diffusers') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert "HEAVY []" in result.stdout, result.stdout + result.stderr


@pytest.mark.slow
def test_teacher_samples_align_far_above_chance(classifier):
    from prunekit_plugins.domain.evaluate import alignment_scores
    from prunekit_plugins.domain.measure import generate

    pipeline = get_registry().build("model", {"name": "embedded"})
    data = domain(48, seed=2024)
    samples = generate(pipeline, data.prompts, steps=25, guidance=7.5, seed=0)
    own = alignment_scores(classifier, samples, prompts=data.prompts)["alignment"]
    shifted = alignment_scores(classifier, samples, prompts=data.prompts[1:] + data.prompts[:1])["alignment"]
    assert own > 0.05 and own > 4 * shifted, (own, shifted)  # docs/domain.md: 15% on 160 prompts, chance 0.3%


def test_train_and_heldout_splits_share_no_prompt_whatever_the_seeds():
    from prunekit_plugins.domain.dataset import is_heldout

    train = EmbeddedDomain(EmbeddedDomainConfig(size=1024, seed=3, split="train"))
    heldout = EmbeddedDomain(EmbeddedDomainConfig(size=256, seed=3, split="heldout"))
    assert not set(train.prompts) & set(heldout.prompts)
    assert all(is_heldout(p) for p in heldout.prompts) and not any(is_heldout(p) for p in train.prompts)
    assert {"object", "pair", "digit", "number"} <= set(heldout.categories)
    everything = EmbeddedDomain(EmbeddedDomainConfig(size=1024, seed=3))
    assert set(everything.prompts) & set(heldout.prompts)  # the unsplit domain does hold them
    # split "all" draws exactly what the domain drew before splits existed
    assert everything.prompts[:5] == EmbeddedDomain(EmbeddedDomainConfig(size=5, seed=3)).prompts


# The teachers' own training data and the classifier's are the domain itself (as the shipped U-Net teacher was trained).
_UNSPLIT = {"tiny/pretrain.yaml", "tiny/pretrain_dit.yaml", "tiny/domain_classifier.yaml"}


def test_every_embedded_recipe_evaluates_on_prompts_it_never_trains_on():
    from prunekit.eval_config import eval_dataset_section
    from prunekit.recipe import load_recipe

    checked = 0
    for path in sorted((REPO / "recipes").rglob("*.yaml")):
        rel = path.relative_to(REPO / "recipes").as_posix()
        if rel in _UNSPLIT or rel.startswith("sweeps/") or "/sweeps/" in rel:
            continue
        data = load_recipe(path).data
        train = data.get("dataset") or {}
        if train.get("name") != "embedded_domain":
            continue
        evaluation = eval_dataset_section(data) or {}
        assert train.get("split") == "train", rel
        assert evaluation.get("name") == "embedded_domain" and evaluation.get("split") == "heldout", rel
        assert evaluation.get("seed") != train.get("seed"), rel
        fields = ("size", "seed", "split", "holdout")
        seen = EmbeddedDomain(EmbeddedDomainConfig(**{k: train[k] for k in fields if k in train}))
        held = EmbeddedDomain(EmbeddedDomainConfig(**{k: evaluation[k] for k in fields if k in evaluation}))
        assert not set(seen.prompts) & set(held.prompts), rel
        checked += 1
    assert checked >= 8
