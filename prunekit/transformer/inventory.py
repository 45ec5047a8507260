"""The prunable units of a stock diffusers transformer denoiser (PixArt, SD3 / SD3.5, Flux).

Like :mod:`prunekit.unet.inventory`, an inventory is a pure description (paths, unit counts, channel
ranges) that can be built on a ``meta``-device model. It reuses the U-Net's ``Unit`` / ``Layer`` /
``Inventory`` types and kinds (``attn_head``, ``ffn_group``, ``depth_transformer``), so code written
against a ``PrunableUNet`` (router, budgets, losses) reads a transformer inventory unchanged. What the
U-Net derives from module types (where a gate sits, which MACs it scales) differs per family here, so
each width layer also carries a :class:`WidthSpec`.

Unit order: width units block by block in forward order (PixArt: attn1, attn2, ff; SD3: attn, attn2,
ff, ff_context; Flux double blocks: attn, ff, ff_context, then single blocks: attn, MLP), then one depth
unit per depth-gated block, in the same order.

The residual stream width is never pruned: norms, adaLN modulation and the stream projections keep
their size, and only head counts and MLP inner widths shrink (see docs/transformers.md).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from torch import nn

from ..unet.inventory import Inventory, Layer, Unit, UnitKind, ffn_inner_dim

Family = Literal["pixart", "sd3", "flux"]
# "all": every transformer block is a depth unit; None: none; or an explicit list of block paths.
TransformerDepth = Literal["all"] | Sequence[str] | None


@dataclass(frozen=True)
class GateSite:
    """Where a width layer's gates multiply: the input of a module (pre-hook) or its output (hook)."""

    path: str
    where: Literal["input", "output"]


@dataclass(frozen=True)
class WidthSpec:
    """What a width layer touches besides its own module.

    ``gates``: the activations the gates multiply (a joint-attention head is gated in both streams'
    output projections). ``costs``: (module path, share) pairs whose MACs scale linearly with the kept
    units; a Flux single block's shared ``proj_out`` is split between heads and MLP by input columns.
    """

    gates: tuple[GateSite, ...]
    costs: tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class TransformerInventory(Inventory):
    """An :class:`Inventory` plus the family and one :class:`WidthSpec` per width layer (same order)."""

    family: Family = "pixart"
    specs: tuple[WidthSpec, ...] = ()
    blocks: tuple[str, ...] = ()  # every transformer block path, in forward order

    def spec(self, layer: Layer) -> WidthSpec:
        return self.specs[self.width_layers.index(layer)]

    def block_of(self, layer: Layer) -> str | None:
        """The transformer block that holds a width layer."""
        return next((b for b in self.blocks if layer.path.startswith(b + ".")), None)

    def footprint(self, layer: Layer) -> str:
        """The smallest module outside of which narrowing ``layer`` changes nothing: the common ancestor
        of its own module, the modules whose MACs scale with it and those its gates multiply. The layer's
        own module, except in a Flux single block, whose heads and MLP both narrow the block's shared
        ``proj_out`` (and the MLP its ``act_mlp``): there it is the whole block."""
        spec = self.spec(layer)
        paths = [layer.path, *(path for path, _ in spec.costs), *(site.path for site in spec.gates)]
        common = paths[0].split(".")
        for path in paths[1:]:
            parts = path.split(".")
            n = 0
            while n < min(len(common), len(parts)) and common[n] == parts[n]:
                n += 1
            common = common[:n]
        return ".".join(common)


def family_of(model: nn.Module) -> Family:
    """The family of a stock (or pruned) diffusers transformer, by class."""
    from diffusers.models.transformers.pixart_transformer_2d import PixArtTransformer2DModel
    from diffusers.models.transformers.transformer_flux import FluxTransformer2DModel
    from diffusers.models.transformers.transformer_sd3 import SD3Transformer2DModel

    if isinstance(model, PixArtTransformer2DModel):
        return "pixart"
    if isinstance(model, SD3Transformer2DModel):
        return "sd3"
    if isinstance(model, FluxTransformer2DModel):
        return "flux"
    raise ValueError(f"{type(model).__name__} is not a supported transformer denoiser "
                     "(PixArtTransformer2DModel, SD3Transformer2DModel, FluxTransformer2DModel)")


@dataclass(frozen=True)
class _Width:
    path: str
    kind: UnitKind
    count: int
    size: int
    spec: WidthSpec


def _norm_width(norm: nn.Module | None) -> int | None:
    if norm is None:
        return None
    shape = getattr(norm, "normalized_shape", None) or getattr(norm, "dim", None)
    if shape is None:
        return None
    return int(shape) if isinstance(shape, int) else int(tuple(shape)[-1])


