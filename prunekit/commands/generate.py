"""``prunekit generate MIXTURE PROMPT...``: images from a routed mixture of experts, one PNG a prompt."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("generate", help="generate images with a routed mixture of experts")
    parser.add_argument("mixture", help="mixture folder (runs/NAME/artifacts/mixture)")
    parser.add_argument("prompts", nargs="+", help="one or more prompts")
    parser.add_argument("--output", "-o", default="generated", help="folder for the PNGs (must be new or empty)")
    parser.add_argument("--steps", type=int, default=25, help="sampler steps (paper: 25 PNDM)")
    parser.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale")
    parser.add_argument("--seed", type=int, default=0, help="image i uses seed + i")
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.set_defaults(func=main)
    return parser


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from prunekit.errors import MissingPathError

    mixture = Path(args.mixture)
    if not (mixture / "manifest.json").is_file():
        raise MissingPathError(f"{mixture} is not a mixture folder (no manifest.json)")
    out = Path(args.output)
    if out.exists() and any(out.iterdir()):
        raise MissingPathError(f"output folder {out} is not empty; choose another with --output")
    from prunekit.pipeline import PromptRoutedPipeline
    from prunekit.runner import quiet_libraries

    quiet_libraries()
    pipe = PromptRoutedPipeline.from_pretrained(mixture, device=args.device)
    kwargs = {"num_inference_steps": args.steps, "guidance_scale": args.guidance}
    if args.height:
        kwargs["height"] = args.height
    if args.width:
        kwargs["width"] = args.width
    result = pipe(args.prompts, seed=args.seed, **kwargs)
    assert not isinstance(result, tuple)  # return_dict=True
    out.mkdir(parents=True, exist_ok=True)
    for i, (prompt, image, expert) in enumerate(zip(args.prompts, result.images, result.experts)):
        path = out / f"{i:03d}_expert{expert:02d}.png"
        image.save(path)
        print(f"{path}\texpert {expert}\t{prompt}")
    return 0
