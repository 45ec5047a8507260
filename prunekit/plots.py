"""Small PNG charts drawn with Pillow: line, bar, heatmap and image grids.

Reports must be self-contained and the project avoids a plotting dependency, so these cover exactly
what a run report needs. Every function returns a ``PIL.Image.Image``; :func:`png_bytes` and
:func:`data_uri` turn one into bytes or an ``<img src=...>`` value.

    img = line_chart({"loss": [(1, 0.9), (2, 0.7)]}, title="prune", xlabel="step", log_y=True)
    img.save("loss.png")
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

Color = tuple[int, int, int]

# Colour-blind-friendly categorical palette (Okabe-Ito, then a few extras).
PALETTE: tuple[Color, ...] = (
    (0, 114, 178), (230, 159, 0), (0, 158, 115), (213, 94, 0), (204, 121, 167), (86, 180, 233),
    (240, 228, 66), (0, 0, 0), (120, 120, 120), (153, 79, 0), (102, 51, 153), (0, 102, 102),
)
BACKGROUND: Color = (255, 255, 255)
INK: Color = (40, 40, 40)
GRID: Color = (228, 228, 228)


def _font(size: int) -> Any:
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _text_size(draw: Any, text: str, font: Any) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1e4 or magnitude < 1e-3:
        return f"{value:.1e}"
    return f"{value:.4g}"


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick positions covering [lo, hi] (steps of 1, 2 or 5 times a power of ten)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(lo / step) * step
    ticks, value = [], first
    while value <= hi + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


class _Axes:
    """Maps data coordinates into a plot rectangle; draws the frame, grid and tick labels."""

    def __init__(self, image: Any, box: tuple[int, int, int, int], xlim: tuple[float, float],
                 ylim: tuple[float, float], *, log_y: bool = False) -> None:
        from PIL import ImageDraw

        self.draw = ImageDraw.Draw(image)
        self.box, self.log_y = box, log_y
        self.x0, self.x1 = xlim
        self.y0, self.y1 = (math.log10(ylim[0]), math.log10(ylim[1])) if log_y else ylim
        if self.x1 == self.x0:
            self.x1 = self.x0 + 1
        if self.y1 == self.y0:
            self.y1 = self.y0 + 1

    def px(self, x: float, y: float) -> tuple[float, float]:
        left, top, right, bottom = self.box
        if self.log_y:
            y = math.log10(max(y, 10**self.y0))
        return (left + (x - self.x0) / (self.x1 - self.x0) * (right - left),
                bottom - (y - self.y0) / (self.y1 - self.y0) * (bottom - top))

    def frame(self, xticks: Sequence[float] | None, font: Any) -> None:
        left, top, right, bottom = self.box
        if self.log_y:
            yticks = [10.0**k for k in range(math.floor(self.y0), math.ceil(self.y1) + 1)]
        else:
            yticks = nice_ticks(self.y0, self.y1)
        for y in yticks:
            _, py = self.px(self.x0, y)
            if top - 1 <= py <= bottom + 1:
                self.draw.line([(left, py), (right, py)], fill=GRID)
                label = _fmt(y)
                w, h = _text_size(self.draw, label, font)
                self.draw.text((left - w - 6, py - h / 2 - 2), label, fill=INK, font=font)
        for x in xticks or []:
            px, _ = self.px(x, 10**self.y0 if self.log_y else self.y0)
            if left - 1 <= px <= right + 1:
                self.draw.line([(px, bottom), (px, bottom + 4)], fill=INK)
                label = _fmt(x)
                w, _ = _text_size(self.draw, label, font)
                self.draw.text((px - w / 2, bottom + 6), label, fill=INK, font=font)
        self.draw.rectangle(self.box, outline=INK)


def _canvas(size: tuple[int, int], title: str) -> tuple[Any, Any, int]:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(image)
    top = 8
    if title:
        font = _font(16)
        w, h = _text_size(draw, title, font)
        draw.text(((size[0] - w) / 2, top), title, fill=INK, font=font)
        top += h + 12
    return image, draw, top


def _legend(draw: Any, names: Sequence[str], colors: Sequence[Color], x: int, y: int, font: Any) -> None:
    for name, color in zip(names, colors):
        draw.rectangle([x, y + 3, x + 12, y + 13], fill=color)
        draw.text((x + 18, y), name, fill=INK, font=font)
        y += 18


def _axis_labels(image: Any, draw: Any, box: tuple[int, int, int, int], xlabel: str, ylabel: str, font: Any) -> None:
    from PIL import Image, ImageDraw

    left, top, right, bottom = box
    if xlabel:
        w, _ = _text_size(draw, xlabel, font)
        draw.text(((left + right - w) / 2, bottom + 24), xlabel, fill=INK, font=font)
    if ylabel:
        w, h = _text_size(draw, ylabel, font)
        label = Image.new("RGB", (w + 4, h + 6), BACKGROUND)
        ImageDraw.Draw(label).text((2, 0), ylabel, fill=INK, font=font)
        rotated = label.rotate(90, expand=True)
        image.paste(rotated, (4, int((top + bottom - rotated.height) / 2)))


def line_chart(series: Mapping[str, Sequence[tuple[float, float]]], *, title: str = "", xlabel: str = "",
               ylabel: str = "", size: tuple[int, int] = (720, 380), log_y: bool = False,
               hlines: Mapping[str, float] | None = None, vlines: Mapping[str, float] | None = None) -> Any:
    """One line per named series of (x, y) points; ``hlines`` adds dashed horizontal reference lines,
    ``vlines`` labelled vertical markers (e.g. where a training phase starts)."""
    points = [(float(x), float(y)) for pts in series.values() for x, y in pts if math.isfinite(y)]
    refs = {k: float(v) for k, v in (hlines or {}).items()}
    image, draw, top = _canvas(size, title)
    font = _font(12)
    names = list(series) + list(refs)
    legend_w = max((_text_size(draw, n, font)[0] for n in names), default=0) + 30 if len(names) > 1 or refs else 0
    box = (70, top + 4, size[0] - 16 - legend_w, size[1] - (46 if xlabel else 30))
    if not points:
        draw.text((box[0] + 10, box[1] + 10), "no data", fill=INK, font=font)
        return image
    xs, ys = [p[0] for p in points], [p[1] for p in points] + list(refs.values())
    if log_y:
        ys = [y for y in ys if y > 0] or [1.0]
    lo, hi = min(ys), max(ys)
    if log_y:
        ylim = (10 ** math.floor(math.log10(lo)), 10 ** math.ceil(math.log10(hi) + 1e-12))
    else:
        pad = (hi - lo) * 0.05 or abs(hi) * 0.05 or 1.0
        ylim = (lo - pad, hi + pad)
    axes = _Axes(image, box, (min(xs), max(xs)), ylim, log_y=log_y)
    xticks = nice_ticks(min(xs), max(xs))
    if all(float(x).is_integer() for x in xs):  # steps: no fractional ticks
        xticks = [t for t in xticks if float(t).is_integer()] or [min(xs), max(xs)]
    axes.frame(xticks, font)
    for label, x in (vlines or {}).items():
        px, _ = axes.px(float(x), ylim[0])
        if box[0] <= px <= box[2]:
            for y in range(box[1], box[3], 8):
                draw.line([(px, y), (px, min(y + 4, box[3]))], fill=INK)
            draw.text((px + 4, box[1] + 2), label, fill=INK, font=font)
    colors = [PALETTE[i % len(PALETTE)] for i in range(len(names))]
    for pts, color in zip(series.values(), colors):
        line = [axes.px(float(x), float(y)) for x, y in pts if math.isfinite(float(y)) and (not log_y or y > 0)]
        if len(line) > 1:
            draw.line(line, fill=color, width=2)
        if len(line) <= 40:  # few points (a sweep, a short run): mark each one
            for cx, cy in line:
                draw.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=color)
    for value, color in zip(refs.values(), colors[len(series):]):
        _, py = axes.px(axes.x0, value)
        for x in range(box[0], box[2], 10):
            draw.line([(x, py), (min(x + 5, box[2]), py)], fill=color, width=2)
    _axis_labels(image, draw, box, xlabel, ylabel, font)
    if legend_w:
        _legend(draw, names, colors, box[2] + 10, box[1], font)
    return image


def bar_chart(categories: Sequence[str], series: Mapping[str, Sequence[float]], *, title: str = "",
              ylabel: str = "", size: tuple[int, int] | None = None, ylim: tuple[float, float] | None = None,
              annotate: bool = True) -> Any:
    """Grouped bars: one group per category, one bar per named series, values printed on top."""
    names = list(series)
    n_groups, n_bars = len(categories), max(1, len(names))
    from PIL import Image, ImageDraw

    title_w = _text_size(ImageDraw.Draw(Image.new("RGB", (1, 1))), title, _font(16))[0] + 40 if title else 0
    width = size[0] if size else max(420, title_w, 90 + n_groups * (14 + 26 * n_bars) + (140 if n_bars > 1 else 0))
    height = size[1] if size else 360
    image, draw, top = _canvas((width, height), title)
    font, small = _font(12), _font(10)
    legend_w = max(_text_size(draw, n, font)[0] for n in names) + 30 if n_bars > 1 else 0
    box = (70, top + 10, width - 16 - legend_w, height - 40)
    values = [float(v) for vals in series.values() for v in vals]
    if ylim is None:
        hi = max(values + [0.0])
        lo = min(values + [0.0])
        ylim = (lo, hi * 1.12 if hi > 0 else 1.0)
    axes = _Axes(image, box, (0.0, float(max(1, n_groups))), ylim)
    axes.frame(None, font)
    colors = [PALETTE[i % len(PALETTE)] for i in range(n_bars)]
    group_w = (box[2] - box[0]) / max(1, n_groups)
    bar_w = group_w * 0.8 / n_bars
    for g, category in enumerate(categories):
        for b, (name, color) in enumerate(zip(names, colors)):
            value = float(series[name][g])
            x_left = box[0] + g * group_w + group_w * 0.1 + b * bar_w
            _, y_top = axes.px(0, value)
            _, y_zero = axes.px(0, max(ylim[0], 0.0))
            draw.rectangle([x_left, min(y_top, y_zero), x_left + bar_w - 2, max(y_top, y_zero)], fill=color)
            if annotate:
                label = _fmt(value) if abs(value) >= 10 else f"{value:.2f}"
                w, h = _text_size(draw, label, small)
                if w <= bar_w + 8:
                    draw.text((x_left + (bar_w - 2 - w) / 2, min(y_top, y_zero) - h - 4), label, fill=INK, font=small)
        w, _ = _text_size(draw, category, font)
        draw.text((box[0] + g * group_w + (group_w - w) / 2, box[3] + 6), category, fill=INK, font=font)
    _axis_labels(image, draw, box, "", ylabel, font)
    if n_bars > 1:
        _legend(draw, names, colors, box[2] + 10, box[1], font)
    return image


def color_scale(value: float, vmin: float = 0.0, vmax: float = 1.0) -> Color:
    """White (vmin) to deep blue (vmax), like the intensity scale of the paper's Fig. 9/10."""
    t = 0.0 if vmax == vmin else min(1.0, max(0.0, (value - vmin) / (vmax - vmin)))
    low, high = (247, 251, 255), (8, 48, 107)
    return tuple(round(a + (b - a) * t) for a, b in zip(low, high))  # type: ignore[return-value]