def attention_heads(path: str, attn: nn.Module) -> tuple[int, int]:
    """(heads, head_dim) of a diffusers ``Attention`` / ``FluxAttention``, checked to be head-prunable."""
    to_q, to_k, to_v = (getattr(attn, name, None) for name in ("to_q", "to_k", "to_v"))
    if not all(isinstance(m, nn.Linear) for m in (to_q, to_k, to_v)):
        raise ValueError(f"{path}: attention without separate to_q/to_k/to_v linears (fused?) is not supported")
    assert isinstance(to_q, nn.Linear) and isinstance(to_k, nn.Linear)
    if getattr(attn, "fused_projections", False):
        raise ValueError(f"{path}: fused qkv projections are not supported; unfuse them first")
    heads = attn.heads
    if not isinstance(heads, int):
        raise ValueError(f"{path}: {type(attn).__name__} has no integer head count")
    inner = to_q.out_features
    if inner % heads or to_k.out_features != inner:
        raise ValueError(f"{path}: grouped-query attention or uneven heads ({inner} / {heads}) are not supported")
    head_dim = inner // heads
    for name in ("norm_q", "norm_k", "norm_added_q", "norm_added_k", "norm_cross"):
        width = _norm_width(getattr(attn, name, None))
        # Per-head q/k norms are shared by all heads and survive head pruning; across-head norms would not.
        if width is not None and width != head_dim:
            raise ValueError(f"{path}.{name}: normalises across heads ({width} != head_dim {head_dim}); "
                             "not head-prunable")
    return heads, head_dim


