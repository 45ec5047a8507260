"""What the domain classifier predicts: a scene as two ordered slots plus the axis of a pair.

A target row holds ``TARGET_FIELDS`` as class indices, -1 where the prompt leaves a field open
(or, in training, where the field does not apply). Slot 0 is the object that comes first along the
relation's axis (the left or upper one of a pair, the first digit of a number); slot 1 is the other
one, or ``none``. Comparing predictions with a prompt's row (``-1`` = any) is how alignment is judged.
"""

from __future__ import annotations

from collections.abc import Sequence

from prunekit_plugins.domain.prompts import DomainObject, PromptSpec
from prunekit_plugins.domain.vocab import COLORS, SHAPES, SIZES

SLOTS = 2
KINDS: tuple[str, ...] = ("none", *SHAPES, *(f"digit{d}" for d in range(10)))
AXES: tuple[str, ...] = ("horizontal", "vertical")
TARGET_FIELDS: tuple[str, ...] = ("axis", *(f"{f}{s}" for s in range(SLOTS) for f in ("kind", "color", "size")))
# classes per field, in TARGET_FIELDS order
FIELD_CLASSES: tuple[int, ...] = (len(AXES), *(n for _ in range(SLOTS) for n in (len(KINDS), len(COLORS), len(SIZES))))
ANY = -1


def kind_index(obj: DomainObject) -> int:
    return KINDS.index(f"digit{obj.digit}" if obj.is_glyph else obj.shape)


def slot_objects(spec: PromptSpec, objects: Sequence[DomainObject] | None = None) -> list[DomainObject | None]:
    """The objects of ``spec`` (or ``objects``, same order, e.g. with realised sizes) in slot order."""
    objs = list(objects if objects is not None else spec.objects)
    if spec.category == "pair" and spec.relation in ("right of", "below"):
        objs = objs[::-1]
    return objs + [None] * (SLOTS - len(objs))


def target_row(spec: PromptSpec, objects: Sequence[DomainObject] | None = None) -> list[int]:
    """Class index per field (``ANY`` where open). ``objects`` overrides sizes (a drawn scene's)."""
    if spec.category == "pair":
        axis = AXES.index("horizontal" if spec.relation in ("left of", "right of") else "vertical")
    else:
        axis = ANY
    row = [axis]
    for obj in slot_objects(spec, objects):
        if obj is None:
            row += [KINDS.index("none"), ANY, ANY]
            continue
        size = ANY if obj.is_glyph or obj.size is None else list(SIZES).index(obj.size)
        row += [kind_index(obj), list(COLORS).index(obj.color), size]
    return row


def matches(predicted: Sequence[int], target: Sequence[int]) -> bool:
    """True when every field the target fixes is predicted as it says."""
    return all(t == ANY or int(p) == int(t) for p, t in zip(predicted, target))
