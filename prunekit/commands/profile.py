"""``prunekit profile RECIPE [overrides] --output TABLE.json``: measure the latency table the ``latency``
budget charges (:mod:`prunekit.latency`), for the recipe's denoiser (a U-Net, or a PixArt / SD3 / Flux
transformer) at the latent size and text length its runs use, on the device, dtype and batch you will
deploy."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("profile", help="measure a latency table of a recipe's denoiser (budget.name=latency)")
    parser.add_argument("recipe", help="recipe YAML file (its model, dataset resolution and text length are used)")
    parser.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. model.path=DIR")
    parser.add_argument("--output", "-o", required=True, help="table file to write (JSON)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing table")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: where the recipe's model loads)")
    parser.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default=None,
                        help="default: fp16 on a GPU, fp32 on the CPU")
    parser.add_argument("--batch", type=int, default=1, help="latents per forward (2 per image with guidance)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (medians)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--points", type=int, default=5, help="measured widths per layer, 0 to all (linear table)")
    parser.add_argument("--tile", type=int, default=None,
                        help="GPUs: measure at every TILE channels and charge the next step up (a staircase table)")
    parser.add_argument("--latent", default=None, help="latent H or HxW (default: the dataset resolution / VAE scale)")
    parser.add_argument("--text-len", type=int, default=None,
                        help="tokens (default: what the pipeline feeds its denoiser: the tokenizer's max length "
                             "for a U-Net, the encoded prompt's length for a transformer)")
    parser.add_argument("--check", type=float, nargs="*", default=[0.75, 0.5, 0.25],
                        help="uniform keep fractions timed as whole models against the dense one (the table's "
                             "self-check; none: skip)")
    parser.add_argument("--calibrate", action="store_true",
                        help="fit a factor on the layers' seconds to the --check measurements (table 'scale')")
    parser.set_defaults(func=main)
    return parser


def _latent(text: str) -> tuple[int, int]:
    from prunekit.errors import UsageError

    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise UsageError(f"--latent {text!r}: expected H or HxW, e.g. 32 or 48x64")
    return (parts[0], parts[-1])


def pipeline_text_length(pipeline: Any) -> int:
    """The text length the recipe's runs feed the denoiser (the encoded ``text`` column's): the
    tokenizer's maximum for a U-Net; for a transformer the length its pipeline encodes a prompt to,
    with the ``max_sequence_length`` its transformer records (:func:`prunekit.conditioning.text_length`:
    CLIP + T5 tokens for SD3, T5's for PixArt and Flux)."""
    from prunekit.conditioning import conditioning_for, text_length

    if conditioning_for(pipeline).unet_naming:
        return int(getattr(getattr(pipeline, "tokenizer", None), "model_max_length", 77))
    return text_length(pipeline)


def recipe_input_size(recipe_data: dict[str, Any], pipeline: Any, registry: Any) -> tuple[int, int, int]:
    """(latent height, latent width, text length) the recipe's training runs use: the dataset's
    ``resolution`` over the VAE's scale factor (the unpacked latent, also for Flux), and
    :func:`pipeline_text_length`."""
    from prunekit.config import instantiate_schema
    from prunekit.errors import UsageError

    section = dict(recipe_data.get("dataset") or {})
    component = registry.get("dataset", section.get("name"))
    options = {k: v for k, v in section.items() if k != "name"}
    config = instantiate_schema(component.schema, options) if component.schema is not None else None
    resolution = getattr(config, "resolution", None)
    if not isinstance(resolution, int):
        raise UsageError(f"dataset {section.get('name')!r} has no resolution option: give --latent H[xW]")
    scale = int(getattr(pipeline, "vae_scale_factor", 0) or 2 ** (len(pipeline.vae.config.block_out_channels) - 1))
    return resolution // scale, resolution // scale, pipeline_text_length(pipeline)


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from prunekit.errors import MissingPathError, UsageError
    from prunekit.recipe import load_recipe
    from prunekit.registry import get_registry

    out = Path(args.output)
    if out.exists() and not args.force:
        raise MissingPathError(f"{out} exists; choose another --output or pass --force")
    for name in ("batch", "repeats", "points"):
        if getattr(args, name) < (2 if name == "points" else 1):
            raise UsageError(f"--{name} {getattr(args, name)} is too small")
    recipe = load_recipe(args.recipe, args.overrides)
    registry = get_registry()
    from prunekit.config import instantiate_schema

    model = registry.get("model", recipe.data["model"]["name"])
    if model.schema is not None and hasattr(model.schema, "preflight"):  # the model is here (not the budget table)
        options = {k: v for k, v in recipe.data["model"].items() if k != "name"}
        problems = instantiate_schema(model.schema, options).preflight() or []
        if problems:
            raise MissingPathError("\n".join(problems))

    import torch

    from prunekit.conditioning import denoiser_of
    from prunekit.console import quiet_libraries
    from prunekit.denoisers import denoiser_kind
    from prunekit.latency import DTYPES, profile_latency

    quiet_libraries()
    if args.threads:
        torch.set_num_threads(args.threads)
    pipeline = registry.build("model", recipe.data["model"])
    try:
        denoiser = denoiser_of(pipeline)
        kind = "U-Net" if denoiser_kind(denoiser) == "unet" else type(denoiser).__name__
    except ValueError as exc:  # a pipeline or denoiser class prunekit cannot prune: one line, no traceback
        raise UsageError(f"model {recipe.data['model'].get('name')!r}: cannot profile its denoiser: {exc}") from None
    if args.latent:
        height, width = _latent(args.latent)
        text_len = args.text_len or pipeline_text_length(pipeline)
    else:
        height, width, text_len = recipe_input_size(recipe.data, pipeline, registry)
        text_len = args.text_len or text_len
    if kind == "FluxTransformer2DModel" and (height % 2 or width % 2):
        raise UsageError(f"Flux packs 2x2 latent patches: the latent {height}x{width} must be even (--latent)")
    device = torch.device(args.device) if args.device else next(denoiser.parameters()).device
    dtype_name = args.dtype or ("fp16" if device.type == "cuda" else "fp32")
    denoiser = denoiser.to(device=device, dtype=DTYPES[dtype_name]).eval()
    if device.type == "cuda":  # only the denoiser is timed: the VAE and text encoders leave the device
        for module in pipeline.components.values():
            if isinstance(module, torch.nn.Module) and module is not denoiser:
                module.to("cpu")
    print(f"profiling {recipe.data['name']}'s {kind} on {device} ({dtype_name}, batch {args.batch}, "
          f"{height}x{width} latent, {text_len} tokens, {torch.get_num_threads()} threads)", flush=True)
    table = profile_latency(denoiser, height=height, width=width, text_len=text_len, batch=args.batch,
                            points=args.points, tile=args.tile, repeats=args.repeats, warmup=args.warmup,
                            check=tuple(args.check or ()), calibrate=args.calibrate,
                            log=lambda m: print(f"  {m}", flush=True))
    table.source = {"recipe": str(args.recipe), "overrides": list(args.overrides), "model": recipe.data["model"]}
    table.save(out)
    print(f"{out}\tdense {table.dense_s * 1e3:.2f} ms, {len(table.layers)} layers, scale {table.scale:.3f}, "
          f"profiled in {table.profile_seconds:.0f} s; use it with budget.name=latency budget.table={out}")
    return 0
