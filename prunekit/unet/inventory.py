"""The prunable units of a stock diffusers U-Net, found by walking its block structure.

Nothing here touches weights or activations: an inventory is a pure description (paths, unit counts,
channel ranges), so it can be built on a ``meta``-device model and shared by the gating hooks, the MAC
model, physical pruning and expert loading, which must all agree on the same unit order.

Unit order: width units first, layer by layer in forward order (down blocks, mid block, up blocks; inside
a block resnet j, then transformer j; inside a transformer block attn1, attn2, ff), then the depth units in
the same forward order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

if TYPE_CHECKING:
    from diffusers.models.attention import FeedForward
    from diffusers.models.attention_processor import Attention
    from diffusers.models.resnet import ResnetBlock2D

UnitKind = Literal["resnet_group", "attn_head", "ffn_group", "depth_resnet", "depth_transformer"]
WIDTH_KINDS: tuple[str, ...] = ("resnet_group", "attn_head", "ffn_group")
DEPTH_KINDS: tuple[str, ...] = ("depth_resnet", "depth_transformer")
DepthLayout = Literal["aptp", "all"] | Sequence[str] | None


@dataclass(frozen=True)
class Unit:
    """One gate value.

    ``path`` is the module that owns the unit ("down_blocks.1.resnets.0", "...transformer_blocks.0.attn2",
    "...transformer_blocks.0.ff", or the ResNet / Transformer2D block for depth units). ``size`` is the
    number of channels one unit covers (0 for depth units), ``position`` its index inside its layer.
    """

    index: int
    path: str
    kind: UnitKind
    size: int
    position: int


@dataclass(frozen=True)
class Layer:
    """A run of consecutive units that belong to one module.

    Width layers hold ``count`` units of ``size`` channels each; a depth layer holds the single gate of a
    block. ``depth_unit`` is the index of the depth unit whose block contains this width layer (its
    MACs vanish when that block is dropped), or None. ``identity_channels`` is only set on depth-gated
    decoder ResNets: the number of leading input channels (the ``h`` of ``cat[h, skip]``) that the
    identity keeps.
    """

    path: str
    kind: UnitKind
    start: int
    count: int
    size: int
    depth_unit: int | None = None
    identity_channels: int | None = None

    @property
    def stop(self) -> int:
        return self.start + self.count

    @property
    def channels(self) -> int:
        return self.count * self.size


@dataclass(frozen=True)
class Inventory:
    units: tuple[Unit, ...]
    layers: tuple[Layer, ...]
    depth: tuple[str, ...]
    ffn_groups: int

    @property
    def num_units(self) -> int:
        return len(self.units)

    @property
    def width_layers(self) -> tuple[Layer, ...]:
        return tuple(layer for layer in self.layers if layer.kind in WIDTH_KINDS)

    @property
    def depth_layers(self) -> tuple[Layer, ...]:
        return tuple(layer for layer in self.layers if layer.kind in DEPTH_KINDS)

    def indices(self, kind: str) -> torch.Tensor:
        return torch.tensor([u.index for u in self.units if u.kind == kind], dtype=torch.long)

    def layer(self, path: str, kind: str) -> Layer:
        for layer in self.layers:
            if layer.path == path and layer.kind == kind:
                return layer
        raise KeyError(f"no {kind} layer at {path!r}")

    def block_of(self, layer: Layer) -> str | None:
        """The Transformer2D block that encloses a width layer (None for a ResNet: its layer is its block)."""
        head, sep, _ = layer.path.partition(".transformer_blocks.")
        return head if sep else None

    def footprint(self, layer: Layer) -> str:
        """The smallest module outside of which narrowing ``layer`` changes nothing: a U-Net width layer
        keeps its module's output channels, so it is the layer's own module."""
        return layer.path


@dataclass(frozen=True)
class _Site:
    """A ResNet or Transformer2D block in forward order, with what a depth gate on it would need."""

    path: str
    module: nn.Module
    kind: Literal["resnet", "transformer"]
    part: Literal["down", "mid", "up"]
    last_in_block: bool
    identity_channels: int | None  # decoder resnets: channels of h in cat[h, skip]
    identity_ok: bool


def _module_list(owner: nn.Module, name: str, *, optional: bool = False) -> list[nn.Module]:
    """The modules of the ``nn.ModuleList`` ``owner.<name>`` (an absent or None optional list: none)."""
    value = getattr(owner, name, None) if optional else getattr(owner, name)
    if optional and not value:
        return []
    if not isinstance(value, nn.ModuleList):
        raise ValueError(f"{type(owner).__name__}.{name} is a {type(value).__name__}, not an nn.ModuleList; "
                         "it cannot be made prunable")
    return list(value)


def _block_sites(unet: nn.Module) -> Iterator[_Site]:
    from diffusers.models.resnet import ResnetBlock2D

    def check_resnet(path: str, resnet: nn.Module) -> ResnetBlock2D:
        if not isinstance(resnet, ResnetBlock2D):
            raise ValueError(f"{path}: {type(resnet).__name__} is not a ResnetBlock2D; it cannot be made prunable")
        if resnet.time_embedding_norm != "default":
            # The gate sits after norm2; with scale_shift the shift would re-add dropped channels.
            raise ValueError(f"{path}: time_embedding_norm={resnet.time_embedding_norm!r} is not supported")
        if resnet.upsample is not None or resnet.downsample is not None:
            raise ValueError(f"{path}: resampling ResNets are not supported")
        return resnet

    for i, block in enumerate(_module_list(unet, "down_blocks")):
        resnets = _module_list(block, "resnets")
        attentions = _module_list(block, "attentions", optional=True)
        for j, module in enumerate(resnets):
            path = f"down_blocks.{i}.resnets.{j}"
            resnet = check_resnet(path, module)
            same = resnet.in_channels == resnet.conv2.out_channels
            yield _Site(path, resnet, "resnet", "down", j == len(resnets) - 1, None, same)
            if j < len(attentions):
                yield _Site(f"down_blocks.{i}.attentions.{j}", attentions[j], "transformer", "down",
                            j == len(attentions) - 1, None, True)

    mid = getattr(unet, "mid_block", None)
    config: Any = unet.config  # a diffusers FrozenDict: its keys are also attributes
    h_channels: int = config.block_out_channels[-1]
    if mid is not None:
        resnets = _module_list(mid, "resnets")
        attentions = _module_list(mid, "attentions", optional=True)
        order: list[tuple[str, nn.Module, Literal["resnet", "transformer"]]] = [
            ("mid_block.resnets.0", resnets[0], "resnet")]
        for k, attn in enumerate(attentions):
            order.append((f"mid_block.attentions.{k}", attn, "transformer"))
            if k + 1 < len(resnets):
                order.append((f"mid_block.resnets.{k + 1}", resnets[k + 1], "resnet"))
        for path, module, kind in order:
            if kind == "resnet":
                resnet = check_resnet(path, module)
                ok = resnet.in_channels == resnet.conv2.out_channels
                h_channels = resnet.conv2.out_channels
            else:
                ok = True
            yield _Site(path, module, kind, "mid", False, None, ok)

    for i, block in enumerate(_module_list(unet, "up_blocks")):
        resnets = _module_list(block, "resnets")
        attentions = _module_list(block, "attentions", optional=True)
        for j, module in enumerate(resnets):
            path = f"up_blocks.{i}.resnets.{j}"
            resnet = check_resnet(path, module)
            out = resnet.conv2.out_channels
            ok = h_channels == out and resnet.in_channels > h_channels
            yield _Site(path, resnet, "resnet", "up", j == len(resnets) - 1, h_channels, ok)
            h_channels = out
            if j < len(attentions):
                yield _Site(f"up_blocks.{i}.attentions.{j}", attentions[j], "transformer", "up",
                            j == len(attentions) - 1, None, True)


def _depth_paths(sites: list[_Site], depth: DepthLayout) -> set[str]:
    if depth is None:
        return set()
    if isinstance(depth, str):
        if depth == "aptp":
            # Paper App. D.3: the last ResNet and the last Transformer2D of every encoder/decoder block.
            return {s.path for s in sites if s.part != "mid" and s.last_in_block and s.identity_ok}
        if depth == "all":
            return {s.path for s in sites if s.part != "mid" and s.identity_ok}
        raise ValueError(f"depth must be 'aptp', 'all', None or a list of block paths, got {depth!r}")
    wanted = set(depth)
    by_path = {s.path: s for s in sites}
    for path in wanted:
        if path not in by_path:
            raise ValueError(f"depth path {path!r} is not a ResNet or Transformer2D block of this U-Net")
        if not by_path[path].identity_ok:
            raise ValueError(f"depth path {path!r}: input and output shapes differ, so the block cannot be skipped")
    return wanted


def _transformer_parts(path: str, transformer: nn.Module) -> Iterator[tuple[str, Attention | FeedForward]]:
    from diffusers.models.attention import BasicTransformerBlock, FeedForward
    from diffusers.models.attention_processor import Attention

    blocks = getattr(transformer, "transformer_blocks", None)
    if blocks is None:
        raise ValueError(f"{path}: {type(transformer).__name__} has no transformer_blocks")
    for k, tb in enumerate(blocks):
        tb_path = f"{path}.transformer_blocks.{k}"
        if not isinstance(tb, BasicTransformerBlock):
            raise ValueError(f"{tb_path}: {type(tb).__name__} is not a BasicTransformerBlock")
        for name in ("attn1", "attn2"):
            attn = getattr(tb, name, None)
            if attn is None:
                continue
            if not isinstance(attn, Attention):
                raise ValueError(f"{tb_path}.{name}: {type(attn).__name__} is not a diffusers Attention")
            if attn.inner_kv_dim != attn.inner_dim or attn.to_out is None or attn.added_kv_proj_dim is not None:
                raise ValueError(f"{tb_path}.{name}: grouped-query, added-KV or output-less attention is not supported")
            if attn.norm_q is not None or attn.norm_k is not None or getattr(attn, "fused_projections", False):
                # Across-head q/k norms and fused qkv weights would need slicing rules of their own.
                raise ValueError(f"{tb_path}.{name}: q/k norms and fused projections are not supported")
            yield f"{tb_path}.{name}", attn
        if not isinstance(tb.ff, FeedForward):
            raise ValueError(f"{tb_path}.ff: {type(tb.ff).__name__} is not a diffusers FeedForward")
        yield f"{tb_path}.ff", tb.ff


def ffn_inner_dim(ff: nn.Module) -> tuple[int, bool]:
    """Inner width of a diffusers FeedForward and whether its input projection is gated (GEGLU-like)."""
    activation = ff.get_submodule("net.0")
    proj = getattr(activation, "proj", None)
    out_proj = ff.get_submodule("net.2")
    if not isinstance(proj, nn.Linear) or not isinstance(out_proj, nn.Linear):
        raise ValueError(f"unsupported FeedForward activation {type(activation).__name__}")
    inner = out_proj.in_features
    if proj.out_features == 2 * inner:
        return inner, True
    if proj.out_features == inner:
        return inner, False
    raise ValueError(f"FeedForward projection {proj.out_features} does not match inner width {inner}")


def build_inventory(unet: nn.Module, depth: DepthLayout = "aptp", *, ffn_groups: int = 32) -> Inventory:
    """Describe every prunable unit of ``unet`` (a stock ``UNet2DConditionModel``)."""
    from diffusers.models.attention_processor import Attention
    from diffusers.models.resnet import ResnetBlock2D

    sites = list(_block_sites(unet))
    depth_paths = _depth_paths(sites, depth)

    width_specs: list[tuple[str, UnitKind, int, int, str | None]] = []  # path, kind, count, size, depth path
    for site in sites:
        enclosing = site.path if site.path in depth_paths else None
        if site.kind == "resnet":
            assert isinstance(site.module, ResnetBlock2D)  # checked by _block_sites
            norm2 = site.module.norm2
            groups = norm2.num_groups
            width_specs.append((site.path, "resnet_group", groups, norm2.num_channels // groups, enclosing))
            continue
        for part_path, module in _transformer_parts(site.path, site.module):
            if isinstance(module, Attention):
                heads = module.heads
                head_dim = module.to_q.out_features // heads
                width_specs.append((part_path, "attn_head", heads, head_dim, enclosing))
            else:
                inner, _ = ffn_inner_dim(module)
                if inner % ffn_groups:
                    raise ValueError(f"{part_path}: inner width {inner} is not divisible by ffn_groups={ffn_groups}")
                width_specs.append((part_path, "ffn_group", ffn_groups, inner // ffn_groups, enclosing))

    n_width = sum(spec[2] for spec in width_specs)
    depth_sites = [s for s in sites if s.path in depth_paths]
    depth_index = {s.path: n_width + k for k, s in enumerate(depth_sites)}

    units: list[Unit] = []
    layers: list[Layer] = []
    for path, kind, count, size, enclosing in width_specs:
        start = len(units)
        units.extend(Unit(start + p, path, kind, size, p) for p in range(count))
        layers.append(Layer(path, kind, start, count, size, depth_index.get(enclosing) if enclosing else None))
    for site in depth_sites:
        depth_kind: UnitKind = "depth_resnet" if site.kind == "resnet" else "depth_transformer"
        index = len(units)
        units.append(Unit(index, site.path, depth_kind, 0, 0))
        identity = site.identity_channels if (site.kind == "resnet" and site.part == "up") else None
        layers.append(Layer(site.path, depth_kind, index, 1, 0, None, identity))
    return Inventory(tuple(units), tuple(layers), tuple(s.path for s in depth_sites), ffn_groups)

