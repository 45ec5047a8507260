"""``dense_finetune``: fine-tune the unpruned denoiser (U-Net or transformer) with the recipe's losses
(the reference row of every comparison, and the smallest complete training run).

The same method pre-trains a model from scratch (``recipes/tiny/pretrain.yaml``): ``vae_steps``
first trains the autoencoder on the dataset's images, and ``train_text_encoder`` trains the text
encoders jointly with the denoiser (all of a pipeline's: SD's CLIP, SDXL's two, SD3's CLIP-L, CLIP-G
and T5, PixArt's T5, Flux's CLIP and T5). With ``vae_steps: 0`` (the default) the model's own
autoencoder is used as it is, frozen: ``recipes/tiny/pretrain_dit.yaml`` trains the DiT teacher's
transformer alone on the U-Net teacher's trained autoencoder and text encoder. Noise, timesteps and
targets follow the scheduler's family (:mod:`prunekit.objectives`: DDPM or flow matching) and the
denoiser is called as its family conditions it (:mod:`prunekit.conditioning`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from prunekit.config import option
from prunekit.encode_config import EncodeConfig
from prunekit.hookspecs import hookimpl
from prunekit.losses import DENOISING


@dataclass
class DenseFinetuneConfig:
    requires: ClassVar[tuple[str, ...]] = ("model", "dataset", "losses")
    loss_inputs: ClassVar[dict[str, frozenset[str]]] = {"losses": DENOISING}

    steps: int = option(1000, ge=1, help="optimizer steps")
    lr: float = option(1e-5, gt=0)
    warmup_steps: int = option(0, ge=0)
    cond_dropout: float = option(0.0, ge=0, le=1, help="share of samples trained with the empty prompt (for CFG)")
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    train_text_encoder: bool = option(False, help="also train the text encoders (every one the pipeline has; same LR), "
                                                    "e.g. from scratch")
    vae_steps: int = option(0, ge=0, help="first train the autoencoder on the dataset images for this many steps")
    vae_lr: float = option(1e-3, gt=0)
    vae_kl_weight: float = option(1e-6, ge=0, help="KL weight against the per-pixel reconstruction loss")
    save_dtype: Literal["float32", "float16", "bfloat16"] = option(
        "float32", help="dtype of the saved pipeline weights (load them back with torch_dtype)"
    )
    max_shard_size: str | None = option(None, help="split saved weight files above this size, e.g. '7MB'")


class DenseFinetune:
    """Fine-tune the dense U-Net on the dataset (latents and text embeddings cached once)."""

    def __init__(self, config: DenseFinetuneConfig) -> None:
        self.config = config

    def run(self, run: Any) -> dict[str, Any]:
        from prunekit.deployable import Deployable
        from prunekit.placement import place_frozen

        precision = run.recipe.data["engine"]["precision"]
        pipeline = place_frozen(run.build("model"), precision)
        results: dict[str, Any] = {}
        if self.config.vae_steps > 0:
            results["vae"] = run.stage("train_vae", lambda: self._train_vae(run, pipeline))
            self._load_vae(run, pipeline, results["vae"])

        from prunekit.data import encode_stage

        run.stage("encode", lambda: encode_stage(run, pipeline, self.config.encode))
        results["finetune"] = run.stage("finetune", lambda: self._finetune(run, pipeline))
        # The saved folder (artifacts/pipeline), not the in-memory model, is what the runner evaluates:
        # what a user loads.
        results["deployable"] = Deployable("pipeline", entry={"path": results["finetune"]["pipeline"], "macs_ratio": 1.0})
        return results

    # -- autoencoder ------------------------------------------------------------------------------

    def _train_vae(self, run: Any, pipeline: Any) -> dict[str, Any]:
        import torch
        from safetensors.torch import save_file

        from prunekit.engine import micro_batch_indices, train
        from prunekit.engine_config import EngineConfig

        cfg = self.config
        engine_cfg = EngineConfig(**run.recipe.data["engine"])
        seed = int(run.recipe.data.get("seed", 0))
        dataset = run.build("dataset")
        # uint8 keeps a large image set small in memory; 8-bit is what the images were anyway.
        # Unreadable images are skipped and counted (the stage record's "data"), as the encode stage does.
        from prunekit.data import check_skipped, usable_rows

        loaded: list[torch.Tensor] = []
        _, data = usable_rows(dataset, range(len(dataset)), on_item=lambda row, item: loaded.append(
            ((item["image"].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)))
        check_skipped("train_vae", rows=data["rows"], usable=data["samples"], counts=data["skipped"],
                      examples=data["skipped_examples"], log=run.log, fraction=cfg.encode.max_skipped_fraction,
                      option="method.encode.max_skipped_fraction")
        images = torch.stack(loaded)
        held_out = images[-min(len(images) // 10, 512):] if len(images) >= 20 else images
        vae = pipeline.vae
        vae.requires_grad_(True)
        vae.train()

        def batch_fn(index: int) -> torch.Tensor:
            return images[micro_batch_indices(len(images), engine_cfg.micro_batch, index, seed)]

        def loss_fn(model: Any, batch: torch.Tensor, step: int):
            x = batch.to(model.dtype) / 127.5 - 1
            posterior = model.encode(x).latent_dist
            recon = model.decode(posterior.sample()).sample
            l1 = (recon - x).abs().mean()
            kl = posterior.kl().mean() / x[0].numel()
            return l1 + cfg.vae_kl_weight * kl, {"l1": float(l1.detach()), "kl": float(kl.detach())}

        start = time.perf_counter()
        with run.progress("train autoencoder", cfg.vae_steps) as advance:
            result = train(vae, loss_fn, batch_fn, cfg=engine_cfg, lr=cfg.vae_lr, steps=cfg.vae_steps,
                           warmup_steps=min(cfg.warmup_steps, cfg.vae_steps), ckpt_dir=run.checkpoint_dir("train_vae"),
                           seed=seed, name="train_vae", on_step=lambda s, rec: advance(1, l1=rec["l1"]))
        seconds = time.perf_counter() - start
        vae.requires_grad_(False)
        vae.eval()
        from prunekit.placement import move

        with torch.no_grad():
            x = move(held_out, vae.device).to(vae.dtype) / 127.5 - 1
            mean = torch.cat([vae.encode(x[i : i + 64]).latent_dist.mean for i in range(0, len(x), 64)])
            recon = torch.cat([vae.decode(mean[i : i + 64]).sample for i in range(0, len(mean), 64)]).clamp(-1, 1)
        # SD's convention: latents are scaled to unit variance before diffusion.
        recon, x = recon.float(), x.float()
        scaling = float(1.0 / mean.float().std())
        mse = float(((recon - x) ** 2).mean() / 4)  # on the [0, 1] scale

        def write() -> None:
            save_file({k: v.detach().contiguous().cpu() for k, v in result.state_dict.items()},
                      str(run.artifact("vae.safetensors")))
            run.artifact("train_vae_history.json").write_text(json.dumps(result.history))

        run.on_main(write)
        return {"steps": cfg.vae_steps, "seconds": round(seconds, 2), "scaling_factor": scaling, "data": data,
                "held_out_images": len(held_out), "held_out_psnr": round(-10 * torch.log10(torch.tensor(mse)).item(), 3),
                "held_out_l1": float((recon - x).abs().mean() / 2)}

    def _load_vae(self, run: Any, pipeline: Any, result: dict[str, Any]) -> None:
        """The trained autoencoder, also when ``--resume`` skipped its stage."""
        from safetensors.torch import load_file

        vae = pipeline.vae
        state = load_file(str(run.artifact("vae.safetensors")))
        vae.load_state_dict(state)  # copied onto the VAE's device and dtype
        vae.register_to_config(scaling_factor=result["scaling_factor"])
        vae.requires_grad_(False)
        vae.eval()

    # -- denoiser (and text encoder) -------------------------------------------------------------

    def _finetune(self, run: Any, pipeline: Any) -> dict[str, Any]:
        import torch

        from prunekit import objectives
        from prunekit.conditioning import conditioning_for, denoiser_of
        from prunekit.data import open_encoded
        from prunekit.engine import micro_batch_indices, train
        from prunekit.engine_config import EngineConfig
        from prunekit.losses import LossInputs
        from prunekit.shards import RowPrefetcher

        cfg = self.config
        engine_cfg = EngineConfig(**run.recipe.data["engine"])
        data = open_encoded(run)
        conditioning = conditioning_for(pipeline)  # SD's U-Net, SDXL, SD3 / PixArt / Flux transformers
        losses = run.build_all("losses")
        denoiser, scheduler = denoiser_of(pipeline), pipeline.scheduler
        encoders = {name: module for name in ("text_encoder", "text_encoder_2", "text_encoder_3")
                    if (module := getattr(pipeline, name, None)) is not None}
        pipeline.vae.requires_grad_(False)
        denoiser.requires_grad_(True)
        n = len(data.prompts)
        seed = int(run.recipe.data.get("seed", 0))
        trained: Any = denoiser
        for module in encoders.values():
            module.requires_grad_(cfg.train_text_encoder)
        if cfg.train_text_encoder:
            # Every text encoder the pipeline conditions with trains jointly with the denoiser; their
            # columns are recomputed from each micro-batch's prompts (nothing cached is read for them).
            for module in encoders.values():
                module.train()
            key = "transformer" if getattr(pipeline, "transformer", None) is not None else "unet"
            trained = torch.nn.ModuleDict({key: denoiser, **encoders})
        columns = list(conditioning.columns)
        # The empty prompt's columns, encoded as the dataset was (classifier-free guidance's unconditional
        # input); size ids stay each sample's own.
        empty = {} if cfg.train_text_encoder else {
            k: v[0] for k, v in conditioning.encode(pipeline, [""], [(0, 0)]).items() if k != "time_ids"}
        cached = [k for k in columns if k == "time_ids"] if cfg.train_text_encoder else columns

        reader = RowPrefetcher(data, ["latents", *cached],
                               lambda index: micro_batch_indices(n, engine_cfg.micro_batch, index, seed))

        def batch_fn(index: int) -> dict[str, torch.Tensor]:
            idx = micro_batch_indices(n, engine_cfg.micro_batch, index, seed)
            rows = reader.rows(index)
            cond: dict[str, torch.Tensor] = {k: rows[k] for k in cached}
            drop = torch.zeros(len(idx), dtype=torch.bool)
            if cfg.cond_dropout > 0:  # drawn here, on the CPU, with the micro-batch's RNG state
                drop = torch.rand(len(rows["latents"])) < cfg.cond_dropout
            if cfg.train_text_encoder:  # the prompts, by index; a dropped one becomes the empty prompt
                cond["prompt_index"] = torch.tensor(idx, dtype=torch.long)
                cond["prompt_dropped"] = drop
            elif cfg.cond_dropout > 0:
                for k, value in empty.items():
                    mask = drop.reshape(-1, *([1] * (cond[k].dim() - 1)))
                    cond[k] = torch.where(mask, value.expand_as(cond[k]), cond[k])
            latents = rows["latents"]
            return {"latents": latents, **{f"cond_{k}": v for k, v in cond.items()}, "noise": torch.randn_like(latents),
                    "timesteps": objectives.draw_timesteps(scheduler, len(latents))}

        def loss_fn(model: Any, batch: dict[str, torch.Tensor], step: int):
            latents, noise, t = batch["latents"], batch["noise"], batch["timesteps"]
            cond = {k[len("cond_"):]: v for k, v in batch.items() if k.startswith("cond_")}
            denoiser = model
            if cfg.train_text_encoder:
                index, dropped = cond.pop("prompt_index").tolist(), cond.pop("prompt_dropped").tolist()
                prompts = ["" if d else data.prompts[i] for i, d in zip(index, dropped)]
                # The pipeline's encode_prompt calls the encoders held in `model` (the same modules).
                cond.update({k: v.to(latents.device) for k, v in conditioning.encode_text(pipeline, prompts).items()})
                denoiser = model["transformer" if "transformer" in model else "unet"]
            noisy = objectives.add_noise(scheduler, latents, noise, t)
            pred = conditioning.call(denoiser, noisy, t, cond)
            inputs = LossInputs(pred=pred, noise=noise, latents=latents, timesteps=t, scheduler=scheduler)
            parts = {name: loss(inputs) for name, loss in losses.items()}
            return sum(parts.values()), {f"loss_{k}": float(v.detach()) for k, v in parts.items()}

        start = time.perf_counter()
        with run.progress("dense fine-tune", cfg.steps) as advance:
            result = train(
                trained, loss_fn, batch_fn, cfg=engine_cfg, lr=cfg.lr, steps=cfg.steps,
                warmup_steps=cfg.warmup_steps, ckpt_dir=run.checkpoint_dir("finetune"), seed=seed,
                name="finetune", on_step=lambda step, rec: advance(1, loss=rec["loss"]), prefetch=reader.prefetch,
            )
            reader.close()
            advance(result.resumed_from)
        seconds = time.perf_counter() - start
        trained.requires_grad_(False)
        trained.eval()
        out = run.artifact("pipeline")

        def write() -> None:
            self._save(pipeline, out)
            run.artifact("finetune_history.json").write_text(json.dumps(result.history))

        run.on_main(write)
        tail = max(1, len(result.history) // 10)
        return {
            "steps": cfg.steps,
            "loss_first": sum(h["loss"] for h in result.history[:tail]) / tail,
            "loss_last": sum(h["loss"] for h in result.history[-tail:]) / tail,
            "seconds": round(seconds, 2),
            **result.timing(),
            "pipeline": str(out),
        }

    def _save(self, pipeline: Any, out: Any) -> None:
        import torch

        kwargs: dict[str, Any] = {"safe_serialization": True}
        if self.config.max_shard_size:
            kwargs["max_shard_size"] = self.config.max_shard_size
        # The last use of the in-memory pipeline (evaluation loads the saved folder): cast in place,
        # also from bf16/fp16 training up to a float32 save.
        pipeline.to(getattr(torch, self.config.save_dtype))
        pipeline.save_pretrained(out, **kwargs)


@hookimpl
def prunekit_register_components(register) -> None:
    register("method", "dense_finetune", DenseFinetune, schema=DenseFinetuneConfig,
             doc="Fine-tune the unpruned U-Net (reference row; same iteration budget as the pruned runs)")
