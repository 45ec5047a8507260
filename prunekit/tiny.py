"""Tiny Stable-Diffusion-shaped components built in code (no download), for smoke runs and tests.

They have SD's structure — a cross-attention ``UNet2DConditionModel``, an ``AutoencoderKL``, a
CLIP text encoder with a real (character-level) CLIP BPE tokenizer and a DDPM-family scheduler —
so every code path that loads SD 2.1 through ``from_pretrained`` is exercised on them. The other
families (:func:`save_tiny_family`: SDXL, SD3, PixArt-Sigma, Flux) are built the same way; T5 text
encoders get a character-level T5 tokenizer built in code (:func:`build_tiny_t5_tokenizer`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")


def _byte_alphabet() -> list[str]:
    # GPT-2 / CLIP byte-to-unicode table: every byte maps to a printable character.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def build_tiny_tokenizer(max_length: int = 32) -> Any:
    """A character-level ``CLIPTokenizer`` (byte alphabet, no merges); saves and reloads like CLIP's."""
    from transformers import CLIPTokenizer

    alphabet = _byte_alphabet()
    vocab: dict[str, int] = {}
    for token in [*alphabet, *(c + "</w>" for c in alphabet), *SPECIAL_TOKENS]:
        vocab.setdefault(token, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def tiny_unet_config(
    block_out_channels: tuple[int, ...] = (32, 64),
    cross_attention_dim: int = 32,
    attention_head_dim: int | tuple[int, ...] = 2,
    sample_size: int = 8,
    in_channels: int = 4,
    layers_per_block: int = 2,
) -> dict[str, Any]:
    n = len(block_out_channels)
    return dict(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=in_channels,
        layers_per_block=layers_per_block,
        block_out_channels=tuple(block_out_channels),
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=attention_head_dim,
        norm_num_groups=min(32, block_out_channels[0]),
        use_linear_projection=True,
    )


def build_tiny_pipeline(seed: int = 0, *, unet_config: dict[str, Any] | None = None) -> Any:
    """A randomly initialised tiny ``StableDiffusionPipeline`` (8x8 latents, 32x32 pixels)."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline

    # From diffusers.models: mypy resolves diffusers' top-level names to its dummy (no-torch) classes.
    from diffusers.models import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**(unet_config or tiny_unet_config()))
    vae = AutoencoderKL(
        block_out_channels=(16, 32),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    )
    tokenizer = build_tiny_tokenizer()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=unet.config.cross_attention_dim,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
        clip_sample=False, steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_tiny_pipeline(folder: str | Path, seed: int = 0, **kwargs: Any) -> Path:
    """Build a tiny pipeline and save it as a diffusers folder (safetensors)."""
    folder = Path(folder)
    build_tiny_pipeline(seed, **kwargs).save_pretrained(folder, safe_serialization=True)
    return folder


def _tiny_clip(tokenizer: Any, hidden: int, *, projection: int | None = None) -> Any:
    """A 2-layer CLIP text encoder; with ``projection``, the ``CLIPTextModelWithProjection`` whose pooled,
    projected output SDXL and SD3 condition on."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                            num_hidden_layers=2, num_attention_heads=2,
                            max_position_embeddings=tokenizer.model_max_length,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id, projection_dim=projection or hidden)
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def _tiny_vae(latent_channels: int, **extra: Any) -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(16, 32), in_channels=3, out_channels=3,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         latent_channels=latent_channels, norm_num_groups=8, sample_size=32, **extra)


def build_tiny_sdxl_pipeline(seed: int = 0) -> Any:
    """A randomly initialised tiny ``StableDiffusionXLPipeline``: two CLIP text encoders (16 + 16 = 32
    wide states, the second projected and pooled), a U-Net with SDXL's ``text_time`` added conditioning,
    SDXL's Euler scheduler; 8x8 latents, 32x32 pixels."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from diffusers.models import UNet2DConditionModel

    torch.manual_seed(seed)
    time_dim = 8
    unet = UNet2DConditionModel(**tiny_unet_config(cross_attention_dim=32), addition_embed_type="text_time",
                                addition_time_embed_dim=time_dim,
                                projection_class_embeddings_input_dim=6 * time_dim + 16)
    tokenizer, tokenizer_2 = build_tiny_tokenizer(), build_tiny_tokenizer()
    scheduler = EulerDiscreteScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                                       beta_end=0.012, steps_offset=1, timestep_spacing="leading")
    return StableDiffusionXLPipeline(vae=_tiny_vae(4), text_encoder=_tiny_clip(tokenizer, 16),
                                     text_encoder_2=_tiny_clip(tokenizer_2, 16, projection=16), tokenizer=tokenizer,
                                     tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler,
                                     force_zeros_for_empty_prompt=True, add_watermarker=False)


def build_tiny_sd3_pipeline(seed: int = 0) -> Any:
    """A randomly initialised tiny ``StableDiffusion3Pipeline`` without T5 (``text_encoder_3=None``; the
    pipeline then feeds zeros for T5's tokens): CLIP-L- and CLIP-G-shaped encoders (16 + 16 wide,
    projected, pooled 32), an ``SD3Transformer2DModel`` of 2 joint blocks, a 16-channel VAE with SD3's
    shift, flow-matching scheduler; 8x8 latents, 32x32 pixels."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline
    from diffusers.models import SD3Transformer2DModel

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=2,
                                        attention_head_dim=8, num_attention_heads=4, joint_attention_dim=32,
                                        caption_projection_dim=32, pooled_projection_dim=32, pos_embed_max_size=16)
    tokenizer, tokenizer_2 = build_tiny_tokenizer(), build_tiny_tokenizer()
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_tiny_vae(16, shift_factor=0.0609, scaling_factor=1.5305),
        text_encoder=_tiny_clip(tokenizer, 16, projection=16), tokenizer=tokenizer,
        text_encoder_2=_tiny_clip(tokenizer_2, 16, projection=16), tokenizer_2=tokenizer_2,
        text_encoder_3=None, tokenizer_3=None)


