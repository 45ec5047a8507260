"""The closed vocabulary of the embedded domain: colours, shapes, sizes, relations, categories.

Pure data (no imports beyond the standard library) so that prompt parsing and recipe validation
stay light.
"""

from __future__ import annotations

# RGB values far apart in hue, so a small classifier (and a small model) can tell them apart at 32 px.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (235, 200, 30),
    "purple": (140, 60, 180),
    "orange": (245, 130, 30),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# Radius as a share of the image side: small and large must stay distinguishable at 32 px
# (3.8 px vs 6.4 px) while a large pair still fits side by side.
SIZES: dict[str, float] = {"small": 0.12, "large": 0.20}
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
CATEGORIES: tuple[str, ...] = ("object", "pair", "digit", "number")
BACKGROUND: tuple[int, int, int] = (245, 245, 245)

# Complexity weights (see ``docs/domain.md``): an object counts 1, an explicit size word 0.5, a
# spatial relation 1 and a glyph 2.5 (a 5x7 pattern that must be drawn exactly). Categories then
# occupy disjoint ranges: object 1-1.5 < digit 2.5 < pair 3-4 < number 5.
WEIGHT_OBJECT = 1.0
WEIGHT_SIZE_WORD = 0.5
WEIGHT_RELATION = 1.0
WEIGHT_GLYPH = 2.5

# Every word a domain prompt can contain (digits are tokenized one by one).
WORDS: tuple[str, ...] = (
    "a", "the", "in", "of", "left", "right", "above", "below", "digit", "number",
    *SIZES, *COLORS, *SHAPES,
)
