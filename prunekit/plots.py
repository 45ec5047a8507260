"""Charts for reports, drawn with matplotlib: line, bar, interval (forest), heatmap and image grids.

Every function returns a :class:`Chart`, one matplotlib figure that renders itself as PNG or SVG:

    chart = line_chart({"loss": [(1, 0.9), (2, 0.7)]}, title="prune", xlabel="step")
    chart.save("loss.png")                  # the format follows the suffix (PNG otherwise)
    chart.write("report", "loss")           # report/loss.png and report/loss.svg
    data_uri(chart)                         # data:image/png;base64,... for an <img src=...>

Conventions: the Okabe-Ito colour-blind-safe palette (:data:`PALETTE`; past eight series the line
style changes too), log axes where positive values span decades (``log_y=None`` decides), noisy
training curves smoothed with the raw curve kept faint behind (``smooth``, :func:`smooth_curve`), error bars where a value
comes with an interval. Figures are drawn with the non-interactive Agg canvas (never pyplot, so no
display, no global figure list), and matplotlib is imported inside the functions: importing
prunekit stays light.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Okabe & Ito (2008), the palette designed to stay distinct under every common colour-vision
# deficiency; yellow last (weak on white).
PALETTE: tuple[str, ...] = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#F0E442")
LINESTYLES: tuple[str, ...] = ("-", "--", ":", "-.")
GREY = "#6b6b6b"
NONE_CELL = "#d0d0d0"
# PNGs are rendered at SCALE x the nominal pixel size (crisp on high-density screens); the report
# shows them at the nominal size.
SCALE = 2
DECADES = 1.5  # a positive series whose max / min reaches 10**DECADES gets a log axis by default

_RC = {
    "font.family": "DejaVu Sans",
    "font.size": 9.0,
    "axes.titlesize": 11.0,
    "axes.titleweight": "bold",
    "axes.labelsize": 9.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.edgecolor": "#444444",
    "axes.grid": True,
    "axes.axisbelow": True,
    "grid.color": "#e3e3e3",
    "grid.linewidth": 0.8,
    "legend.fontsize": 8.5,
    "legend.frameon": False,
    "svg.fonttype": "none",  # text stays text in the SVG (searchable, editable)
    "svg.hashsalt": "prunekit",  # stable element ids: the same chart gives the same SVG
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
}


@contextmanager
def _style() -> Iterator[None]:
    import matplotlib

    with matplotlib.rc_context(_RC):  # type: ignore[arg-type]  # matplotlib types keys as a Literal
        yield


def color(i: int) -> str:
    """The ``i``-th series colour."""
    return PALETTE[i % len(PALETTE)]


def linestyle(i: int) -> str:
    """Solid for the first eight series, then another dash pattern per round of the palette."""
    return LINESTYLES[(i // len(PALETTE)) % len(LINESTYLES)]


class Chart:
    """One drawn figure. ``png()`` / ``svg()``: its bytes (rendered once); ``save(path)``: written in
    the format of the suffix (``.svg``, else PNG); ``write(folder, stem)``: both, next to each other;
    ``size``: the PNG's pixels, ``display_size``: the nominal size a page shows it at; ``vector``:
    whether an SVG of it is worth writing (not for a grid of images)."""

    def __init__(self, figure: Any, *, scale: int = SCALE, vector: bool = True) -> None:
        self.figure = figure
        self.scale = scale
        self.vector = vector  # False: raster content (an image grid), whose SVG would only wrap the pixels
        self._png: bytes | None = None
        self._svg: bytes | None = None

    def _render(self, fmt: str, **kwargs: Any) -> bytes:
        buffer = io.BytesIO()
        with _style():
            self.figure.savefig(buffer, format=fmt, **kwargs)
        return buffer.getvalue()

    def png(self) -> bytes:
        if self._png is None:
            self._png = self._render("png", dpi=100 * self.scale, metadata={"Software": None})
        return self._png

    def svg(self) -> bytes:
        if self._svg is None:
            self._svg = self._render("svg", metadata={"Date": None, "Creator": None})
        return self._svg

    @property
    def display_size(self) -> tuple[int, int]:
        w, h = self.figure.get_size_inches()
        return round(w * 100), round(h * 100)

    @property
    def size(self) -> tuple[int, int]:
        w, h = self.display_size
        return w * self.scale, h * self.scale

    @property
    def width(self) -> int:
        return self.size[0]

    @property
    def height(self) -> int:
        return self.size[1]

    def save(self, path: str | Path, format: str | None = None) -> Path:
        path = Path(path)
        fmt = (format or path.suffix.lstrip(".") or "png").lower()
        path.write_bytes(self.svg() if fmt == "svg" else self.png())
        return path

    def write(self, folder: str | Path, stem: str) -> tuple[Path, Path]:
        """``folder/stem.png`` and ``folder/stem.svg``."""
        folder = Path(folder)
        return self.save(folder / f"{stem}.png"), self.save(folder / f"{stem}.svg")

    def to_image(self) -> Any:
        """The PNG as a PIL image."""
        from PIL import Image

        return Image.open(io.BytesIO(self.png())).convert("RGB")


def _figure(width_px: float, height_px: float, **subplots: Any) -> tuple[Any, Any]:
    """A constrained-layout figure of nominal size (pixels at 100 dpi) on the Agg canvas, and its axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(max(1.0, width_px / 100), max(1.0, height_px / 100)), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(**subplots) if subplots else figure.add_subplot()
    return figure, axes


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1e4 or magnitude < 1e-3:
        return f"{value:.1e}"
    return f"{value:.3g}"


