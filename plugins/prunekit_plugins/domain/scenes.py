"""Sampling prompts and laying out and drawing their scenes, deterministically from a seed.

``sample_spec`` draws what a prompt says; ``layout`` places it (sizes the prompt leaves open are
drawn here); ``render`` draws the placed scene as a uint8 RGB array. numpy is imported inside the
functions that need it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from prunekit_plugins.domain.font import GLYPH_HEIGHT, GLYPH_WIDTH, glyph
from prunekit_plugins.domain.prompts import DomainObject, PromptSpec
from prunekit_plugins.domain.vocab import BACKGROUND, CATEGORIES, COLORS, RELATIONS, SHAPES, SIZES

DEFAULT_MIX: dict[str, float] = {"object": 0.3, "pair": 0.3, "digit": 0.2, "number": 0.2}


@dataclass(frozen=True)
class Placed:
    """An object with its realised size and centre (pixels, x to the right, y down)."""

    obj: DomainObject
    x: float
    y: float

    def to_dict(self) -> dict[str, Any]:
        return {**self.obj.to_dict(), "x": round(self.x, 3), "y": round(self.y, 3)}


@dataclass(frozen=True)
class Scene:
    """A prompt and the drawing that depicts it. ``placed`` is in prompt order; every shape has a size."""

    spec: PromptSpec
    placed: tuple[Placed, ...]
    resolution: int

    def to_dict(self) -> dict[str, Any]:
        return {**self.spec.to_dict(), "objects_drawn": [p.to_dict() for p in self.placed]}


def _half_size(obj: DomainObject, resolution: float) -> float:
    """Half the extent of a shape, in pixels."""
    assert obj.size is not None  # layout gives every shape a size before it is placed or drawn
    return SIZES[obj.size] * resolution


def _pick(rng: Any, items: Any) -> Any:
    items = list(items)
    return items[int(rng.integers(len(items)))]


def sample_spec(rng: Any, mix: Mapping[str, float] = DEFAULT_MIX, size_word_prob: float = 0.5) -> PromptSpec:
    """One random prompt: category by ``mix`` (weights), then its words."""
    names = [c for c in CATEGORIES if mix.get(c, 0) > 0]
    weights = [float(mix[c]) for c in names]
    total = sum(weights)
    category = names[int(rng.choice(len(names), p=[w / total for w in weights]))]

    def shape_object() -> DomainObject:
        size = _pick(rng, SIZES) if rng.random() < size_word_prob else None
        return DomainObject(shape=_pick(rng, SHAPES), color=_pick(rng, COLORS), size=size)

    if category == "object":
        return PromptSpec("object", (shape_object(),))
    if category == "pair":
        first = shape_object()
        second = shape_object()
        while (second.shape, second.color) == (first.shape, first.color):  # keep the two tellable apart
            second = shape_object()
        return PromptSpec("pair", (first, second), relation=_pick(rng, RELATIONS))
    color = _pick(rng, COLORS)
    if category == "digit":
        digits = [int(rng.integers(10))]
    else:
        digits = [int(rng.integers(1, 10)), int(rng.integers(10))]
    return PromptSpec(category, tuple(DomainObject(shape="digit", color=color, digit=d) for d in digits))


def glyph_scale(resolution: int) -> int:
    """Font pixels per glyph cell: 2 at 32 px, 4 at 64 px."""
    return max(1, resolution // 16)


def layout(spec: PromptSpec, rng: Any, resolution: int) -> Scene:
    """Place the objects of ``spec`` at random positions consistent with what it says."""
    R = float(resolution)

    def sized(obj: DomainObject) -> DomainObject:
        return obj if obj.is_glyph or obj.size is not None else replace(obj, size=_pick(rng, SIZES))

    if spec.category == "object":
        obj = sized(spec.objects[0])
        r = _half_size(obj, R)
        x, y = rng.uniform(r + 1, R - r - 1, size=2)
        return Scene(spec, (Placed(obj, float(x), float(y)),), resolution)
    if spec.category == "pair":
        a, b = (sized(o) for o in spec.objects)
        # Slot order: the object that comes first along the relation's axis (left, or top).
        swap = spec.relation in ("right of", "below")
        first, second = (b, a) if swap else (a, b)
        r1, r2 = _half_size(first, R), _half_size(second, R)
        # Each object in its own half with >= 2 px between them (holds for R >= 20).
        along1 = rng.uniform(r1 + 1, max(r1 + 1, R / 2 - r1 - 1))
        along2 = rng.uniform(min(R - r2 - 1, R / 2 + r2 + 1), R - r2 - 1)
        # Both on one line (shared offset, +-1 px each), so the axis of the relation is unambiguous.
        line = R / 2 + rng.uniform(-R / 8, R / 8)
        across1, across2 = line + rng.uniform(-R / 32, R / 32, size=2)
        if spec.relation in ("left of", "right of"):
            p1, p2 = Placed(first, float(along1), float(across1)), Placed(second, float(along2), float(across2))
        else:
            p1, p2 = Placed(first, float(across1), float(along1)), Placed(second, float(across2), float(along2))
        return Scene(spec, (p2, p1) if swap else (p1, p2), resolution)
    s = glyph_scale(resolution)
    w, h, gap = GLYPH_WIDTH * s, GLYPH_HEIGHT * s, s
    total = len(spec.objects) * w + (len(spec.objects) - 1) * gap
    left = int(rng.integers(1, resolution - total))
    top = int(rng.integers(1, resolution - h))
    placed = tuple(
        Placed(o, left + k * (w + gap) + w / 2, top + h / 2) for k, o in enumerate(spec.objects)
    )
    return Scene(spec, placed, resolution)


def _shape_mask(shape: str, cx: float, cy: float, r: float, yy: Any, xx: Any) -> Any:
    import numpy as np

    if shape == "circle":
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2
    if shape == "square":
        return (np.abs(xx - cx) <= r * 0.85) & (np.abs(yy - cy) <= r * 0.85)
    top, base = cy - r, cy + r * 0.8  # upward triangle: inside three half-planes
    half = (yy - top) / (base - top) * r
    return (yy >= top) & (yy <= base) & (np.abs(xx - cx) <= half)


def render(scene: Scene) -> Any:
    """The scene as a uint8 array (R, R, 3) on a light background."""
    import numpy as np

    R = scene.resolution
    image = np.empty((R, R, 3), dtype=np.uint8)
    image[:] = BACKGROUND
    yy, xx = np.mgrid[0:R, 0:R].astype(np.float32) + 0.5
    s = glyph_scale(R)
    for item in scene.placed:
        color = COLORS[item.obj.color]
        if item.obj.is_glyph:
            assert item.obj.digit is not None  # a glyph always carries its digit
            ink = np.kron(np.array(glyph(item.obj.digit), dtype=np.uint8), np.ones((s, s), dtype=np.uint8))
            top = int(round(item.y - GLYPH_HEIGHT * s / 2))
            left = int(round(item.x - GLYPH_WIDTH * s / 2))
            region = image[top : top + ink.shape[0], left : left + ink.shape[1]]
            region[ink.astype(bool)] = color
        else:
            r = _half_size(item.obj, R)
            image[_shape_mask(item.obj.shape, item.x, item.y, r, yy, xx)] = color
    return image
