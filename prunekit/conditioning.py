"""How each text-to-image family conditions its denoiser, for training on encoded data.

A :class:`Conditioning` answers two questions for one pipeline family:

- what the ``encode`` stage stores per sample besides the latents: always ``text`` (the denoiser's
  ``encoder_hidden_states``, exactly as the pipeline computes them), plus ``pooled`` (SDXL's
  ``text_embeds``, SD3 / Flux ``pooled_projections``), ``time_ids`` (SDXL's size / crop ids) or
  ``text_mask`` (PixArt's T5 attention mask);
- how a batch of those columns becomes the keyword arguments of the denoiser call, for a stock or
  pruned model (:meth:`Conditioning.call`) and for a gated ``PrunableUNet`` / ``PrunableTransformer``
  (:meth:`Conditioning.gated`).

Prompts are encoded with the pipeline's own ``encode_prompt`` (SDXL, SD3, PixArt, Flux), so training
sees what generation feeds the denoiser. SD 1.x / 2.x keep their single ``text`` column, computed as
before, so their encoded folders are unchanged.

A transformer may record in its config the ``max_sequence_length`` its pipeline is called with
(:data:`SEQUENCE_LENGTH_KEY`; the embedded DiT teacher, an SD3 pipeline without T5 trained on its CLIP
tokens alone: 0 zero tokens in T5's place instead of diffusers' default 256). :func:`call_kwargs` gives
it to every prunekit call of such a pipeline: encoding, generation, latency, the mixture's experts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

Family = Literal["sd", "sdxl", "sd3", "pixart", "flux"]
# The transformer sample sizes PixArt's pipelines have aspect-ratio bins for (256, 512, 1024, 2048 px).
PIXART_BINNED_SAMPLE_SIZES = (32, 64, 128, 256)

#: A transformer config key (diffusers keeps ``_``-prefixed keys through save / load and ``from_config``,
#: so pruned experts inherit it) naming the ``max_sequence_length`` its pipeline must be called with.
SEQUENCE_LENGTH_KEY = "_max_sequence_length"


def denoiser_of(pipeline: Any) -> Any:
    """The pipeline's denoiser: ``unet`` for U-Net pipelines, ``transformer`` otherwise."""
    model = getattr(pipeline, "unet", None)
    if model is None:
        model = getattr(pipeline, "transformer", None)
    if model is None:
        raise ValueError(f"{type(pipeline).__name__} has neither a `unet` nor a `transformer`")
    return model


def call_kwargs(pipeline: Any) -> dict[str, Any]:
    """Keyword arguments every call of ``pipeline`` (a diffusers text-to-image pipeline, or one of its
    ``encode_prompt``) needs besides the prompts and the sampler settings: ``max_sequence_length`` when
    its transformer records one (:data:`SEQUENCE_LENGTH_KEY`), else none (diffusers' defaults)."""
    config = getattr(getattr(pipeline, "transformer", None), "config", None)
    length = config.get(SEQUENCE_LENGTH_KEY) if config is not None else None
    if length is None:
        return {}
    import inspect

    if "max_sequence_length" not in inspect.signature(type(pipeline).__call__).parameters:
        return {}
    return {"max_sequence_length": int(length)}


def family_of_pipeline(pipeline: Any) -> Family:
    """The conditioning family of a diffusers text-to-image pipeline (by its denoiser)."""
    return family_of_denoiser(denoiser_of(pipeline))


def family_of_denoiser(model: Any) -> Family:
    """The conditioning family of a stock, gated or pruned denoiser (a mixture's expert included)."""
    from prunekit.denoisers import denoiser_kind

    if denoiser_kind(model) == "unet":
        # SDXL's U-Net adds pooled text and size ids to its time embedding; SD 1.x / 2.x do not.
        return "sdxl" if model.config.get("addition_embed_type") == "text_time" else "sd"
    from prunekit.transformer.inventory import family_of

    return family_of(getattr(model, "model", model))