T5_SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2, as T5's own vocabulary numbers them


def build_tiny_t5_tokenizer(max_length: int = 512) -> Any:
    """A character-level T5 tokenizer built in code: a ``tokenizers`` Unigram over the printable ASCII
    characters, each alone and after T5's word marker ``▁``, behind T5's Metaspace pre-tokenizer and
    ``</s>`` post-processor, wrapped in ``T5TokenizerFast``. Saves and reloads (``from_pretrained``) like
    T5's; no sentencepiece model, no download."""
    import string

    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    # transformers 5 folded the fast class into T5Tokenizer and keeps T5TokenizerFast as an alias
    fast_class = getattr(transformers, "T5TokenizerFast", transformers.T5Tokenizer)

    marker = "\u2581"
    chars = [c for c in string.printable if not c.isspace()]
    vocab = [(t, 0.0) for t in T5_SPECIAL_TOKENS] + [(marker, -2.0)]
    vocab += [(c, -3.0) for c in chars] + [(marker + c, -2.5) for c in chars]
    model = Tokenizer(models.Unigram(vocab, unk_id=T5_SPECIAL_TOKENS.index("<unk>")))
    model.pre_tokenizer = pre_tokenizers.Metaspace(replacement=marker, prepend_scheme="always")
    model.decoder = decoders.Metaspace(replacement=marker, prepend_scheme="always")
    model.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", T5_SPECIAL_TOKENS.index("</s>"))])
    return fast_class(tokenizer_object=model, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                      extra_ids=0, model_max_length=max_length)


def _tiny_t5(tokenizer: Any, d_model: int) -> Any:
    """A 2-layer ``T5EncoderModel`` (relative position buckets: any text length), without dropout and in
    eval mode, as ``from_pretrained`` hands it over: a pipeline built in code encodes deterministically."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=len(tokenizer), d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=2,
                      num_heads=d_model // 8, relative_attention_num_buckets=8, relative_attention_max_distance=32,
                      feed_forward_proj="gated-gelu", dropout_rate=0.0, pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id)
    return T5EncoderModel(config).eval()


def build_tiny_pixart_pipeline(seed: int = 0) -> Any:
    """A randomly initialised tiny ``PixArtSigmaPipeline``: a T5 encoder (32 wide) with the offline T5
    tokenizer, a ``PixArtTransformer2DModel`` of 2 blocks (2 heads x 8, learned sigma: 8 output
    channels), a 4-channel VAE with SDXL's scale, PixArt-Sigma's DPM-Solver; 8x8 latents, 16x16 pixels
    natively (the encode stage takes any size)."""
    import torch
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline
    from diffusers.models import PixArtTransformer2DModel

    torch.manual_seed(seed)
    transformer = PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
        cross_attention_dim=16, caption_channels=32, sample_size=8, patch_size=2, attention_bias=True,
        activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
        norm_elementwise_affine=False, norm_eps=1e-6, use_additional_conditions=False)
    tokenizer = build_tiny_t5_tokenizer(300)  # PixArt-Sigma's max_sequence_length
    scheduler = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.0001,
                                            beta_end=0.02, prediction_type="epsilon")
    return PixArtSigmaPipeline(tokenizer=tokenizer, text_encoder=_tiny_t5(tokenizer, 32),
                               vae=_tiny_vae(4, scaling_factor=0.13025), transformer=transformer,
                               scheduler=scheduler)


def build_tiny_flux_pipeline(seed: int = 0) -> Any:
    """A randomly initialised tiny ``FluxPipeline`` (dev-like: guidance embedding): a CLIP text encoder
    (pooled 16) and a T5 encoder (32 wide) with the offline tokenizers, a ``FluxTransformer2DModel`` of
    2 double- and 2 single-stream blocks (2 heads x 16) on 2x2-packed tokens of a 16-channel VAE with
    Flux's shift and scale, flow matching with dynamic shifting."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
    from diffusers.models import FluxTransformer2DModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=2, num_single_layers=2,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=16, guidance_embeds=True, axes_dims_rope=(4, 6, 6))
    tokenizer, tokenizer_2 = build_tiny_tokenizer(), build_tiny_t5_tokenizer()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    vae = _tiny_vae(16, shift_factor=0.1159, scaling_factor=0.3611, use_quant_conv=False,
                    use_post_quant_conv=False)
    return FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=_tiny_clip(tokenizer, 16), tokenizer=tokenizer,
                        text_encoder_2=_tiny_t5(tokenizer_2, 32), tokenizer_2=tokenizer_2, transformer=transformer)


TINY_FAMILIES = {"sdxl": build_tiny_sdxl_pipeline, "sd3": build_tiny_sd3_pipeline,
                 "pixart": build_tiny_pixart_pipeline, "flux": build_tiny_flux_pipeline}


def save_tiny_family(family: str, folder: str | Path, seed: int = 0) -> Path:
    """Build a tiny pipeline of ``family`` (``sdxl``, ``sd3``, ``pixart``, ``flux``) and save it as a
    diffusers folder."""
    folder = Path(folder)
    TINY_FAMILIES[family](seed).save_pretrained(folder, safe_serialization=True)
    return folder
