"""Loss plugins shared by the training methods (denoising, distillation, router and budget terms).

Each builds ``loss(inputs: prunekit.losses.LossInputs) -> Tensor``, already multiplied by its
configured ``weight``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

from prunekit.config import option
from prunekit.hookspecs import hookimpl

if TYPE_CHECKING:
    import torch

    from prunekit.losses import LossInputs
    from prunekit.model_objective import ModelObjective


@dataclass
class DDPMLossConfig:
    weight: float = option(1.0, ge=0)
    prediction_type: Literal["auto", "epsilon", "v_prediction", "sample", "flow_matching"] = option(
        "auto", help="auto = the scheduler's prediction_type (flow_matching for SD3 / Flux); another value must "
                     "be the model's own"
    )
    snr_gamma: float | None = option(None, gt=0, help="Min-SNR-gamma weighting (Hang et al. 2023; DDPM-family "
                                                      "models only); null = off")

    def check_objective(self, model: ModelObjective, where: str) -> list[str]:
        """The options against the model's prediction type (:mod:`prunekit.model_objective`)."""
        problems = []
        if self.prediction_type not in ("auto", model.prediction):
            problems.append(f"{where}.prediction_type: {self.prediction_type!r} does not match model {model.model}, "
                            f"which {model.trained_by()}: set {where}.prediction_type=auto "
                            f"(or {model.prediction})")
        if self.snr_gamma is not None and model.flow:
            problems.append(f"{where}.snr_gamma: Min-SNR weighting is defined for DDPM-family models; model "
                            f"{model.model} {model.trained_by()}: set {where}.snr_gamma=null")
        return problems


class DDPMLoss:
    """Denoising loss: MSE between the denoiser output and its target (epsilon, v or, for flow-matching
    schedulers, the velocity noise - x0), optionally Min-SNR weighted."""

    needs: ClassVar[frozenset[str]] = frozenset({"pred", "noise", "latents", "timesteps", "scheduler"})

    def __init__(self, config: DDPMLossConfig) -> None:
        self.config = config
        self.weight = config.weight

    def __call__(self, inputs: LossInputs) -> torch.Tensor:
        import torch

        from prunekit.losses import per_sample_mse, prediction_target, snr
        from prunekit.objectives import prediction_type

        inputs.need("pred", "noise", "latents", "timesteps", "scheduler", loss="ddpm")
        pred, noise, latents, timesteps = inputs.pred, inputs.noise, inputs.latents, inputs.timesteps
        assert pred is not None and noise is not None and latents is not None and timesteps is not None  # need() checked them
        kind: str = self.config.prediction_type
        if kind == "auto":  # flow-matching schedulers (SD3, Flux) answer "flow_matching"
            kind = prediction_type(inputs.scheduler)
        target = prediction_target(inputs.scheduler, latents, noise, timesteps, kind)
        per_sample = per_sample_mse(pred, target)
        if self.config.snr_gamma is not None:
            s = snr(inputs.scheduler, timesteps)
            clipped = torch.clamp(s, max=self.config.snr_gamma)
            # Min-SNR: weight min(SNR, γ)/SNR for ε-prediction, min(SNR, γ)/(SNR+1) for v-prediction.
            per_sample = per_sample * (clipped / (s + 1) if kind == "v_prediction" else clipped / s)
        return self.weight * inputs.reduce(per_sample)


@dataclass
class WeightConfig:
    weight: float = option(1.0, ge=0)


class DistillOutputLoss:
    """Output-level distillation (APTP eq. 27): MSE between the pruned and the teacher U-Net outputs."""

    needs: ClassVar[frozenset[str]] = frozenset({"pred", "teacher_pred"})

    def __init__(self, config: WeightConfig) -> None:
        self.weight = config.weight

    def __call__(self, inputs: LossInputs) -> torch.Tensor:
        from prunekit.losses import per_sample_mse

        inputs.need("pred", "teacher_pred", loss="distill_output")
        pred, teacher_pred = inputs.pred, inputs.teacher_pred
        assert pred is not None and teacher_pred is not None  # need() checked them
        return self.weight * inputs.reduce(per_sample_mse(pred, teacher_pred))


class DistillBlockLoss:
    """Block-level distillation (APTP eq. 28): sum over down/mid/up blocks of the output MSE."""

    needs: ClassVar[frozenset[str]] = frozenset({"block_outputs", "teacher_block_outputs"})

    def __init__(self, config: WeightConfig) -> None:
        self.weight = config.weight

    def __call__(self, inputs: LossInputs) -> torch.Tensor:
        from prunekit.losses import per_sample_mse

        student, teacher = inputs.block_outputs, inputs.teacher_block_outputs
        if not student or not teacher or len(student) != len(teacher):
            raise ValueError("loss 'distill_block' needs matching student and teacher block outputs")
        terms = [per_sample_mse(s, t) for s, t in zip(student, teacher)]
        per_sample = sum(terms[1:], terms[0])
        return self.weight * inputs.reduce(per_sample)


