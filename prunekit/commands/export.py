"""``prunekit export MIXTURE EXPERT OUT``: one expert of a mixture as an ordinary diffusers pipeline folder."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("export", help="write one expert of a mixture as a diffusers pipeline folder")
    parser.add_argument("mixture", help="mixture folder (runs/NAME/artifacts/mixture)")
    parser.add_argument("expert", type=int, help="expert index (see the mixture's manifest.json)")
    parser.add_argument("output", help="pipeline folder to write (must be new or empty)")
    parser.set_defaults(func=main)
    return parser


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from prunekit.errors import MissingPathError, UsageError

    mixture, out = Path(args.mixture), Path(args.output)
    if not (mixture / "model_index.json").is_file():
        raise MissingPathError(f"{mixture} is not a mixture pipeline folder (no model_index.json)")
    if out.exists() and any(out.iterdir()):
        raise MissingPathError(f"output folder {out} is not empty; choose another")
    import json

    count = len(json.loads((mixture / "experts" / "config.json").read_text()).get("folders") or [])
    if not 0 <= args.expert < count:
        raise UsageError(f"expert {args.expert} does not exist: the mixture has experts 0..{count - 1}")
    from prunekit.pipeline import PromptRoutedPipeline
    from prunekit.runner import quiet_libraries

    quiet_libraries()
    PromptRoutedPipeline.from_pretrained(mixture).save_expert_pipeline(args.expert, out)
    print(f"{out}\texpert {args.expert} of {mixture}: load it with DiffusionPipeline.from_pretrained")
    return 0