def spans_decades(values: Sequence[float], decades: float = DECADES) -> bool:
    """True when every value is positive and they span at least ``decades`` powers of ten (a log axis
    then shows them better)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite or min(finite) <= 0:
        return False
    return math.log10(max(finite) / min(finite)) >= decades


def smoothing_window(n: int) -> int:
    """The window (points, odd) :func:`line_chart` smooths ``n`` points over with ``smooth=True``:
    about 4 % of the curve, at least 3; 1 (no smoothing) below 12 points."""
    if n < 12:
        return 1
    window = max(3, round(n / 25))
    return window + 1 - window % 2


def smooth_curve(values: Sequence[float], window: int) -> list[float]:
    """Centred moving average over ``window`` points (shrunk at the ends): unlike an exponential
    average it does not lag behind a falling loss. ``window`` 1 returns the values unchanged."""
    if window < 1:
        raise ValueError(f"smoothing window {window} is not a positive number of points")
    values = [float(v) for v in values]
    half = window // 2
    sums = [0.0]
    for v in values:
        sums.append(sums[-1] + v)
    out = []
    for i in range(len(values)):
        lo, hi = max(0, i - half), min(len(values), i + half + 1)
        out.append((sums[hi] - sums[lo]) / (hi - lo))
    return out


def _legend(axes: Any, count: int) -> None:
    """Inside the axes for two entries; beside them for more, where it cannot hide a curve."""
    if count > 2:
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), ncols=1 if count <= 16 else 2)
    elif count > 1:
        axes.legend(loc="best")


def wrap_title(text: str, width_px: float, points: float = 11.0) -> str:
    """``text`` broken into lines that fit ``width_px`` at a bold font of ``points`` points."""
    import textwrap

    per_line = max(20, int(width_px / (points * 0.85)))  # a bold character: about 0.6 em, 1 pt = 1.39 px
    return "\n".join(textwrap.wrap(text, per_line)) if len(text) > per_line else text


def line_chart(series: Mapping[str, Sequence[tuple[float, float]]], *, title: str = "", xlabel: str = "",
               ylabel: str = "", size: tuple[int, int] = (720, 380), log_y: bool | None = None, log_x: bool = False,
               hlines: Mapping[str, float] | None = None, vlines: Mapping[str, float] | None = None,
               smooth: bool | int = False,
               errors: Mapping[str, Sequence[tuple[float, float] | None]] | None = None) -> Chart:
    """One line per named series of (x, y) points.

    ``log_y``: None = a log axis when the positive values span :data:`DECADES` decades. ``smooth``:
    True = a centred moving average over a window that suits the curve's length
    (:func:`smoothing_window`), an int = that window; the raw curve stays faint behind the smoothed one. ``errors``: per series, a (low, high)
    interval per point (None: none), drawn as error bars. ``hlines``: dashed horizontal references;
    ``vlines``: labelled vertical markers (e.g. where a training phase starts).
    """
    refs = {k: float(v) for k, v in (hlines or {}).items()}
    clean = {name: [(float(x), float(y)) for x, y in pts if y is not None and math.isfinite(float(y))]
             for name, pts in series.items()}
    ys = [y for pts in clean.values() for _, y in pts] + list(refs.values())
    if log_y is None:
        log_y = spans_decades(ys)
    with _style():
        figure, axes = _figure(*size)
        if title:
            axes.set_title(wrap_title(title, size[0] - 120))
        axes.set_xlabel(xlabel)
        axes.set_ylabel(ylabel)
        if not any(clean.values()):
            axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes, color=GREY)
            axes.set_xticks([])
            axes.set_yticks([])
            return Chart(figure)
        for i, (name, pts) in enumerate(clean.items()):
            if log_y:
                pts = [(x, y) for x, y in pts if y > 0]
            if not pts:
                continue
            xs, vs = [p[0] for p in pts], [p[1] for p in pts]
            window = smoothing_window(len(vs)) if smooth is True else int(smooth or 1)
            style = dict(color=color(i), linestyle=linestyle(i))
            if window > 1 and len(vs) > 2:
                axes.plot(xs, vs, linewidth=0.9, alpha=0.3, **style)
                axes.plot(xs, smooth_curve(vs, window), linewidth=1.8, label=name, **style)
            else:
                marker = "o" if len(vs) <= 40 else None  # few points (a sweep, a short run): mark each
                axes.plot(xs, vs, linewidth=1.8, marker=marker, markersize=4, label=name, **style)
            bars = (errors or {}).get(name)
            if bars:
                rows = [(x, y, e) for (x, y), e in zip(series[name], bars) if e is not None]
                if rows:
                    axes.errorbar([r[0] for r in rows], [r[1] for r in rows],
                                  yerr=[[r[1] - r[2][0] for r in rows], [r[2][1] - r[1] for r in rows]],
                                  fmt="none", ecolor=color(i), elinewidth=1.2, capsize=3)
        for j, (name, value) in enumerate(refs.items()):
            axes.axhline(value, color=color(len(clean) + j), linestyle="--", linewidth=1.4, label=name)
        for label, x in (vlines or {}).items():
            axes.axvline(float(x), color=GREY, linestyle=":", linewidth=1.2)
            axes.annotate(label, xy=(float(x), 1.0), xycoords=("data", "axes fraction"), xytext=(3, -3),
                          textcoords="offset points", va="top", fontsize=8, color=GREY,
                          bbox=dict(boxstyle="square,pad=0.1", facecolor="white", edgecolor="none", alpha=0.85))
        if log_y:
            axes.set_yscale("log")
        if log_x:
            axes.set_xscale("log")
        xs_all = [x for pts in clean.values() for x, _ in pts]
        if xs_all and all(float(x).is_integer() for x in xs_all):
            from matplotlib.ticker import MaxNLocator

            axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps: no fractional ticks
        _legend(axes, len(clean) + len(refs))
    return Chart(figure)


def bar_chart(categories: Sequence[str], series: Mapping[str, Sequence[float]], *, title: str = "",
              ylabel: str = "", size: tuple[int, int] | None = None, ylim: tuple[float, float] | None = None,
              annotate: bool = True, errors: Mapping[str, Sequence[tuple[float, float] | None]] | None = None,
              log_y: bool = False) -> Chart:
    """Grouped bars: one group per category, one bar per named series, the value printed on each bar.
    ``errors``: per series, a (low, high) interval per category (None: none), drawn as error bars."""
    import numpy as np

    names = list(series)
    n_groups, n_bars = len(categories), max(1, len(names))
    legend_w = 190 if n_bars > 1 else 0
    width = size[0] if size else max(420, 110 + n_groups * (24 + 30 * n_bars) + legend_w,
                                     min(900, len(title) * 9 + 90 + legend_w))
    height = size[1] if size else 340
    with _style():
        figure, axes = _figure(width, height)
        if title:
            axes.set_title(wrap_title(title, width - 80 - legend_w))
        axes.set_ylabel(ylabel)
        x = np.arange(n_groups)
        bar_w = 0.8 / n_bars
        for b, name in enumerate(names):
            values = [float(v) for v in series[name]]
            offsets = x - 0.4 + bar_w * (b + 0.5)
            bars = axes.bar(offsets, values, width=bar_w * 0.92, color=color(b), label=name)
            spans = list((errors or {}).get(name) or [None] * len(values))
            rows = [(o, v, e) for o, v, e in zip(offsets, values, spans) if e is not None]
            if rows:
                axes.errorbar([r[0] for r in rows], [r[1] for r in rows],
                              yerr=[[max(0.0, r[1] - r[2][0]) for r in rows], [max(0.0, r[2][1] - r[1]) for r in rows]],
                              fmt="none", ecolor="#222222", elinewidth=1.0, capsize=3)
            if annotate and bar_w * (width - 150) / max(1, n_groups) >= 24:
                for bar, v, e in zip(bars, values, spans):  # above the bar, or above its error bar
                    top = max(v, e[1]) if e is not None and v >= 0 else v
                    axes.annotate(f"{v:.2f}" if abs(v) < 10 else _fmt(v), (bar.get_x() + bar.get_width() / 2, top),
                                  xytext=(0, 2 if v >= 0 else -2), textcoords="offset points", ha="center",
                                  va="bottom" if v >= 0 else "top", fontsize=7.5)
        axes.set_xticks(x, list(categories))
        axes.grid(axis="x", visible=False)
        if log_y:
            axes.set_yscale("log")
        if ylim is not None:
            axes.set_ylim(*ylim)
        else:
            axes.margins(y=0.12)
        if n_bars > 1:
            axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return Chart(figure)


def interval_chart(panels: Mapping[str, Sequence[tuple[str, float, float | None, float | None]]], *,
                   title: str = "", size: tuple[int, int] | None = None,
                   colors: Mapping[str, str] | None = None) -> Chart:
    """A forest plot: one panel per metric, one row per ``(label, value, low, high)``: the value as a
    dot, its interval as a bar (``low``/``high`` None: no interval). Labels share a colour across panels."""
    labels = list(dict.fromkeys(label for rows in panels.values() for label, *_ in rows))
    palette = dict(colors or {})
    for i, label in enumerate(label for label in labels if label not in palette):
        palette[label] = color(i)
    n = max(1, len(panels))
    cols = min(n, 3)
    rows_n = math.ceil(n / cols)
    width, height = size or (max(420, 250 * cols + 80), 60 + rows_n * (40 + 22 * max(1, len(labels))))
    with _style():
        figure, grid = _figure(width, height, nrows=rows_n, ncols=cols, squeeze=False)
        if title:
            figure.suptitle(wrap_title(title, width - 40), fontweight="bold", fontsize=11)
        for k, axes in enumerate(grid.flat):
            if k >= n:
                axes.set_visible(False)
                continue
            metric, rows = list(panels.items())[k]
            axes.set_title(metric, fontsize=10, fontweight="normal")
            for label, value, lo, hi in rows:
                y = labels.index(label)
                if lo is not None and hi is not None:
                    axes.errorbar([value], [y], xerr=[[max(0.0, value - lo)], [max(0.0, hi - value)]], fmt="o",
                                  color=palette[label], elinewidth=2.0, capsize=4, markersize=5)
                else:
                    axes.plot([value], [y], "o", color=palette[label], markersize=5)
            from matplotlib.ticker import MaxNLocator

            axes.xaxis.set_major_locator(MaxNLocator(nbins=4))
            axes.set_yticks(range(len(labels)), labels if k % cols == 0 else [""] * len(labels))
            axes.set_ylim(len(labels) - 0.5, -0.5)
            axes.grid(axis="y", visible=False)
            axes.margins(x=0.15)
    return Chart(figure)


def heatmap(values: Sequence[Sequence[float | None]], *, row_labels: Sequence[str], col_labels: Sequence[str],
            title: str = "", vmin: float = 0.0, vmax: float = 1.0, annotate: bool = True,
            cell: tuple[int, int] = (34, 24), col_groups: Sequence[tuple[str, int, int]] = (),
            cmap: str = "Blues", colorbar: str = "", fmt: str | None = None) -> Chart:
    """A matrix of coloured cells (``None`` = grey, not applicable), the value printed in each.

    ``col_groups`` are ``(label, first_column, last_column)`` spans drawn as brackets above the
    columns (e.g. the down / mid / up halves of a U-Net). ``cmap``: a sequential colour map (single-hue
    Blues by default: readable under colour-vision deficiencies and in grey). ``fmt``: a format for the
    printed values (default: two decimals without the leading zero, exact 0 and 1 short).
    """
    import numpy as np

    data = np.array([[np.nan if v is None else float(v) for v in row] for row in values], dtype=float)
    n_rows, n_cols = data.shape if data.size else (len(row_labels), len(col_labels))
    cw, ch = cell
    label_w = 8 * max((len(r) for r in row_labels), default=0) + 30
    col_h = 7 * max((len(c) for c in col_labels), default=0) + 20
    width = max(360, label_w + cw * n_cols + 110)
    height = 70 + (34 if title else 0) + (26 if col_groups else 0) + ch * n_rows + col_h
    with _style():
        import matplotlib

        figure, axes = _figure(width, height)
        colormap = matplotlib.colormaps[cmap].with_extremes(bad=NONE_CELL)
        image = axes.imshow(np.ma.masked_invalid(data), cmap=colormap, vmin=vmin, vmax=vmax, aspect="auto",
                            interpolation="nearest")
        axes.grid(False)
        for spine in axes.spines.values():
            spine.set_visible(False)
        axes.set_xticks(range(n_cols), list(col_labels), rotation=90, fontsize=8)
        axes.set_yticks(range(n_rows), list(row_labels))
        axes.tick_params(length=0)
        axes.set_xticks(np.arange(-0.5, n_cols, 1), minor=True)
        axes.set_yticks(np.arange(-0.5, n_rows, 1), minor=True)
        axes.grid(which="minor", color="white", linewidth=1.0)
        axes.tick_params(which="minor", length=0)
        if annotate:
            for r in range(n_rows):
                for c in range(n_cols):
                    v = data[r, c]
                    if np.isnan(v):
                        continue
                    if fmt is not None:
                        text = format(v, fmt)
                    else:
                        text = "0" if v == 0 else "1" if v == 1 else f"{v:.2f}".lstrip("0") if 0 < v < 1 else f"{v:.1f}"
                    shade = colormap((v - vmin) / (vmax - vmin) if vmax != vmin else 0.0)
                    luminance = 0.2126 * shade[0] + 0.7152 * shade[1] + 0.0722 * shade[2]
                    axes.text(c, r, text, ha="center", va="center", fontsize=7,
                              color="white" if luminance < 0.5 else "#222222")
        for label, first, last in col_groups:
            axes.annotate("", xy=(first - 0.4, -0.65), xytext=(last + 0.4, -0.65), xycoords="data",
                          arrowprops=dict(arrowstyle="-", color="#444444", linewidth=1.0), annotation_clip=False)
            axes.text((first + last) / 2, -0.8, label, ha="center", va="bottom", fontsize=8.5, clip_on=False)
        if title:
            axes.set_title(wrap_title(title, width - label_w - 110), pad=34 if col_groups else 6)
        bar = figure.colorbar(image, ax=axes, shrink=min(1.0, max(0.4, 6 / max(1, n_rows))), pad=0.02, aspect=15)
        bar.outline.set_visible(False)
        if colorbar:
            bar.set_label(colorbar)
    return Chart(figure)


def image_grid(rows: Sequence[Sequence[Any]], *, row_labels: Sequence[str] | None = None, cell: int = 128,
               title: str = "", col_labels: Sequence[str] | None = None) -> Chart:
    """Images (PIL or HxWx3 arrays) in rows, each shown ``cell`` pixels square (pixels kept sharp), a
    label left of each row and, optionally, above each column."""
    import numpy as np

    n_rows = max(1, len(rows))
    n_cols = max((len(r) for r in rows), default=1) or 1
    labels = list(row_labels or [""] * len(rows))
    label_w = 8 * max((len(t) for t in labels), default=0) + 20
    width = label_w + n_cols * (cell + 8) + 20
    height = (36 if title else 10) + (22 if col_labels else 0) + n_rows * (cell + 8)
    with _style():
        figure, grid = _figure(width, height, nrows=n_rows, ncols=n_cols, squeeze=False)
        if title:
            figure.suptitle(wrap_title(title, width - 40), fontweight="bold", fontsize=11)
        for r in range(n_rows):
            for c in range(n_cols):
                axes = grid[r][c]
                axes.set_xticks([])
                axes.set_yticks([])
                axes.grid(False)
                for spine in axes.spines.values():
                    spine.set_visible(False)
                row = rows[r] if r < len(rows) else []
                if c < len(row):
                    axes.imshow(np.asarray(row[c].convert("RGB") if hasattr(row[c], "convert") else row[c]),
                                interpolation="nearest")
                if c == 0 and r < len(labels) and labels[r]:
                    axes.set_ylabel(labels[r], rotation=0, ha="right", va="center", fontsize=9)
                if r == 0 and col_labels and c < len(col_labels):
                    axes.set_title(col_labels[c], fontsize=8.5, fontweight="normal")
    return Chart(figure, vector=False)


def png_bytes(image: Any) -> bytes:
    """PNG bytes of a :class:`Chart` or a PIL image."""
    if isinstance(image, Chart):
        return image.png()
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def data_uri(image_or_png: Any) -> str:
    """``data:image/png;base64,...`` of a :class:`Chart`, a PIL image or PNG bytes (reports embed
    every image)."""
    data = image_or_png if isinstance(image_or_png, (bytes, bytearray)) else png_bytes(image_or_png)
    return "data:image/png;base64," + base64.b64encode(bytes(data)).decode("ascii")
