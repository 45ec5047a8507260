"""``aptp``: Adaptive Prompt-Tailored Pruning (Ganjdanesh et al.), assembled from registered parts.

Stages: encode (latents, text and prompt embeddings, once) → prune_warmup (the predictor gates the
U-Net directly) → prune (predictor + codes, routed by optimal transport) → route (every training
prompt to its nearest code; per-expert masks and MACs) → finetune_expert_i (physically pruned from
the pretrained weights, fine-tuned on its prompts with DDPM + distillation) → export (mixture/).
Which losses, gates, router and budget are used is entirely the recipe's choice.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal

from prunekit.config import option
from prunekit.encode_config import EncodeConfig
from prunekit.evaluation import EvalConfig
from prunekit.losses import DENOISING, DISTILLATION

# What the pruning stages and the expert fine-tuning can hand their losses.
PRUNE_INPUTS = DENOISING | DISTILLATION | {"prompt_embeddings", "arch_vectors", "code_similarity",
                                           "code_assignment", "cost_ratio", "cost_target"}
FINETUNE_INPUTS = DENOISING | DISTILLATION


def diffusion_batch(latents: Any, cond: Any, scheduler: Any) -> dict[str, Any]:
    """One micro-batch of denoising training, drawn on the CPU from the engine's per-micro-batch RNG
    state (so it is the same on any device): clean latents, text states, noise and timesteps."""
    import torch

    return {"latents": latents, "cond": cond, "noise": torch.randn_like(latents),
            "timesteps": torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),))}


@dataclass
class PruneStageConfig:
    warmup_iters: int = option(500, ge=0, help="predictor-only iterations (its output gates the U-Net)")
    iters: int = option(2500, ge=1, help="joint predictor + codes iterations")
    lr: float = option(2e-4, gt=0)
    lr_warmup: int = option(100, ge=0, help="linear LR warm-up iterations")
    lr_cooldown: int = option(0, ge=0, help="linear LR decay to zero over the last joint iterations")
    budget_on: Literal["deployed", "sampled"] = option(
        "deployed",
        help="what the resource loss charges: deployed = the hard architectures the prompts are routed "
             "to at inference (straight-through); sampled = the noisy training gates (the paper's eq. 15)")
    micro_batch: int | None = option(None, ge=1, help="overrides engine.micro_batch for this stage")
    grad_accum: int | None = option(None, ge=1, help="overrides engine.grad_accum for this stage")


PAPER_FINETUNE_LOSSES: dict[str, Any] = {
    "ddpm": {"weight": 1e-4}, "distill_output": {"weight": 1.0}, "distill_block": {"weight": 1.0}}


@dataclass
class FinetuneStageConfig:
    iters: int = option(30000, ge=0, help="iterations per expert (0 = export the pruned experts as they are)")
    lr: float = option(1e-5, gt=0)
    lr_warmup: int = option(0, ge=0)
    lr_cooldown: int = option(0, ge=0, help="linear LR decay to zero over the last iterations")
    losses: dict[str, Any] = option(
        dict(PAPER_FINETUNE_LOSSES),
        help="fine-tuning losses {name: options}, like the top-level losses section (default: the paper's, "
             "DDPM 1e-4 + output and block distillation 1.0; name: null drops one)")
    micro_batch: int | None = option(None, ge=1, help="overrides engine.micro_batch for this stage")
    grad_accum: int | None = option(None, ge=1, help="overrides engine.grad_accum for this stage")


@dataclass
class APTPConfig:
    requires: ClassVar[tuple[str, ...]] = ("model", "dataset", "prompt_encoder", "router", "gate", "budget", "losses")
    capabilities: ClassVar[dict[str, str]] = {"router": "trainable"}
    loss_inputs: ClassVar[dict[str, frozenset[str]]] = {"losses": PRUNE_INPUTS, "method.finetune.losses": FINETUNE_INPUTS}

    prune: PruneStageConfig = field(default_factory=PruneStageConfig)
    finetune: FinetuneStageConfig = field(default_factory=FinetuneStageConfig)
    depth: str = option("aptp", help="depth-gate layout: aptp (the paper's 14 on SD 2.1), all or none")
    round_to: int | None = option(None, ge=1, help="round pruned channel counts up to a multiple")
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def check(self) -> list[str]:
        return [] if self.depth in ("aptp", "all", "none") else [f"depth: {self.depth!r} is not one of aptp, all, none"]


class APTP:
    """Prune a U-Net into prompt-routed experts, fine-tune each on its prompts, export a mixture."""

    def __init__(self, config: APTPConfig) -> None:
        self.config = config

    # -- setup ------------------------------------------------------------------------------------

    def run(self, run: Any) -> dict[str, Any]:
        import torch

        self._check_metric_paths(run)
        self._prepare(run)
        self.gate = run.build("gate", groups=self.prunable.groups)
        self.router = self._new_router()
        self.losses = run.build_all("losses")

        warm = run.stage("prune_warmup", lambda: self._prune("warmup"))
        joint = run.stage("prune", lambda: self._prune("joint"))
        routing = run.stage("route", self._route)
        experts = []
        for i in range(self.router.num_codes):
            experts.append(run.stage(f"finetune_expert_{i}", lambda i=i: self._finetune_expert(i, routing)))
        export = run.stage("export", lambda: self._export(routing, experts))
        torch.set_grad_enabled(True)
        return self._finish(run, {
            "prune": {"warmup": warm, "joint": joint},
            "routing": {k: routing[k] for k in ("counts", "macs_ratio", "mean_macs_ratio", "target")},
            "experts": [{**e, "share": c / max(1, sum(routing["counts"]))}
                        for e, c in zip(experts, routing["counts"])],
            "mixture": export,
        })

    def _check_metric_paths(self, run: Any) -> None:
        """Missing metric weights stop the run now, not after hours of training."""
        from prunekit.errors import MissingPathError
        from prunekit.evaluation import preflight_metrics

        problems = preflight_metrics(run.recipe.data, run.registry)
        if problems:
            raise MissingPathError("\n".join(problems))

    def _finish(self, run: Any, result: dict[str, Any]) -> dict[str, Any]:
        """After export: the ``evaluate`` stage when the recipe has ``metrics:``, then report.html."""
        from prunekit.evaluation import evaluate_run_stage, merge_evaluation
        from prunekit.report import write_run_report

        if run.recipe.data.get("metrics"):
            evaluation = run.stage("evaluate", lambda: evaluate_run_stage(run, base=self.pipeline))
            merge_evaluation(result, evaluation)
        run.save_metrics(**result)  # the report reads metrics.json
        write_run_report(run, base=self.pipeline)
        return result

    def _prepare(self, run: Any) -> None:
        """Shared by every method built on these stages (see ``prunekit_plugins.baselines``): the
        frozen pipeline, the ``encode`` stage and its cached data, the prunable U-Net and the budget."""
        from prunekit.data import open_encoded
        from prunekit.placement import place_frozen
        from prunekit.unet import make_prunable

        self.run_ = run
        self.seed = int(run.recipe.data.get("seed", 0))
        # Frozen parts (teacher U-Net, VAE, text encoder) compute on this rank's device in the
        # engine's precision; what is trained is copied from them and handed to the engine.
        self.pipeline = place_frozen(run.build("model"), run.recipe.data["engine"]["precision"])
        self.unet = self.pipeline.unet
        self.encoder = self._build_prompt_encoder(run)
        run.stage("encode", self._encode)
        self.encoded = open_encoded(run)
        self.latent_hw = tuple(self.encoded.shapes["latents"][-2:])
        self.text_len = int(self.encoded.shapes["text"][0])
        self.prunable = make_prunable(self.unet, depth=None if self.config.depth == "none" else self.config.depth)
        latent_h, latent_w = self.latent_hw
        self.budget = run.build("budget", prunable=self.prunable, height=latent_h, width=latent_w, text_len=self.text_len)
        run.log.info("prunable U-Net: %d units (%d depth); latent %dx%d, text length %d; dense %.4g %s",
                     self.prunable.num_units, len(self.prunable.depth_indices), latent_h, latent_w,
                     self.text_len, self.budget.dense, self.budget.unit)

    def _build_prompt_encoder(self, run: Any) -> Any:
        return run.build("prompt_encoder")

    def _deployed_sections(self) -> dict[str, Any]:
        """The recipe sections the mixture manifest records to rebuild the prompt encoder and router."""
        data = self.run_.recipe.data
        return {"prompt_encoder": data["prompt_encoder"], "router": data["router"]}

    # -- encode -----------------------------------------------------------------------------------

    def _encode(self) -> dict[str, Any]:
        from prunekit.data import encode_stage

        return encode_stage(self.run_, self.pipeline, self.config.encode, prompt_encoder=self.encoder)

    @property
    def embed_dim(self) -> int:
        return int(self.encoded.shapes["z"][0]) if "z" in self.encoded.shapes else 1

    # -- pruning ----------------------------------------------------------------------------------

    def _engine_config(self, stage: Any) -> Any:
        from prunekit.engine_config import EngineConfig

        cfg = EngineConfig(**self.run_.recipe.data["engine"])
        if stage.micro_batch is not None:
            cfg.micro_batch = stage.micro_batch
        if stage.grad_accum is not None:
            cfg.grad_accum = stage.grad_accum
        return cfg

    def _new_router(self) -> Any:
        return self.run_.build("router", embed_dim=self.embed_dim, num_units=self.prunable.num_units)

    def _load_router(self, stage: str, router: Any = None) -> None:
        from safetensors.torch import load_file

        path = self.run_.artifact(f"router_{stage}.safetensors")
        (router or self.router).load_state_dict(load_file(str(path)))

    def _prune(self, phase: str) -> dict[str, Any]:
        import torch
        import torch.nn.functional as F
        from safetensors.torch import save_file

        from prunekit.capture import capture_block_outputs
        from prunekit.engine import micro_batch_indices, train
        from prunekit.losses import TEACHER, LossInputs, losses_need
        from prunekit.shards import RowPrefetcher

        run, cfg = self.run_, self.config.prune
        steps = cfg.warmup_iters if phase == "warmup" else cfg.iters
        # A fresh module per phase: DeepSpeed leaves hooks on the parameters of a module it wrapped.
        router = self._new_router()
        if phase == "joint":
            if cfg.warmup_iters > 0:
                self._load_router("warmup", router)
            with torch.no_grad():
                g = torch.Generator().manual_seed(self.seed)
                sample = torch.randperm(len(self.encoded), generator=g)[:4096].tolist()
                router.init_codes(router.embed(self.encoded.rows(sample, ["z"])["z"]), generator=g)
        router.codes.requires_grad_(phase == "joint")
        self.router = router
        if steps == 0:
            run.on_main(lambda: save_file({k: v.detach().contiguous() for k, v in router.state_dict().items()},
                                          str(run.artifact(f"router_{phase}.safetensors"))))
            return {"steps": 0}

        # The router is tiny: it trains in fp32 whatever the precision, so its gate logits, the MAC
        # model and the resource loss stay fp32; the frozen U-Net it gates runs in the engine's dtype.
        engine_cfg = replace(self._engine_config(cfg), precision="fp32")
        encoded = self.encoded
        scheduler = self.pipeline.scheduler
        n = len(encoded)
        needs = losses_need(self.losses)
        want_teacher = bool(needs & TEACHER)
        want_blocks = bool(needs & {"block_outputs", "teacher_block_outputs"})
        target = self.budget.target

        reader = RowPrefetcher(encoded, ["z", "latents", "text"],
                               lambda index: micro_batch_indices(n, engine_cfg.micro_batch, index, self.seed))

        def batch_fn(index: int) -> dict[str, Any]:
            rows = reader.rows(index)
            return {"z": rows["z"], **diffusion_batch(rows["latents"], rows["text"], scheduler)}

        def loss_fn(router: Any, batch: dict[str, Any], step: int):
            x0, cond, noise, t = batch["latents"], batch["cond"], batch["noise"], batch["timesteps"]
            e, codes = router(batch["z"])  # the one read of the router's parameters (ZeRO-3)
            weights, code_similarity, assigned = None, None, None
            if phase == "warmup":
                logits = e
                deployed_ratio = self.budget.ratio(self.gate.deployed(e)).mean()  # each prompt's own architecture
            else:
                assigned = router.assign(e, codes)
                logits = codes[assigned]
                counts = torch.bincount(assigned, minlength=router.num_codes).float()
                weights = 1.0 / (counts[assigned] * (counts > 0).sum())
                # Charged at the codes prompts are routed to at inference, which OT's equipartition
                # does not give: the exported mixture's mean MACs is what the budget is about.
                nearest = router.nearest(e.detach(), codes.detach())
                deployed_ratio = self.budget.ratio(self.gate.deployed(codes))[nearest].mean()
                code_similarity = F.normalize(e, dim=-1) @ F.normalize(codes.detach(), dim=-1).T
            gates = self.gate(logits, training=True)
            noisy = scheduler.add_noise(x0, noise, t)
            teacher_pred, teacher_blocks = None, []
            if want_teacher:
                with torch.no_grad(), capture_block_outputs(self.unet, want_blocks) as teacher_blocks:
                    teacher_pred = self.prunable(noisy, t, cond).sample
            with capture_block_outputs(self.unet, want_blocks) as blocks:
                pred = self.prunable(noisy, t, cond, gates=gates).sample
            ratio = deployed_ratio if cfg.budget_on == "deployed" else self.budget.ratio(gates).mean()
            inputs = LossInputs(
                pred=pred, noise=noise, latents=x0, timesteps=t, scheduler=scheduler,
                teacher_pred=teacher_pred, block_outputs=blocks, teacher_block_outputs=teacher_blocks,
                sample_weights=weights, prompt_embeddings=batch["z"], arch_vectors=self.gate(e, training=True),
                cost_ratio=ratio, cost_target=target, code_similarity=code_similarity,
                code_assignment=assigned,
            )
            parts = {name: loss(inputs) for name, loss in self.losses.items()}
            logs = {f"loss_{k}": float(v.detach()) for k, v in parts.items()}
            logs["macs_ratio"] = float(ratio.detach())
            logs["macs_deployed"] = float(deployed_ratio.detach())
            if phase == "joint":
                logs["codes_used"] = float((counts > 0).sum())
                logs["codes_nearest"] = float(torch.unique(nearest).numel())
            return sum(parts.values()), logs

        start = time.perf_counter()
        with run.progress(f"prune ({phase})", steps) as advance:
            result = train(
                router, loss_fn, batch_fn, cfg=engine_cfg, lr=cfg.lr, steps=steps,
                warmup_steps=cfg.lr_warmup, cooldown_steps=cfg.lr_cooldown if phase == "joint" else 0,
                ckpt_dir=run.checkpoint_dir(f"prune_{phase}"), seed=self.seed,
                name=f"prune_{phase}",
                on_step=lambda s, rec: advance(1, loss=rec["loss"], macs=rec["macs_ratio"]),
                prefetch=reader.prefetch,
            )
        reader.close()
        router = self._new_router()
        router.load_state_dict(result.state_dict)
        self.router = router

        def write() -> None:
            save_file({k: v.contiguous().cpu() for k, v in result.state_dict.items()},
                      str(run.artifact(f"router_{phase}.safetensors")))
            run.artifact(f"prune_{phase}_history.json").write_text(json.dumps(result.history))

        run.on_main(write)
        tail = result.history[-max(1, len(result.history) // 10):]
        return {
            "steps": steps,
            "seconds": round(time.perf_counter() - start, 2),
            "final_loss": sum(h["loss"] for h in tail) / len(tail),
            "final_macs_ratio": sum(h["macs_ratio"] for h in tail) / len(tail),
            **result.timing(),
        }

    # -- routing ----------------------------------------------------------------------------------

    def _route(self) -> dict[str, Any]:
        import torch

        self._load_router("joint")
        experts = torch.cat([self.router.route(chunk) for chunk in self.encoded.column_chunks("z")])
        counts = torch.bincount(experts, minlength=self.router.num_codes).tolist()
        masks = self.gate.hard(self.router.codes.detach())
        dense = self.budget.dense
        macs = [self.budget.cost_of(m) for m in masks]
        ratios = [m / dense for m in macs]
        total = max(1, sum(counts))
        mean_ratio = sum(r * c for r, c in zip(ratios, counts)) / total
        self.run_.on_main(lambda: self.run_.artifact("routing.json").write_text(json.dumps({
            "expert_of_sample": experts.tolist(),
            "masks": masks.to(torch.int8).tolist(),
        })))
        self.run_.log.info("routing: counts %s, MACs ratios %s, mean %.4f (target %.2f)",
                           counts, [round(r, 3) for r in ratios], mean_ratio, self.budget.target)
        return {"counts": counts, "macs": macs, "macs_ratio": ratios, "mean_macs_ratio": mean_ratio,
                "dense_macs": dense, "target": self.budget.target}

    # -- fine-tuning ------------------------------------------------------------------------------

    def _finetune_expert(self, i: int, routing: dict[str, Any]) -> dict[str, Any]:
        import torch

        from prunekit.capture import capture_block_outputs
        from prunekit.engine import micro_batch_indices, train
        from prunekit.losses import TEACHER, LossInputs, losses_need
        from prunekit.mixture import expert_dir
        from prunekit.shards import RowPrefetcher
        from prunekit.unet import physically_prune, round_mask, save_expert

        run, cfg = self.run_, self.config.finetune
        table = json.loads(run.artifact("routing.json").read_text())
        mask = torch.tensor(table["masks"][i], dtype=torch.bool)
        if self.config.round_to:
            mask = round_mask(self.prunable, mask, self.config.round_to)
        expert = physically_prune(self.prunable, mask)
        members = [k for k, e in enumerate(table["expert_of_sample"]) if e == i]
        result_info: dict[str, Any] = {"expert": i, "samples": len(members),
                                       "macs_ratio": routing["macs_ratio"][i], "finetune_steps": 0}
        if members and cfg.iters > 0:
            registry = run.registry
            losses = {k: registry.build("loss", {"name": k, **v}) for k, v in cfg.losses.items() if v is not None}
            needs = losses_need(losses)
            want_teacher = bool(needs & TEACHER)
            want_blocks = bool(needs & {"block_outputs", "teacher_block_outputs"})
            engine_cfg = self._engine_config(cfg)
            encoded = self.encoded
            scheduler = self.pipeline.scheduler
            expert.requires_grad_(True)
            expert.train()

            reader = RowPrefetcher(encoded, ["latents", "text"], lambda index: [
                members[k] for k in micro_batch_indices(len(members), engine_cfg.micro_batch, index, self.seed + i)])

            def batch_fn(index: int) -> dict[str, Any]:
                rows = reader.rows(index)
                return diffusion_batch(rows["latents"], rows["text"], scheduler)

            def loss_fn(model: Any, batch: dict[str, Any], step: int):
                x0, cond, noise, t = batch["latents"], batch["cond"], batch["noise"], batch["timesteps"]
                noisy = scheduler.add_noise(x0, noise, t)
                teacher, teacher_blocks = None, []
                if want_teacher:
                    with torch.no_grad(), capture_block_outputs(self.unet, want_blocks) as teacher_blocks:
                        teacher = self.unet(noisy, t, cond).sample
                with capture_block_outputs(model, want_blocks) as blocks:
                    pred = model(noisy, t, cond).sample
                inputs = LossInputs(pred=pred, noise=noise, latents=x0, timesteps=t, scheduler=scheduler,
                                    teacher_pred=teacher, block_outputs=blocks, teacher_block_outputs=teacher_blocks)
                parts = {k: loss(inputs) for k, loss in losses.items()}
                return sum(parts.values()), {f"loss_{k}": float(v.detach()) for k, v in parts.items()}

            with run.progress(f"fine-tune expert {i}", cfg.iters) as advance:
                result = train(expert, loss_fn, batch_fn, cfg=engine_cfg, lr=cfg.lr, steps=cfg.iters,
                               warmup_steps=cfg.lr_warmup, cooldown_steps=cfg.lr_cooldown,
                               ckpt_dir=run.checkpoint_dir(f"finetune_expert_{i}"),
                               seed=self.seed + 7919 * (i + 1), name=f"finetune_expert_{i}",
                               on_step=lambda s, rec: advance(1, loss=rec["loss"]), prefetch=reader.prefetch)
            reader.close()
            expert.load_state_dict(result.state_dict)
            run.on_main(lambda: run.artifact(f"finetune_expert_{i}_history.json").write_text(json.dumps(result.history)))
            tail = result.history[-max(1, len(result.history) // 10):]
            result_info.update(finetune_steps=cfg.iters, final_loss=sum(h["loss"] for h in tail) / len(tail),
                               **result.timing())
        folder = expert_dir(run.artifact("mixture"), i)
        run.on_main(lambda: save_expert(expert.eval(), mask, folder, base_config=self.unet.config,
                                        depth=self.prunable.inventory.depth, round_to=self.config.round_to,
                                        metadata={"expert": i, "samples": len(members)}, overwrite=True))
        result_info["path"] = str(folder.relative_to(run.artifact("mixture")))
        return result_info

    # -- export -----------------------------------------------------------------------------------

    def _export(self, routing: dict[str, Any], experts: list[dict[str, Any]]) -> dict[str, Any]:
        from prunekit.mixture import save_router, write_manifest

        run = self.run_
        folder = run.artifact("mixture")
        self._load_router("joint")
        data = run.recipe.data
        total = max(1, sum(routing["counts"]))
        if not run.is_main:
            return {"path": str(folder), "mean_macs_ratio": routing["mean_macs_ratio"]}
        save_router(folder, self.router)
        write_manifest(
            folder,
            model=data["model"],
            **self._deployed_sections(),
            router_dims={"embed_dim": self.embed_dim, "num_units": self.prunable.num_units},
            experts=[{"id": e["expert"], "path": e["path"], "macs": routing["macs"][e["expert"]],
                      "macs_ratio": e["macs_ratio"], "share": routing["counts"][e["expert"]] / total}
                     for e in experts],
            extra={"dense_macs": routing["dense_macs"], "mean_macs_ratio": routing["mean_macs_ratio"],
                   "budget": routing["target"], "text_len": self.text_len,
                   "latent_size": list(self.latent_hw)},
        )
        return {"path": str(folder), "mean_macs_ratio": routing["mean_macs_ratio"]}
