"""Latency tables: what ``prunekit profile`` measured, as a versioned JSON file (no torch needed).

A table holds, for one device, dtype, batch, latent size and text length, the seconds of every
width layer's module at a few kept widths, of every block (a U-Net's Transformer2D blocks, a
transformer's blocks), and of the dense denoiser; :mod:`prunekit.latency` measures it and turns it
into a differentiable estimate. This module only reads, writes and checks the file, so ``prunekit
validate`` can look at a table without torch.

The ``unet_class`` / ``unet_config_hash`` keys keep their U-Net-era names (tables written before
transformers were supported still load) but name any denoiser: ``PixArtTransformer2DModel`` etc.

File (JSON)::

    {"format": "prunekit.latency_table", "version": 1,
     "device": "cpu", "device_name": "...", "threads": 1, "torch_version": "...", "diffusers_version": "...",
     "dtype": "fp32", "batch": 1, "height": 32, "width": 32, "text_len": 77,
     "unet_class": "UNet2DConditionModel", "unet_config_hash": "...",
     "interpolation": "linear" | "staircase", "tile": null | channels,
     "dense_s": seconds of the dense forward, "scale": whole-model calibration of the layer seconds,
     "layers": {module path: {"kind": "resnet_group" | "attn_head" | "ffn_group", "channels": all of them,
                              "unit": channels per unit, "widths": [kept channels, 0 ... channels],
                              "seconds": [non-decreasing fit], "measured_s": [medians], "same_as": path | null,
                              "timed": enclosing module path (only when not the layer's own module)}},
     "blocks": {block path: dense seconds},
     "checks": [{"fraction", "predicted_ratio", "measured_ratio", "calibrated_ratio", ...}],
     "repeats": N, "profile_seconds": s, "created": "...", "source": {...}}
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

TABLE_FORMAT = "prunekit.latency_table"
TABLE_VERSION = 1
INTERPOLATIONS = ("linear", "staircase")


class LatencyTableError(ValueError):
    """A latency table that cannot be read, or that was measured for another denoiser or input size."""


def config_hash(config: Mapping[str, Any]) -> str:
    """A short hash of a denoiser config (architecture keys only: ``_name_or_path``, a transformer's
    recorded ``_max_sequence_length`` etc. are ignored)."""
    keys = {k: v for k, v in dict(config).items() if not str(k).startswith("_") and k != "pruning"}
    text = json.dumps(keys, sort_keys=True, default=lambda v: list(v) if isinstance(v, (tuple, set)) else str(v))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


unet_config_hash = config_hash  # the name U-Net-era code imports


def block_of(layer_path: str) -> str:
    """The ResNet or Transformer2D block a width layer belongs to (a ResNet layer is its block)."""
    head, sep, _ = layer_path.partition(".transformer_blocks.")
    return head if sep else layer_path


@dataclass
class LayerCurve:
    """Seconds of one width layer's module against its kept channels (``widths``, ascending, 0 to all)."""

    kind: str
    channels: int
    unit: int  # channels per unit when measured (a head's dim, a group's channels)
    widths: list[int]
    seconds: list[float]  # non-decreasing fit of measured_s: what the estimate uses
    measured_s: list[float]
    same_as: str | None = None  # the layer whose module was timed (identical shapes)
    # The module timed when narrowing the layer reaches outside its own (a Flux single block): then
    # measured_s are that module's seconds minus its seconds with this layer at width 0.
    timed: str | None = None


