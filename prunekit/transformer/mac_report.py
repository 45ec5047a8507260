"""Print the table of published transformer denoisers in docs/transformers.md (meta device, ~10 s).

    .venv/bin/python -m prunekit.transformer.mac_report [--latent 128] [--ffn-groups 32]

Every model is built from its config in :mod:`prunekit.transformer.configs` on the ``meta`` device (no
weights, nothing downloaded); MACs are FlopCounterMode counts of one batch-1 forward at the native
resolution and the text length its pipeline feeds by default.
"""

from __future__ import annotations

import argparse

import torch

from .configs import PUBLISHED
from .gating import make_prunable
from .macs import macs_by_op


def rows(latent: int | None = None, ffn_groups: int = 32) -> list[str]:
    """The markdown table, one line per published model."""
    from diffusers import models

    lines = ["| model | blocks | heads | FFN / MLP groups | depth | units | params | tokens (image + text) "
             "| dense GMACs | attention matmuls |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for pub in PUBLISHED:
        size = pub.latent if latent is None else latent
        with torch.device("meta"):
            model = getattr(models, pub.class_name)(**pub.config)
        prunable = make_prunable(model, ffn_groups=ffn_groups)
        inventory = prunable.inventory
        heads = int(inventory.indices("attn_head").numel())
        groups = int(inventory.indices("ffn_group").numel())
        by_op = macs_by_op(model, height=size, width=size, text_len=pub.text_len)
        total = sum(by_op.values())
        attention = sum(v for op, v in by_op.items() if "bmm" in op or "attention" in op)
        params = sum(p.numel() for p in model.parameters())
        image_tokens = (size // 2) ** 2  # patch 2 (Flux: its pipeline packs 2x2 latent patches)
        lines.append(f"| {pub.name} ({size * 8} px) | {len(inventory.blocks)} | {heads} | {groups} "
                     f"| {len(inventory.depth)} | {prunable.num_units} | {params / 1e9:.2f} B "
                     f"| {image_tokens} + {pub.text_len} | {total / 1e9:,.0f} | {attention / 1e9:,.0f} "
                     f"({100 * attention / total:.0f} %) |")
        prunable.restore()
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latent", type=int, default=None, help="latent size (default: each model's native)")
    parser.add_argument("--ffn-groups", type=int, default=32)
    args = parser.parse_args()
    print("\n".join(rows(args.latent, args.ffn_groups)))


if __name__ == "__main__":
    main()