def _ffn(path: str, ff: nn.Module, ffn_groups: int) -> _Width:
    from diffusers.models.attention import FeedForward

    if not isinstance(ff, FeedForward):
        raise ValueError(f"{path}: {type(ff).__name__} is not a diffusers FeedForward")
    inner, _ = ffn_inner_dim(ff)
    if inner % ffn_groups:
        raise ValueError(f"{path}: inner width {inner} is not divisible by ffn_groups={ffn_groups}")
    # Gate after the activation (net[0] = GELU/GEGLU incl. its projection): act(0) never leaks in.
    spec = WidthSpec((GateSite(f"{path}.net.0", "output"),), ((path, 1.0),))
    return _Width(path, "ffn_group", ffn_groups, inner // ffn_groups, spec)


def _heads(path: str, attn: nn.Module, gates: tuple[GateSite, ...],
           extra_costs: tuple[tuple[str, float], ...] = ()) -> _Width:
    heads, head_dim = attention_heads(path, attn)
    return _Width(path, "attn_head", heads, head_dim, WidthSpec(gates, ((path, 1.0), *extra_costs)))


def _pixart_blocks(model: nn.Module, ffn_groups: int) -> Iterator[tuple[str, list[_Width]]]:
    from diffusers.models.attention import BasicTransformerBlock

    for i, block in enumerate(_blocks(model, "transformer_blocks")):
        path = f"transformer_blocks.{i}"
        if not isinstance(block, BasicTransformerBlock):
            raise ValueError(f"{path}: {type(block).__name__} is not a BasicTransformerBlock")
        widths: list[_Width] = []
        for name in ("attn1", "attn2"):
            attn = getattr(block, name, None)
            if attn is None:
                continue
            if getattr(attn, "added_kv_proj_dim", None) is not None:
                raise ValueError(f"{path}.{name}: added-KV attention is not supported in PixArt blocks")
            widths.append(_heads(f"{path}.{name}", attn, (GateSite(f"{path}.{name}.to_out.0", "input"),)))
        widths.append(_ffn(f"{path}.ff", block.ff, ffn_groups))
        yield path, widths


def _joint_attention(path: str, attn: nn.Module) -> _Width:
    # One head is one slice of q/k/v in BOTH streams (the joint softmax runs over image + text keys), so
    # its output is gated in both output projections at once; a context_pre_only block drops the text
    # output and only has to_out.
    gates = [GateSite(f"{path}.to_out.0", "input")]
    if getattr(attn, "to_add_out", None) is not None:
        gates.append(GateSite(f"{path}.to_add_out", "input"))
    return _heads(path, attn, tuple(gates))


def _sd3_blocks(model: nn.Module, ffn_groups: int) -> Iterator[tuple[str, list[_Width]]]:
    from diffusers.models.attention import JointTransformerBlock

    for i, block in enumerate(_blocks(model, "transformer_blocks")):
        path = f"transformer_blocks.{i}"
        if not isinstance(block, JointTransformerBlock):
            raise ValueError(f"{path}: {type(block).__name__} is not a JointTransformerBlock")
        widths = [_joint_attention(f"{path}.attn", block.attn)]
        if block.attn2 is not None:  # SD3.5 "dual attention": a second, image-only self-attention
            widths.append(_heads(f"{path}.attn2", block.attn2, (GateSite(f"{path}.attn2.to_out.0", "input"),)))
        widths.append(_ffn(f"{path}.ff", block.ff, ffn_groups))
        if block.ff_context is not None:
            widths.append(_ffn(f"{path}.ff_context", block.ff_context, ffn_groups))
        yield path, widths


def _flux_blocks(model: nn.Module, ffn_groups: int) -> Iterator[tuple[str, list[_Width]]]:
    from diffusers.models.transformers.transformer_flux import (
        FluxSingleTransformerBlock,
        FluxTransformerBlock,
    )

    for i, block in enumerate(_blocks(model, "transformer_blocks")):
        path = f"transformer_blocks.{i}"
        if not isinstance(block, FluxTransformerBlock):
            raise ValueError(f"{path}: {type(block).__name__} is not a FluxTransformerBlock")
        yield path, [_joint_attention(f"{path}.attn", block.attn), _ffn(f"{path}.ff", block.ff, ffn_groups),
                     _ffn(f"{path}.ff_context", block.ff_context, ffn_groups)]
    for i, block in enumerate(_blocks(model, "single_transformer_blocks")):
        path = f"single_transformer_blocks.{i}"
        if not isinstance(block, FluxSingleTransformerBlock):
            raise ValueError(f"{path}: {type(block).__name__} is not a FluxSingleTransformerBlock")
        attn_dim = block.attn.to_q.out_features
        mlp_dim = block.proj_mlp.out_features
        if block.proj_out.in_features != attn_dim + mlp_dim:
            raise ValueError(f"{path}.proj_out: {block.proj_out.in_features} inputs, expected {attn_dim} + {mlp_dim}")
        if mlp_dim % ffn_groups:
            raise ValueError(f"{path}.proj_mlp: width {mlp_dim} is not divisible by ffn_groups={ffn_groups}")
        total = float(attn_dim + mlp_dim)
        # proj_out reads cat[heads, mlp]: each part owns the share of its MACs given by its columns.
        heads = _heads(f"{path}.attn", block.attn, (GateSite(f"{path}.attn", "output"),),
                       ((f"{path}.proj_out", attn_dim / total),))
        mlp = _Width(f"{path}.proj_mlp", "ffn_group", ffn_groups, mlp_dim // ffn_groups,
                     WidthSpec((GateSite(f"{path}.act_mlp", "output"),),
                               ((f"{path}.proj_mlp", 1.0), (f"{path}.proj_out", mlp_dim / total))))
        yield path, [heads, mlp]


def _blocks(model: nn.Module, name: str) -> list[nn.Module]:
    value = getattr(model, name, None)
    if not isinstance(value, nn.ModuleList):
        raise ValueError(f"{type(model).__name__}.{name} is not an nn.ModuleList; it cannot be made prunable")
    return list(value)


def _depth_paths(blocks: list[str], depth: TransformerDepth) -> list[str]:
    if depth is None:
        return []
    if isinstance(depth, str):
        if depth != "all":
            raise ValueError(f"depth must be 'all', None or a list of block paths, got {depth!r}")
        return list(blocks)
    wanted = set(depth)
    unknown = wanted - set(blocks)
    if unknown:
        raise ValueError(f"depth paths {sorted(unknown)} are not transformer blocks of this model")
    return [b for b in blocks if b in wanted]


def build_inventory(model: nn.Module, depth: TransformerDepth = "all", *, ffn_groups: int = 32) -> TransformerInventory:
    """Describe every prunable unit of a stock PixArt / SD3 / Flux transformer."""
    family = family_of(model)
    walk = {"pixart": _pixart_blocks, "sd3": _sd3_blocks, "flux": _flux_blocks}[family]
    per_block = list(walk(model, ffn_groups))
    blocks = [path for path, _ in per_block]
    depth_paths = _depth_paths(blocks, depth)
    n_width = sum(w.count for _, widths in per_block for w in widths)
    depth_index = {path: n_width + k for k, path in enumerate(depth_paths)}

    units: list[Unit] = []
    layers: list[Layer] = []
    specs: list[WidthSpec] = []
    for block, widths in per_block:
        for w in widths:
            start = len(units)
            units.extend(Unit(start + p, w.path, w.kind, w.size, p) for p in range(w.count))
            layers.append(Layer(w.path, w.kind, start, w.count, w.size, depth_index.get(block)))
            specs.append(w.spec)
    for path in depth_paths:
        index = len(units)
        units.append(Unit(index, path, "depth_transformer", 0, 0))
        layers.append(Layer(path, "depth_transformer", index, 1, 0))
    return TransformerInventory(tuple(units), tuple(layers), tuple(depth_paths), ffn_groups,
                                family=family, specs=tuple(specs), blocks=tuple(blocks))
