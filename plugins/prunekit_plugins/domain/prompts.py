"""Prompts of the embedded domain: what a prompt says (``PromptSpec``), its text, its parse and its
complexity score. Standard library only: evaluation parses prompts without importing torch.

Grammar (every prompt is one of)::

    object  a [small|large] COLOR SHAPE                      "a red circle"
    pair    OBJECT (left of|right of|above|below) OBJECT     "a small blue square left of a large yellow triangle"
    digit   the digit D in COLOR                             "the digit 7 in green"
    number  the number DD in COLOR                           "the number 42 in red"
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prunekit_plugins.domain.vocab import (
    COLORS,
    RELATIONS,
    SHAPES,
    SIZES,
    WEIGHT_GLYPH,
    WEIGHT_OBJECT,
    WEIGHT_RELATION,
    WEIGHT_SIZE_WORD,
)


class DomainPromptError(ValueError):
    """A prompt that is not in the embedded domain's grammar."""


@dataclass(frozen=True)
class DomainObject:
    """One thing a prompt asks for: a shape (with an optional size) or a digit glyph."""

    shape: str  # circle | square | triangle | digit
    color: str
    size: str | None = None  # small | large; None: a glyph, or a size the prompt leaves open
    digit: int | None = None

    @property
    def is_glyph(self) -> bool:
        return self.shape == "digit"

    def words(self) -> str:
        return " ".join(w for w in ("a", self.size, self.color, self.shape) if w)

    def to_dict(self) -> dict[str, Any]:
        return {"shape": self.shape, "color": self.color, "size": self.size, "digit": self.digit}


@dataclass(frozen=True)
class PromptSpec:
    """Everything a domain prompt specifies, in prompt order (for ``number``: reading order)."""

    category: str
    objects: tuple[DomainObject, ...]
    relation: str | None = None

    @property
    def text(self) -> str:
        if self.category == "object":
            return self.objects[0].words()
        if self.category == "pair":
            first, second = self.objects
            return f"{first.words()} {self.relation} {second.words()}"
        digits = "".join(str(o.digit) for o in self.objects)
        noun = "digit" if self.category == "digit" else "number"
        return f"the {noun} {digits} in {self.objects[0].color}"

    @property
    def complexity(self) -> float:
        """objects x 1 + explicit size words x 0.5 + relations x 1 + glyphs x 2.5 (see vocab.py)."""
        score = 0.0
        for obj in self.objects:
            score += WEIGHT_GLYPH if obj.is_glyph else WEIGHT_OBJECT
            score += WEIGHT_SIZE_WORD if obj.size is not None else 0.0
        return score + (WEIGHT_RELATION if self.relation else 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "category": self.category,
            "objects": [o.to_dict() for o in self.objects],
            "relation": self.relation,
            "complexity": self.complexity,
        }


def _parse_object(words: list[str], prompt: str) -> DomainObject:
    if not words or words[0] != "a":
        raise DomainPromptError(f"{prompt!r}: an object starts with 'a'")
    rest = words[1:]
    size = None
    if len(rest) == 3 and rest[0] in SIZES:
        size, rest = rest[0], rest[1:]
    if len(rest) != 2 or rest[0] not in COLORS or rest[1] not in SHAPES:
        raise DomainPromptError(f"{prompt!r}: expected 'a [size] COLOR SHAPE', got {' '.join(words)!r}")
    return DomainObject(shape=rest[1], color=rest[0], size=size)


def parse_prompt(prompt: str) -> PromptSpec:
    """The ``PromptSpec`` a domain prompt states; raises :class:`DomainPromptError` otherwise."""
    words = prompt.strip().lower().split()
    if len(words) == 5 and words[0] == "the" and words[1] in ("digit", "number") and words[3] == "in":
        digits, color = words[2], words[4]
        want = 1 if words[1] == "digit" else 2
        if not digits.isdigit() or len(digits) != want or color not in COLORS:
            raise DomainPromptError(f"{prompt!r}: expected 'the {words[1]} {'D' * want} in COLOR'")
        if want == 2 and digits[0] == "0":
            raise DomainPromptError(f"{prompt!r}: a number has no leading zero")
        objects = tuple(DomainObject(shape="digit", color=color, digit=int(d)) for d in digits)
        return PromptSpec(category=words[1], objects=objects)
    text = " ".join(words)
    for relation in RELATIONS:
        marker = f" {relation} "
        if marker in text:
            left, right = text.split(marker, 1)
            first, second = _parse_object(left.split(), prompt), _parse_object(right.split(), prompt)
            return PromptSpec(category="pair", objects=(first, second), relation=relation)
    return PromptSpec(category="object", objects=(_parse_object(words, prompt),))


def attributes_for_prompt(prompt: str) -> dict[str, Any]:
    """Ground-truth attributes a domain prompt states, as plain data::

        {"category": "pair", "relation": "left of", "complexity": 4.0,
         "objects": [{"shape": "square", "color": "blue", "size": "small", "digit": None}, ...]}

    ``size`` is None where the prompt leaves it open; objects are in prompt order.
    """
    return parse_prompt(prompt).to_dict()


def complexity_of(prompt: str) -> float:
    return parse_prompt(prompt).complexity


def spec_from_attributes(attributes: dict[str, Any]) -> PromptSpec:
    """Inverse of ``PromptSpec.to_dict`` (positions and other extra keys are ignored)."""
    objects = tuple(
        DomainObject(shape=o["shape"], color=o["color"], size=o.get("size"), digit=o.get("digit"))
        for o in attributes["objects"]
    )
    return PromptSpec(category=attributes["category"], objects=objects, relation=attributes.get("relation"))
