"""``prunekit profile RECIPE [overrides] --output TABLE.json``: measure the latency table the ``latency``
budget charges (:mod:`prunekit.unet.latency`), for the recipe's U-Net at the latent size and text
length its runs use, on the device, dtype and batch you will deploy."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("profile", help="measure a latency table of a recipe's U-Net (budget.name=latency)")
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
    parser.add_argument("--text-len", type=int, default=None, help="tokens (default: the tokenizer's max length)")
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


def recipe_input_size(recipe_data: dict[str, Any], pipeline: Any, registry: Any) -> tuple[int, int, int]:
    """(latent height, latent width, text length) the recipe's training runs use: the dataset's
    ``resolution`` over the VAE's scale factor, and the tokenizer's maximum length."""
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
    tokenizer = getattr(pipeline, "tokenizer", None)
    text_len = int(getattr(tokenizer, "model_max_length", 77))
    return resolution // scale, resolution // scale, text_len


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

    from prunekit.console import quiet_libraries
    from prunekit.unet.latency import DTYPES, profile_latency

    quiet_libraries()
    if args.threads:
        torch.set_num_threads(args.threads)
    pipeline = registry.build("model", recipe.data["model"])
    if args.latent:
        height, width = _latent(args.latent)
        text_len = args.text_len or int(getattr(pipeline.tokenizer, "model_max_length", 77))
    else:
        height, width, text_len = recipe_input_size(recipe.data, pipeline, registry)
        text_len = args.text_len or text_len
    unet = pipeline.unet
    device = torch.device(args.device) if args.device else next(unet.parameters()).device
    dtype_name = args.dtype or ("fp16" if device.type == "cuda" else "fp32")
    unet = unet.to(device=device, dtype=DTYPES[dtype_name]).eval()
    for part in ("vae", "text_encoder"):  # only the U-Net is timed: the rest leaves the device
        module = getattr(pipeline, part, None)
        if module is not None and device.type == "cuda":
            module.to("cpu")
    print(f"profiling {recipe.data['name']}'s U-Net on {device} ({dtype_name}, batch {args.batch}, "
          f"{height}x{width} latent, {text_len} tokens, {torch.get_num_threads()} threads)", flush=True)
    table = profile_latency(unet, height=height, width=width, text_len=text_len, batch=args.batch,
                            points=args.points, tile=args.tile, repeats=args.repeats, warmup=args.warmup,
                            check=tuple(args.check or ()), calibrate=args.calibrate,
                            log=lambda m: print(f"  {m}", flush=True))
    table.source = {"recipe": str(args.recipe), "overrides": list(args.overrides), "model": recipe.data["model"]}
    table.save(out)
    print(f"{out}\tdense {table.dense_s * 1e3:.2f} ms, {len(table.layers)} layers, scale {table.scale:.3f}, "
          f"profiled in {table.profile_seconds:.0f} s; use it with budget.name=latency budget.table={out}")
    return 0