def heatmap(values: Sequence[Sequence[float | None]], *, row_labels: Sequence[str], col_labels: Sequence[str],
            title: str = "", vmin: float = 0.0, vmax: float = 1.0, annotate: bool = True,
            cell: tuple[int, int] = (34, 24), col_groups: Sequence[tuple[str, int, int]] = ()) -> Any:
    """A matrix of coloured cells (``None`` = grey, not applicable) with the value printed in each.

    ``col_groups`` are ``(label, first_column, last_column)`` spans drawn as brackets above the
    columns (e.g. the down / mid / up halves of a U-Net).
    """
    from PIL import Image, ImageDraw

    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    font, small = _font(12), _font(10)
    row_w = max((_text_size(probe, r, font)[0] for r in row_labels), default=0) + 12
    col_h = max((_text_size(probe, c, small)[0] for c in col_labels), default=0) + 10
    group_h = 22 if col_groups else 0
    cw, ch = cell
    width = row_w + cw * len(col_labels) + 20
    title_h = 34 if title else 8
    height = title_h + group_h + ch * len(row_labels) + col_h + 44
    image, draw, top = _canvas((max(width, 260), height), title)
    x0, y0 = row_w, top + group_h
    for label, first, last in col_groups:
        xa, xb = x0 + first * cw + 2, x0 + (last + 1) * cw - 2
        draw.line([(xa, y0 - 6), (xb, y0 - 6)], fill=INK)
        draw.line([(xa, y0 - 6), (xa, y0 - 2)], fill=INK)
        draw.line([(xb, y0 - 6), (xb, y0 - 2)], fill=INK)
        w, h = _text_size(draw, label, small)
        draw.text(((xa + xb - w) / 2, y0 - 8 - h - 4), label, fill=INK, font=small)
    for r, (label, row) in enumerate(zip(row_labels, values)):
        y = y0 + r * ch
        w, h = _text_size(draw, label, font)
        draw.text((x0 - w - 8, y + (ch - h) / 2 - 2), label, fill=INK, font=font)
        for c, value in enumerate(row):
            x = x0 + c * cw
            fill = (200, 200, 200) if value is None else color_scale(float(value), vmin, vmax)
            draw.rectangle([x, y, x + cw - 1, y + ch - 1], fill=fill, outline=BACKGROUND)
            if annotate and value is not None:
                v = float(value)
                # Two decimals without the leading zero fit a cell; exact 0 and 1 stay short.
                text = "0" if v == 0 else "1" if v == 1 else f"{v:.2f}".lstrip("0") if 0 < v < 1 else f"{v:.1f}"
                tw, th = _text_size(draw, text, small)
                ink = BACKGROUND if sum(fill) < 380 else INK
                draw.text((x + (cw - tw) / 2, y + (ch - th) / 2 - 2), text, fill=ink, font=small)
    y_labels = y0 + ch * len(row_labels) + 4
    for c, label in enumerate(col_labels):
        w, h = _text_size(draw, label, small)
        tile = Image.new("RGB", (w + 4, h + 6), BACKGROUND)
        ImageDraw.Draw(tile).text((2, 0), label, fill=INK, font=small)
        rotated = tile.rotate(90, expand=True)
        image.paste(rotated, (int(x0 + c * cw + (cw - rotated.width) / 2), int(y_labels)))
    # colour bar
    bar_y = y_labels + col_h + 8
    for i in range(120):
        draw.line([(x0 + i, bar_y), (x0 + i, bar_y + 10)], fill=color_scale(vmin + (vmax - vmin) * i / 119, vmin, vmax))
    draw.text((x0 - _text_size(draw, _fmt(vmin), small)[0] - 4, bar_y - 1), _fmt(vmin), fill=INK, font=small)
    draw.text((x0 + 124, bar_y - 1), _fmt(vmax), fill=INK, font=small)
    return image