@dataclass
class ContrastiveLossConfig:
    weight: float = option(100.0, ge=0)
    tau: float = option(0.03, gt=0, help="temperature of both similarity softmaxes")


class ContrastiveLoss:
    """APTP eq. 13–14: the architecture vectors' similarity distribution (s) should match the
    prompts' (r). Written as a binary cross-entropy (the paper's sum with a minus sign, so that
    minimising it pulls s towards r)."""

    needs: ClassVar[frozenset[str]] = frozenset({"prompt_embeddings", "arch_vectors"})

    def __init__(self, config: ContrastiveLossConfig) -> None:
        self.weight = config.weight
        self.tau = config.tau

    def __call__(self, inputs: LossInputs) -> torch.Tensor:
        import torch
        import torch.nn.functional as F

        z = inputs.get("prompt_embeddings", "contrastive").float()
        v = inputs.get("arch_vectors", "contrastive").float()
        zn, vn = F.normalize(z, dim=1), F.normalize(v, dim=1)
        r = torch.softmax(zn @ zn.T / self.tau, dim=1)
        s = torch.softmax(vn @ vn.T / self.tau, dim=1).clamp(1e-7, 1 - 1e-7)
        # binary_cross_entropy raises on NaN input; let NaN through as a value for the engine's guard.
        finite = torch.isfinite(s)
        bce = F.binary_cross_entropy(torch.where(finite, s, 0.5), torch.where(finite, r, 0.5).detach())
        return self.weight * (bce + 0.0 * s.sum())


@dataclass
class RoutingLossConfig:
    weight: float = option(1.0, ge=0)
    tau: float = option(0.1, gt=0, help="temperature of the softmax over cosine similarities to the codes")


class RoutingLoss:
    """Router consistency (prunekit's addition; SwAV's swapped prediction): the predictor should put
    each prompt nearest the code optimal transport assigned it, because inference routes by nearest
    code (eq. 22). Without it, codes that OT keeps busy in training can be nobody's nearest code.
    Codes are not moved by this term; it is zero where no assignment exists (APTP's warm-up)."""

    needs: ClassVar[frozenset[str]] = frozenset({"code_similarity", "code_assignment"})

    def __init__(self, config: RoutingLossConfig) -> None:
        self.weight = config.weight
        self.tau = config.tau

    def __call__(self, inputs: LossInputs) -> torch.Tensor:
        import torch
        import torch.nn.functional as F

        if inputs.code_similarity is None:  # APTP's warm-up: no codes yet
            return torch.zeros(())
        sim = inputs.get("code_similarity", "routing")
        assigned = inputs.get("code_assignment", "routing")
        return self.weight * F.cross_entropy(sim.float() / self.tau, assigned)


class ResourceLoss:
    """APTP eq. 26: R(x, y) = log(max(x, y) / min(x, y)) between the batch's mean MACs ratio and the target."""

    needs: ClassVar[frozenset[str]] = frozenset({"cost_ratio", "cost_target"})

    def __init__(self, config: WeightConfig) -> None:
        self.weight = config.weight

    def __call__(self, inputs: LossInputs) -> torch.Tensor:
        import torch

        x = inputs.get("cost_ratio", "resource")
        y = torch.as_tensor(inputs.get("cost_target", "resource"), dtype=x.dtype, device=x.device)
        return self.weight * torch.abs(torch.log(x) - torch.log(y))


@hookimpl
def prunekit_register_components(register) -> None:
    register("loss", "ddpm", DDPMLoss, schema=DDPMLossConfig,
             doc="Denoising (DDPM) loss, epsilon / v-prediction, optional Min-SNR-gamma weighting")
    register("loss", "distill_output", DistillOutputLoss, schema=WeightConfig,
             doc="Output distillation from the unpruned teacher U-Net (MSE)")
    register("loss", "distill_block", DistillBlockLoss, schema=WeightConfig,
             doc="Block distillation: down/mid/up block outputs vs the unpruned teacher (MSE)")
    register("loss", "contrastive", ContrastiveLoss, schema=ContrastiveLossConfig,
             doc="APTP contrastive router loss: architecture similarity follows prompt similarity")
    register("loss", "routing", RoutingLoss, schema=RoutingLossConfig,
             doc="Router consistency: nearest code = the code optimal transport assigned (prunekit addition)")
    register("loss", "resource", ResourceLoss, schema=WeightConfig,
             doc="Resource loss log(max(x,y)/min(x,y)) between mean MACs ratio and the budget")
