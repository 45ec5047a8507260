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
    """``down_blocks.1.attentions.0`` → ``D1.A0``; ``mid_block.resnets.1`` → ``M.R1``;
    ``transformer_blocks.3`` → ``T3``; ``single_transformer_blocks.0`` → ``S0`` (Flux)."""
    t = _TRANSFORMER_BLOCK.match(path)
    if t:
        return f"{'S' if t.group(1).startswith('single') else 'T'}{t.group(2)}"
    m = _BLOCK.match(path)
    assert m is not None
    if m.group(1):
        return f"{m.group(1)[0].upper()}{m.group(2)}.{m.group(3)[0].upper()}{m.group(4)}"
    return f"M.{m.group(5)[0].upper()}{m.group(6)}"


def block_macs(unet: Any, *, height: int, width: int, text_len: int) -> dict[str, float]:
    """MACs (batch 1) of every ResNet and Transformer2D block of ``unet``, measured with the same
    FlopCounterMode convention as :func:`prunekit.unet.count_macs`. A block pruned away counts 0."""
    from prunekit.mac_count import trace_flops
    from prunekit.unet import example_inputs

    _, per_module, _ = trace_flops(unet, lambda: example_inputs(unet, height=height, width=width, text_len=text_len))
    paths = [name for name, _ in unet.named_modules() if _BLOCK.match(name)]
    return {p: per_module.get(p, 0) / 2 for p in sorted(paths, key=_block_key)}


_TRANSFORMER_BLOCK = re.compile(r"^(transformer_blocks|single_transformer_blocks)\.(\d+)$")


def transformer_block_macs(model: Any, *, height: int, width: int, text_len: int) -> dict[str, float]:
    """MACs (batch 1) of every transformer block of a PixArt / SD3 / Flux model, in forward order, by
    the same convention as :func:`block_macs`; a block pruned away (or gone) counts 0."""
    from prunekit.mac_count import trace_flops
    from prunekit.transformer import example_inputs

    _, per_module, _ = trace_flops(
        model, lambda: ((), example_inputs(model, height=height, width=width, text_len=text_len)))
    paths = [name for name, _ in model.named_modules() if _TRANSFORMER_BLOCK.match(name)]
    return {p: per_module.get(p, 0) / 2 for p in paths}


def _transformer_map(mixture_dir: Path, manifest: dict[str, Any], height: int, width: int,
                     text_len: int) -> dict[str, Any] | None:
    """:func:`retained_mac_map` for transformer experts (None when the experts are U-Nets)."""
    import json

    from prunekit.transformer.prune import meta_skeleton
    from prunekit.transformer.pruned_model import PRUNED_CLASSES, pruned_skeleton

    classes = {cls.__name__: cls for cls in PRUNED_CLASSES.values()}
    configs = [json.loads((mixture_dir / e["path"] / "config.json").read_text()) for e in manifest["experts"]]
    if configs[0].get("_class_name") not in classes:
        return None
    cls = classes[configs[0]["_class_name"]]
    models = []
    for raw in configs:  # architectures only, on the meta device: no weights are read
        config = cls.extract_init_dict(dict(raw))[0]  # undoes the stock-loader guard
        models.append(pruned_skeleton(cls, config, config.pop("pruning")))
    dense_model = meta_skeleton(models[0].dense_config, cls.dense_class.__name__)
    dense = transformer_block_macs(dense_model, height=height, width=width, text_len=text_len)
    blocks = [p for p, v in dense.items() if v > 0]
    experts = []
    for entry, model in zip(manifest["experts"], models):
        pruned = transformer_block_macs(model, height=height, width=width, text_len=text_len)
        experts.append({"expert": int(entry["id"]), "macs_ratio": float(entry["macs_ratio"]),
                        "retained": [pruned.get(p, 0.0) / dense[p] for p in blocks]})
    return {"blocks": blocks, "labels": [block_label(p) for p in blocks], "dense_macs": [dense[p] for p in blocks],
            "latent_size": [height, width], "text_len": text_len, "experts": experts}


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
    transformer = _transformer_map(mixture_dir, manifest, height, width, text_len)
    if transformer is not None:
        return transformer
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
        name = ("encoder" if path.startswith("down") else "mid" if path.startswith("mid") else
                "single blocks" if path.startswith("single") else "blocks" if path.startswith("transformer")
                else "decoder")
        if groups and groups[-1][0] == name:
            groups[-1] = (name, groups[-1][1], i)
        else:
            groups.append((name, i, i))
    return groups