@dataclass(frozen=True)
class Conditioning:
    """The conditioning of one family; see the module docstring."""

    family: Family

    @property
    def columns(self) -> tuple[str, ...]:
        """The encoded columns the denoiser call reads, ``text`` first."""
        return {"sd": ("text",), "sdxl": ("text", "pooled", "time_ids"), "sd3": ("text", "pooled"),
                "pixart": ("text", "text_mask"), "flux": ("text", "pooled")}[self.family]

    @property
    def unet_naming(self) -> bool:
        return self.family in ("sd", "sdxl")

    # -- generation -------------------------------------------------------------------------------
    def call_defaults(self, denoiser: Any) -> dict[str, Any]:
        """Pipeline-call keywords that generation sets unless the caller does, so that a pipeline
        samples as it was trained. PixArt: captions as encoded (its ``__call__`` cleans them by default,
        ``encode_prompt`` does not), and no resolution binning for a native size without aspect-ratio
        bins (the pipeline refuses to bin those)."""
        if self.family != "pixart":
            return {}
        defaults: dict[str, Any] = {"clean_caption": False}
        if int(denoiser.config.sample_size) not in PIXART_BINNED_SAMPLE_SIZES:
            defaults["use_resolution_binning"] = False
        return defaults

    def initial_noise(self, denoiser: Any, batch: int, height: int, width: int, vae_scale_factor: int, *,
                      generator: Any, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The initial noise of ``batch`` images of ``height`` x ``width`` pixels drawn from one
        ``generator``, as the family's pipeline draws it, in the layout its ``latents=`` takes. Flux
        draws a quarter of its ``in_channels`` on an even latent grid and packs 2x2 patches into tokens
        (``FluxPipeline.prepare_latents``)."""
        from diffusers.utils.torch_utils import randn_tensor

        channels = int(denoiser.config.in_channels)
        h, w = int(height) // vae_scale_factor, int(width) // vae_scale_factor
        if self.family != "flux":
            return randn_tensor((batch, channels, h, w), generator=generator, device=device, dtype=dtype)
        from diffusers import FluxPipeline

        h, w = 2 * (h // 2), 2 * (w // 2)
        noise = randn_tensor((batch, channels // 4, h, w), generator=generator, device=device, dtype=dtype)
        return FluxPipeline._pack_latents(noise, batch, channels // 4, h, w)

    # -- encoding ---------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, pipeline: Any, prompts: list[str], sizes: Sequence[tuple[int, int]]) -> dict[str, torch.Tensor]:
        """The columns of ``prompts`` (float32, on the CPU); ``sizes`` are the (height, width) in pixels
        of each sample's image (SDXL's time ids)."""
        if self.family == "sd":
            from prunekit.data import encode_prompts

            return {"text": encode_prompts(pipeline, prompts)}
        out = self.encode_text(pipeline, prompts)
        if self.family == "sdxl":
            # SDXL's micro-conditioning: original size, crop top-left, target size. The dataset's
            # images are resized without cropping, so the original is the target, as generation assumes.
            out["time_ids"] = torch.tensor([[h, w, 0, 0, h, w] for h, w in sizes], dtype=torch.float32)
        return {k: v.float().cpu() if v.is_floating_point() else v.cpu() for k, v in out.items()}

    def encode_text(self, pipeline: Any, prompts: list[str]) -> dict[str, torch.Tensor]:
        """The text columns of ``prompts`` as the pipeline's ``encode_prompt`` gives them (its device and
        dtype), differentiable in the text encoders: what :meth:`encode` caches, and what training the
        text encoders recomputes each step. SD 1.x / 2.x: ``text`` from the one CLIP's last hidden state."""
        if self.family == "sd":
            tok = pipeline.tokenizer
            ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                      return_tensors="pt").input_ids.to(pipeline.text_encoder.device)
            return {"text": pipeline.text_encoder(ids)[0]}
        device = pipeline.text_encoder.device if pipeline.text_encoder is not None else pipeline._execution_device
        out: dict[str, torch.Tensor]
        if self.family == "sdxl":
            text, _, pooled, _ = pipeline.encode_prompt(prompts, device=device, do_classifier_free_guidance=False)
            out = {"text": text, "pooled": pooled}
        elif self.family == "sd3":
            text, _, pooled, _ = pipeline.encode_prompt(prompts, None, None, device=device,
                                                        do_classifier_free_guidance=False, **call_kwargs(pipeline))
            out = {"text": text, "pooled": pooled}
        elif self.family == "pixart":
            text, mask, _, _ = pipeline.encode_prompt(prompts, do_classifier_free_guidance=False, device=device,
                                                      **call_kwargs(pipeline))
            out = {"text": text, "text_mask": mask}
        else:  # flux
            text, pooled, _ = pipeline.encode_prompt(prompts, None, device=device, **call_kwargs(pipeline))
            out = {"text": text, "pooled": pooled}
        return out

    # -- the denoiser call ------------------------------------------------------------------------
    def extra_kwargs(self, cond: Mapping[str, torch.Tensor], *, dtype: torch.dtype | None = None) -> dict[str, Any]:
        """Keyword arguments beyond ``encoder_hidden_states`` (on the text column's device)."""
        def cast(t: torch.Tensor) -> torch.Tensor:
            return t.to(dtype) if dtype is not None and t.is_floating_point() else t

        if self.family == "sdxl":
            return {"added_cond_kwargs": {"text_embeds": cast(cond["pooled"]), "time_ids": cast(cond["time_ids"])}}
        if self.family in ("sd3", "flux"):
            return {"pooled_projections": cast(cond["pooled"])}
        if self.family == "pixart":
            # PixArt-Sigma has no size conditioning (use_additional_conditions is off): None as its pipeline passes.
            return {"encoder_attention_mask": cond["text_mask"],
                    "added_cond_kwargs": {"resolution": None, "aspect_ratio": None}}
        return {}

    def call(self, model: Any, sample: torch.Tensor, timesteps: torch.Tensor,
             cond: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The prediction of a stock or pruned denoiser (or an engine wrapping one) on encoded ``cond``."""
        if self.family == "flux":
            return self._flux(model, sample, timesteps, cond, None)
        # Inputs as they come (fp32), as SD runs always called their U-Nets: the engine's autocast
        # decides the compute dtype of a trained model.
        kwargs = self.extra_kwargs(cond)
        text = cond["text"]
        if self.unet_naming:
            return model(sample, timesteps, encoder_hidden_states=text, **kwargs).sample
        out = model(hidden_states=sample, timestep=timesteps, encoder_hidden_states=text, **kwargs).sample
        return self._denoised(out, sample)

    def gated(self, prunable: Any, sample: torch.Tensor, timesteps: torch.Tensor,
              cond: Mapping[str, torch.Tensor], gates: torch.Tensor | None = None) -> torch.Tensor:
        """The prediction of a ``PrunableUNet`` / ``PrunableTransformer`` under ``gates`` (None: dense)."""
        if self.family == "flux":
            return self._flux(prunable, sample, timesteps, cond, gates)
        kwargs = self.extra_kwargs(cond, dtype=prunable.dtype)
        return self._denoised(prunable(sample, timesteps, cond["text"], gates=gates, **kwargs).sample, sample)

    def _denoised(self, out: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """The prediction the sampler uses. PixArt learns the variance too (``out_channels`` twice the
        latent channels): its pipeline samples with the first half, so training reads that half."""
        if self.family == "pixart" and out.shape[1] == 2 * sample.shape[1]:
            return out[:, : sample.shape[1]]
        return out

    def _flux(self, model: Any, sample: torch.Tensor, timesteps: torch.Tensor, cond: Mapping[str, torch.Tensor],
              gates: torch.Tensor | None) -> torch.Tensor:
        """Flux takes 2x2-packed latent tokens, position ids, timesteps in [0, 1] and (dev) a guidance
        scale; the prediction is unpacked back to the latent layout the losses compare."""
        from diffusers import FluxPipeline

        b, c, h, w = sample.shape
        inner = getattr(model, "model", model)
        dtype = _dtype_of(model) or sample.dtype
        packed = FluxPipeline._pack_latents(sample, b, c, h, w).to(dtype)
        image_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, sample.device, dtype)
        text = cond["text"].to(dtype)
        text_ids = torch.zeros(text.shape[1], 3, device=sample.device, dtype=dtype)
        kwargs: dict[str, Any] = {"pooled_projections": cond["pooled"].to(dtype), "img_ids": image_ids,
                                  "txt_ids": text_ids}
        config = getattr(inner, "config", None)
        if config is not None and config.get("guidance_embeds"):
            # Flux-dev distils classifier-free guidance into an embedding; 3.5 is its pipeline default.
            kwargs["guidance"] = torch.full((b,), 3.5, device=sample.device, dtype=torch.float32)
        t = timesteps.to(dtype) / 1000
        if gates is not None or hasattr(model, "inventory"):
            out = model(packed, t, text, gates=gates, **kwargs).sample
        else:
            out = model(hidden_states=packed, timestep=t, encoder_hidden_states=text, **kwargs).sample
        # (b, h*w/4, c*4) back to (b, c, h, w): FluxPipeline._unpack_latents works in pixels.
        return FluxPipeline._unpack_latents(out, h * 8, w * 8, 8)


def _dtype_of(model: Any) -> torch.dtype | None:
    dtype = getattr(model, "dtype", None)
    if isinstance(dtype, torch.dtype):
        return dtype
    param = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    return None if param is None else param.dtype


def conditioning_for(pipeline: Any) -> Conditioning:
    """The :class:`Conditioning` of a diffusers text-to-image pipeline."""
    return Conditioning(family_of_pipeline(pipeline))


def text_length(pipeline: Any) -> int:
    """The number of text tokens ``pipeline`` feeds its denoiser (the ``text`` column's length): the
    tokenizer's maximum for SD 1.x / 2.x and SDXL, CLIP + T5 tokens for SD3 (zeros in T5's place
    without it), T5 tokens for PixArt and Flux, as the pipeline is called (:func:`call_kwargs`)."""
    conditioning = conditioning_for(pipeline)
    if conditioning.family in ("sd", "sdxl"):
        return int(pipeline.tokenizer.model_max_length)
    return int(conditioning.encode(pipeline, [""], [(64, 64)])["text"].shape[1])
