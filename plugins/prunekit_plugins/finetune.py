"""``dense_finetune``: fine-tune the unpruned U-Net with the recipe's losses (the reference row
of every comparison, and the smallest complete training run)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from prunekit.config import option
from prunekit.hookspecs import hookimpl


@dataclass
class DenseFinetuneConfig:
    requires: ClassVar[tuple[str, ...]] = ("model", "dataset", "losses")

    steps: int = option(1000, ge=1, help="optimizer steps")
    lr: float = option(1e-5, gt=0)
    warmup_steps: int = option(0, ge=0)
    cond_dropout: float = option(0.0, ge=0, le=1, help="share of samples trained with the empty prompt (for CFG)")
    encode_batch: int = option(32, ge=1)


class DenseFinetune:
    """Fine-tune the dense U-Net on the dataset (latents and text embeddings cached once)."""

    def __init__(self, config: DenseFinetuneConfig) -> None:
        self.config = config

    def run(self, run: Any) -> dict[str, Any]:
        pipeline = run.build("model")
        encoded_path = run.artifact("encoded.safetensors")

        def encode() -> dict[str, Any]:
            from prunekit.data import encode_dataset

            dataset = run.build("dataset")
            with run.progress("encode dataset", len(dataset)) as advance:
                encoded = encode_dataset(pipeline, dataset, batch_size=self.config.encode_batch, progress=advance)
            encoded.save(encoded_path)
            return {"samples": len(encoded.prompts), "latent_shape": list(encoded.latents.shape[1:])}

        run.stage("encode", encode)
        result = run.stage("finetune", lambda: self._finetune(run, pipeline, encoded_path))
        return {"finetune": result}

    def _finetune(self, run: Any, pipeline: Any, encoded_path: Any) -> dict[str, Any]:
        import torch

        from prunekit.data import EncodedDataset, encode_prompts
        from prunekit.engine import micro_batch_indices, train
        from prunekit.engine_config import EngineConfig
        from prunekit.losses import LossInputs

        cfg = self.config
        engine_cfg = EngineConfig(**run.recipe.data["engine"])
        data = EncodedDataset.load(encoded_path)
        empty = encode_prompts(pipeline, [""])[0]
        losses = run.build_all("losses")
        unet, scheduler = pipeline.unet, pipeline.scheduler
        for module in (pipeline.vae, pipeline.text_encoder):
            module.requires_grad_(False)
        unet.requires_grad_(True)
        n = len(data.prompts)
        seed = int(run.recipe.data.get("seed", 0))

        def batch_fn(index: int) -> tuple[torch.Tensor, torch.Tensor]:
            idx = micro_batch_indices(n, engine_cfg.micro_batch, index, seed)
            return data.latents[idx], data.text_embeddings[idx]

        def loss_fn(model: Any, batch: tuple[torch.Tensor, torch.Tensor], step: int):
            latents, cond = batch
            if cfg.cond_dropout > 0:
                drop = torch.rand(len(cond)) < cfg.cond_dropout
                cond = torch.where(drop[:, None, None], empty.expand_as(cond), cond)
            noise = torch.randn_like(latents)
            t = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),))
            noisy = scheduler.add_noise(latents, noise, t)
            pred = model(noisy, t, encoder_hidden_states=cond).sample
            inputs = LossInputs(pred=pred, noise=noise, latents=latents, timesteps=t, scheduler=scheduler)
            parts = {name: loss(inputs) for name, loss in losses.items()}
            return sum(parts.values()), {f"loss_{k}": float(v.detach()) for k, v in parts.items()}

        start = time.perf_counter()
        with run.progress("dense fine-tune", cfg.steps) as advance:
            result = train(
                unet, loss_fn, batch_fn, cfg=engine_cfg, lr=cfg.lr, steps=cfg.steps,
                warmup_steps=cfg.warmup_steps, ckpt_dir=run.checkpoint_dir("finetune"), seed=seed,
                name="finetune", on_step=lambda step, rec: advance(1, loss=rec["loss"]),
            )
            advance(result.resumed_from)
        seconds = time.perf_counter() - start
        unet.load_state_dict(result.state_dict)
        out = run.artifact("pipeline")
        pipeline.save_pretrained(out, safe_serialization=True)
        run.artifact("finetune_history.json").write_text(json.dumps(result.history))
        tail = max(1, len(result.history) // 10)
        return {
            "steps": cfg.steps,
            "loss_first": sum(h["loss"] for h in result.history[:tail]) / tail,
            "loss_last": sum(h["loss"] for h in result.history[-tail:]) / tail,
            "seconds": round(seconds, 2),
            "pipeline": str(out),
        }


@hookimpl
def prunekit_register_components(register) -> None:
    register("method", "dense_finetune", DenseFinetune, schema=DenseFinetuneConfig,
             doc="Fine-tune the unpruned U-Net (reference row; same iteration budget as the pruned runs)")