@dataclass
class LatencyTable:
    """A measured latency table (see the module docstring); ``save``/``load`` read and write its JSON."""

    device: str
    device_name: str
    dtype: str
    batch: int
    height: int
    width: int
    text_len: int
    unet_class: str
    unet_config_hash: str
    interpolation: str
    dense_s: float
    layers: dict[str, LayerCurve]
    blocks: dict[str, float]
    scale: float = 1.0  # whole-model calibration of the isolated module timings (see profile_latency)
    tile: int | None = None
    threads: int | None = None
    torch_version: str = ""
    diffusers_version: str = ""
    repeats: int = 0
    checks: list[dict[str, Any]] = field(default_factory=list)
    profile_seconds: float = 0.0
    created: str = ""
    source: dict[str, Any] = field(default_factory=dict)  # what it was profiled from (recipe, model)

    # --- file ------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for curve in data["layers"].values():
            if curve["timed"] is None:  # U-Net tables stay readable by a prunekit that predates the key
                del curve["timed"]
        return {"format": TABLE_FORMAT, "version": TABLE_VERSION, **data}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "latency table") -> LatencyTable:
        if not isinstance(data, Mapping) or data.get("format") != TABLE_FORMAT:
            raise LatencyTableError(f"{where} is not a prunekit latency table (no \"format\": \"{TABLE_FORMAT}\")")
        if data.get("version") != TABLE_VERSION:
            raise LatencyTableError(f"{where} has version {data.get('version')!r}; this prunekit reads version "
                                    f"{TABLE_VERSION}: measure it again with prunekit profile")
        try:
            fields = {k: v for k, v in data.items() if k not in ("format", "version")}
            fields["layers"] = {path: LayerCurve(**curve) for path, curve in fields["layers"].items()}
            fields["blocks"] = {path: float(s) for path, s in fields["blocks"].items()}
            table = cls(**fields)
        except (KeyError, TypeError, AttributeError) as exc:
            raise LatencyTableError(f"{where} is malformed ({type(exc).__name__}: {exc})") from exc
        problems = table._shape_problems()
        if problems:
            raise LatencyTableError(f"{where} is malformed: {problems[0]}")
        return table

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise LatencyTableError(f"no latency table at {path}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LatencyTableError(f"{path} cannot be read as a latency table ({exc})") from exc
        return cls.from_json(data, where=str(path))

    def _shape_problems(self) -> list[str]:
        problems = []
        if self.interpolation not in INTERPOLATIONS:
            problems.append(f"interpolation {self.interpolation!r} is not one of {INTERPOLATIONS}")
        for path, c in self.layers.items():
            if len(c.widths) != len(c.seconds) or len(c.widths) < 2:
                problems.append(f"layer {path}: needs as many seconds as widths, at least 2")
            elif c.widths[0] != 0 or c.widths[-1] != c.channels or any(b <= a for a, b in zip(c.widths, c.widths[1:])):
                problems.append(f"layer {path}: widths must rise strictly from 0 to {c.channels}")
            elif any(not math.isfinite(s) or s < 0 for s in c.seconds):
                problems.append(f"layer {path}: seconds must be finite and >= 0")
        if not math.isfinite(self.dense_s) or self.dense_s <= 0:
            problems.append("dense_s must be > 0")
        if not math.isfinite(self.scale) or self.scale <= 0:
            problems.append("scale must be > 0")
        return problems

    def variable_s(self) -> float:
        """Seconds of every width layer at full width plus every block's glue (block minus its layers):
        the most a model can save; ``scale`` times this must not exceed ``dense_s``."""
        inner: dict[str, float] = {}
        for path, curve in self.layers.items():
            block = self.block_holding(path)
            if block is not None:
                inner[block] = inner.get(block, 0.0) + curve.seconds[-1]
        glue = sum(max(0.0, seconds - inner.get(path, 0.0)) for path, seconds in self.blocks.items())
        return sum(curve.seconds[-1] for curve in self.layers.values()) + glue

    def block_holding(self, layer_path: str) -> str | None:
        """The timed block a width layer lies in (None: it is a block of its own, or in none)."""
        return next((b for b in self.blocks if layer_path.startswith(b + ".")), None)

    # --- what it fits ------------------------------------------------------------------------------
    def describe(self) -> str:
        return (f"{self.device_name or self.device}, {self.dtype}, batch {self.batch}, "
                f"{self.height}x{self.width} latent, {self.text_len} tokens")

    def mismatch(self, model: Any, *, height: int, width: int, text_len: int) -> str | None:
        """Why this table does not describe ``model`` (a stock denoiser) at this input size (None: it does)."""
        config: Any = model.config
        if config_hash(config) != self.unet_config_hash:
            what = "U-Net" if "UNet" in type(model).__name__ else "denoiser"
            return (f"it was measured for another {what} ({self.unet_class}, config hash {self.unet_config_hash}; "
                    f"this model's {type(model).__name__}, {config_hash(config)})")
        if (self.height, self.width, self.text_len) != (height, width, text_len):
            return (f"it was measured at a {self.height}x{self.width} latent with {self.text_len} tokens, "
                    f"this run uses {height}x{width} with {text_len}")
        return None