def image_grid(rows: Sequence[Sequence[Any]], *, row_labels: Sequence[str] | None = None, cell: int = 128,
               title: str = "") -> Any:
    """Images (PIL) in rows, each resized to ``cell`` pixels square, with a label left of each row."""
    from PIL import Image, ImageDraw

    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    font = _font(12)
    labels = list(row_labels or [""] * len(rows))
    label_w = max((_text_size(probe, t, font)[0] for t in labels), default=0) + 14
    cols = max((len(r) for r in rows), default=0)
    title_h = 34 if title else 6
    size = (max(label_w + cols * (cell + 4) + 6, 200), title_h + len(rows) * (cell + 4) + 6)
    image, draw, top = _canvas(size, title)
    for r, (label, row) in enumerate(zip(labels, rows)):
        y = top + r * (cell + 4)
        _, h = _text_size(draw, label, font)
        draw.text((6, y + (cell - h) / 2), label, fill=INK, font=font)
        for c, tile in enumerate(row):
            resample = Image.Resampling.NEAREST if tile.width < cell else Image.Resampling.BICUBIC
            image.paste(tile.convert("RGB").resize((cell, cell), resample), (label_w + c * (cell + 4), y))
    return image


def png_bytes(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def data_uri(image_or_png: Any) -> str:
    """``data:image/png;base64,...`` for an image or PNG bytes (reports embed every image)."""
    data = image_or_png if isinstance(image_or_png, (bytes, bytearray)) else png_bytes(image_or_png)
    return "data:image/png;base64," + base64.b64encode(bytes(data)).decode("ascii")
