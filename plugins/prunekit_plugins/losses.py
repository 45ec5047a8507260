"""Loss plugins shared by every training method."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from prunekit.config import option
from prunekit.hookspecs import hookimpl


@dataclass
class DDPMLossConfig:
    weight: float = option(1.0, ge=0)
    prediction_type: Literal["auto", "epsilon", "v_prediction", "sample"] = option(
        "auto", help="auto = the scheduler's prediction_type"
    )
    snr_gamma: float | None = option(None, gt=0, help="Min-SNR-gamma weighting (Hang et al. 2023); null = off")


class DDPMLoss:
    """Denoising loss: MSE between the U-Net output and its target, optionally Min-SNR weighted."""

    def __init__(self, config: DDPMLossConfig) -> None:
        self.config = config
        self.weight = config.weight

    def __call__(self, inputs):  # noqa: ANN001, ANN204 - LossInputs -> Tensor
        import torch

        from prunekit.losses import prediction_target, snr

        inputs.need("pred", "noise", "latents", "timesteps", "scheduler", loss="ddpm")
        target = prediction_target(
            inputs.scheduler, inputs.latents, inputs.noise, inputs.timesteps, self.config.prediction_type
        )
        per_sample = ((inputs.pred.float() - target.float()) ** 2).flatten(1).mean(1)
        if self.config.snr_gamma is not None:
            s = snr(inputs.scheduler, inputs.timesteps)
            w = torch.clamp(s, max=self.config.snr_gamma) / s
            kind = inputs.scheduler.config.prediction_type if self.config.prediction_type == "auto" else self.config.prediction_type
            if kind == "v_prediction":
                w = torch.clamp(s, max=self.config.snr_gamma) / (s + 1)
            per_sample = per_sample * w
        return self.weight * per_sample.mean()


@hookimpl
def prunekit_register_components(register) -> None:
    register("loss", "ddpm", DDPMLoss, schema=DDPMLossConfig,
             doc="Denoising (DDPM) loss, epsilon / v-prediction, optional Min-SNR-gamma weighting")
