"""``train_domain_classifier``: train the domain classifier on freshly drawn domain images.

Stages: ``train`` (through prunekit's engine; images drawn once, augmented per step so the judge
tolerates the blur, noise and colour drift of generated images) → ``evaluate`` (alignment of real
images of a different seed with their own prompts, per category, and field accuracies).
The classifier lands in ``artifacts/classifier/``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar

from prunekit.config import option


@dataclass
class TrainClassifierConfig:
    requires: ClassVar[tuple[str, ...]] = ("dataset",)

    steps: int = option(2000, ge=1, help="optimizer steps")
    lr: float = option(2e-3, gt=0)
    warmup_steps: int = option(100, ge=0)
    widths: list[int] = option([16, 32, 64], help="conv widths, one stage (two convs + pool) each")
    feature_dim: int = option(64, ge=8, help="width of the feature layer (the FID features)")
    noise_std: float = option(0.08, ge=0, help="largest std of the Gaussian noise added per image ([-1, 1] scale)")
    blur_prob: float = option(0.3, ge=0, le=1, help="share of images blurred with a 3x3 kernel")
    jitter: float = option(0.08, ge=0, le=0.5, help="brightness/contrast jitter (relative)")
    eval_size: int = option(2000, ge=1, help="fresh real images the final classifier is scored on")
    eval_seed: int = option(1_000_003, ge=0, help="seed of the evaluation images (differs from the dataset's)")

    def check(self) -> list[str]:
        if not self.widths or any(w <= 0 or w % 8 for w in self.widths):
            return ["widths: need positive multiples of 8 (GroupNorm with 8 groups)"]
        return []


def augment(images: Any, cfg: TrainClassifierConfig) -> Any:
    """uint8 (N, 3, H, W) -> float in about [-1, 1], jittered, sometimes blurred, noised (torch RNG)."""
    import torch
    from torch.nn import functional as F

    x = images.float() / 127.5 - 1.0
    n = len(x)
    scale = 1 + (torch.rand(n, 1, 1, 1) * 2 - 1) * cfg.jitter
    shift = (torch.rand(n, 1, 1, 1) * 2 - 1) * cfg.jitter / 2
    x = x * scale + shift
    if cfg.blur_prob > 0:
        k = torch.tensor([1.0, 2.0, 1.0])
        kernel = (k[:, None] * k[None, :] / 16).expand(3, 1, 3, 3)
        blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
        pick = (torch.rand(n) < cfg.blur_prob)[:, None, None, None]
        x = torch.where(pick, blurred, x)
    return x + torch.randn_like(x) * torch.rand(n, 1, 1, 1) * cfg.noise_std


def scene_targets(dataset: Any) -> Any:
    """LongTensor (N, fields) of every sample's drawn scene (realised sizes included)."""
    import torch

    from prunekit_plugins.domain.slots import target_row

    rows = []
    for i in range(len(dataset)):
        scene = dataset.scene(i)
        rows.append(target_row(scene.spec, [p.obj for p in scene.placed]))
    return torch.tensor(rows, dtype=torch.long)


