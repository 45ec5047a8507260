"""The report's architecture map: how much of each U-Net block's dense MACs every expert of a mixture
keeps (the APTP paper's Fig. 9/10), measured on the pruned architectures themselves."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_BLOCK = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions)\.(\d+)$|^mid_block\.(resnets|attentions)\.(\d+)$")


def _block_key(path: str) -> tuple[int, int, int, int]:
    """Forward order: down, mid, up; inside a block resnet j, then attention j."""
    m = _BLOCK.match(path)
    assert m is not None
    if m.group(1):
        part = 0 if m.group(1) == "down_blocks" else 2
        return part, int(m.group(2)), int(m.group(4)), 0 if m.group(3) == "resnets" else 1
    return 1, 0, int(m.group(6)), 0 if m.group(5) == "resnets" else 1


def block_label(path: str) -> str:
    """``down_blocks.1.attentions.0`` → ``D1.A0``; ``mid_block.resnets.1`` → ``M.R1``."""
    m = _BLOCK.match(path)
    assert m is not None
    if m.group(1):
        return f"{m.group(1)[0].upper()}{m.group(2)}.{m.group(3)[0].upper()}{m.group(4)}"
    return f"M.{m.group(5)[0].upper()}{m.group(6)}"


def block_macs(unet: Any, *, height: int, width: int, text_len: int) -> dict[str, float]:
    """MACs (batch 1) of every ResNet and Transformer2D block of ``unet``, measured with the same
    FlopCounterMode convention as :func:`prunekit.unet.count_macs`. A block pruned away counts 0."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from prunekit.unet import example_inputs, flop_counter_mode

    counter = flop_counter_mode()
    on_meta = any(p.is_meta for p in unet.parameters())
    with torch.no_grad():
        if on_meta:
            args, kwargs = example_inputs(unet, height=height, width=width, text_len=text_len)
            with counter:
                unet(*args, **kwargs)
        else:
            # Shapes only: a Python pass, not a real forward.
            with FakeTensorMode(allow_non_fake_inputs=True):
                args, kwargs = example_inputs(unet, height=height, width=width, text_len=text_len)
                with counter:
                    unet(*args, **kwargs)
    root = type(unet).__name__ + "."
    found = {name[len(root):]: sum(ops.values()) / 2 for name, ops in counter.get_flop_counts().items()
             if name.startswith(root)}
    paths = [name for name, _ in unet.named_modules() if _BLOCK.match(name)]
    return {p: float(found.get(p, 0.0)) for p in sorted(paths, key=_block_key)}


def retained_mac_map(mixture_dir: str | Path) -> dict[str, Any]:
    """Fraction of each U-Net block's dense MACs that every expert of a mixture keeps.

    Measured on the pruned architectures themselves (rebuilt on the meta device from each expert's
    config and mask, no weights), at the latent size and text length the experts were budgeted at.
    """
    from dataclasses import replace

    from prunekit.mixture import read_manifest
    from prunekit.unet.expert import build_expert_skeleton, read_expert_spec

    mixture_dir = Path(mixture_dir)
    manifest = read_manifest(mixture_dir)
    height, width = manifest["latent_size"]
    text_len = int(manifest["text_len"])
    specs = [read_expert_spec(mixture_dir / entry["path"]) for entry in manifest["experts"]]
    config, first = specs[0]
    dense_model = build_expert_skeleton(config, replace(first, mask=(True,) * first.num_units))
    dense = block_macs(dense_model, height=height, width=width, text_len=text_len)
    blocks = [p for p, v in dense.items() if v > 0]
    experts = []
    for entry, (cfg, spec) in zip(manifest["experts"], specs):
        pruned = block_macs(build_expert_skeleton(cfg, spec), height=height, width=width, text_len=text_len)
        experts.append({"expert": int(entry["id"]), "macs_ratio": float(entry["macs_ratio"]),
                        "retained": [pruned.get(p, 0.0) / dense[p] for p in blocks]})
    return {"blocks": blocks, "labels": [block_label(p) for p in blocks], "dense_macs": [dense[p] for p in blocks],
            "latent_size": [height, width], "text_len": text_len, "experts": experts}


def column_groups(blocks: Sequence[str]) -> list[tuple[str, int, int]]:
    groups: list[tuple[str, int, int]] = []
    for i, path in enumerate(blocks):
        name = "encoder" if path.startswith("down") else "mid" if path.startswith("mid") else "decoder"
        if groups and groups[-1][0] == name:
            groups[-1] = (name, groups[-1][1], i)
        else:
            groups.append((name, i, i))
    return groups