class TrainDomainClassifier:
    """Train the slot classifier of the embedded domain (alignment judge and FID feature extractor)."""

    def __init__(self, config: TrainClassifierConfig) -> None:
        self.config = config

    def run(self, run: Any) -> dict[str, Any]:
        train = run.stage("train", lambda: self._train(run))
        evaluation = run.stage("evaluate", lambda: self._evaluate(run))
        return {"train": train, "evaluate": evaluation}

    def _train(self, run: Any) -> dict[str, Any]:
        import json

        import torch
        from torch.nn import functional as F

        from prunekit.engine import micro_batch_indices, train
        from prunekit.engine_config import EngineConfig
        from prunekit_plugins.domain.classifier import DomainClassifier, save_classifier

        cfg = self.config
        engine_cfg = EngineConfig(**run.recipe.data["engine"])
        seed = int(run.recipe.data.get("seed", 0))
        dataset = run.build("dataset")
        if not hasattr(dataset, "scene"):
            raise ValueError("train_domain_classifier needs dataset: {name: embedded_domain}")
        start = time.perf_counter()
        images, targets = dataset.uint8_images(), scene_targets(dataset)
        run.log.info("drew %d domain images in %.1f s", len(images), time.perf_counter() - start)
        torch.manual_seed(seed)
        model = DomainClassifier({"widths": list(cfg.widths), "feature_dim": cfg.feature_dim,
                                  "resolution": dataset.resolution})

        def batch_fn(index: int) -> list[int]:
            return micro_batch_indices(len(images), engine_cfg.micro_batch, index, seed)

        def loss_fn(net: Any, idx: list[int], step: int):
            logits = net(augment(images[idx], cfg))
            target = targets[idx]
            parts = [F.cross_entropy(lg, target[:, k], ignore_index=-1) for k, lg in enumerate(logits)
                     if bool((target[:, k] >= 0).any())]
            loss = torch.stack(parts).sum()
            with torch.no_grad():
                hits = torch.stack([(lg.argmax(1) == target[:, k]) | (target[:, k] < 0) for k, lg in enumerate(logits)], 1)
            return loss, {"row_accuracy": float(hits.all(1).float().mean())}

        begin = time.perf_counter()
        with run.progress("train classifier", cfg.steps) as advance:
            result = train(model, loss_fn, batch_fn, cfg=engine_cfg, lr=cfg.lr, steps=cfg.steps,
                           warmup_steps=cfg.warmup_steps, ckpt_dir=run.checkpoint_dir("train"), seed=seed,
                           name="train_classifier",
                           on_step=lambda s, rec: advance(1, loss=rec["loss"], acc=rec["row_accuracy"]))
        seconds = time.perf_counter() - begin
        model.load_state_dict(result.state_dict)
        folder = save_classifier(model.eval(), run.artifact("classifier"),
                                 metadata={"recipe": run.recipe.name, "steps": cfg.steps, "train_samples": len(images)})
        run.artifact("train_history.json").write_text(json.dumps(result.history))
        tail = result.history[-max(1, len(result.history) // 10):]
        return {"steps": cfg.steps, "seconds": round(seconds, 1), "samples": len(images),
                "final_loss": sum(h["loss"] for h in tail) / len(tail),
                "final_row_accuracy": sum(h["row_accuracy"] for h in tail) / len(tail), "path": str(folder)}

    def _evaluate(self, run: Any) -> dict[str, Any]:
        import dataclasses

        import torch

        from prunekit_plugins.domain.classifier import load_classifier, predict_rows
        from prunekit_plugins.domain.dataset import EmbeddedDomain
        from prunekit_plugins.domain.evaluate import alignment_scores
        from prunekit_plugins.domain.slots import TARGET_FIELDS

        train_set = run.build("dataset")
        fresh = EmbeddedDomain(dataclasses.replace(train_set.config, size=self.config.eval_size,
                                                   seed=self.config.eval_seed))
        model = load_classifier(run.artifact("classifier"))
        images = fresh.uint8_images()
        scores = alignment_scores(model, images, attributes=fresh.attributes)
        predicted, truth = predict_rows(model, images), scene_targets(fresh)
        fields = {}
        for k, name in enumerate(TARGET_FIELDS):
            known = truth[:, k] >= 0
            fields[name] = float((predicted[known, k] == truth[known, k]).float().mean())
        # Shuffled prompts: the same images judged against other images' prompts (should fail).
        g = torch.Generator().manual_seed(0)
        perm = torch.randperm(len(images), generator=g)
        wrong = alignment_scores(model, images, attributes=[fresh.attributes[int(i)] for i in perm])
        run.log.info("classifier on %d fresh real images: alignment %.4f, shuffled prompts %.4f",
                     len(images), scores["alignment"], wrong["alignment"])
        return {"eval_seed": self.config.eval_seed, "images": len(images), **scores,
                "shuffled_alignment": wrong["alignment"], "field_accuracy": fields}
