"""Report sections: the core's, in order, and those plugins add through the
``prunekit_report_sections`` hook (see :mod:`prunekit.hookspecs`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The core sections (HTML ids), in page order.
SECTIONS = ("summary", "metrics", "experts", "routing", "architecture", "words", "samples", "complexity")


@dataclass(eq=False)
class ReportSection:
    """A section a plugin adds to ``report.html``.

    ``id``: its HTML id and navigation link (unique in the page); ``title``: its heading (escaped);
    ``charts``: by file stem, :class:`prunekit.plots.Chart` s (written to ``report/<stem>.png`` and
    ``.svg``) or PIL images (``.png`` only), embedded in this order; ``html``: markup shown before the
    charts (inserted as is: escape what you interpolate); ``empty``: a note shown when the section has
    neither (escaped); ``after``: the section (core or plugin) it follows — an unknown id puts it at
    the end of the page.
    """

    id: str
    title: str
    charts: dict[str, Any] = field(default_factory=dict)
    html: str = ""
    empty: str = ""
    after: str = "samples"


def series(history: Sequence[Mapping[str, Any]], key: str, offset: int = 0) -> list[tuple[float, float]]:
    """``(step + offset, value)`` of ``key`` in a training history (``artifacts/<name>_history.json``)."""
    return [(h["step"] + offset, float(h[key])) for h in history if key in h and h[key] is not None]


def plugin_sections(registry: Any, run_dir: Path, data: Mapping[str, Any]) -> list[ReportSection]:
    """What every plugin's ``prunekit_report_sections(run_dir, report)`` returns, in one list."""
    from prunekit.errors import PluginError

    found: list[ReportSection] = []
    for returned in registry.hook.prunekit_report_sections(run_dir=run_dir, report=data):
        for section in returned or []:
            if not isinstance(section, ReportSection):
                raise PluginError(f"prunekit_report_sections returned {type(section).__name__}; "
                                  f"expected prunekit.report.ReportSection")
            found.append(section)
    ids = [*SECTIONS, *(s.id for s in found)]
    if len(set(ids)) != len(ids):
        twice = sorted({i for i in ids if ids.count(i) > 1})
        raise PluginError(f"report sections with the same id: {', '.join(twice)}")
    return found


def page_order(extra: Sequence[ReportSection]) -> list[str | ReportSection]:
    """The core section ids with each plugin section placed after the one it names (sections that
    follow the same one keep the hook's order; one that follows nothing on the page goes last)."""
    order: list[str | ReportSection] = list(SECTIONS)
    rest = list(extra)
    placed = True
    while rest and placed:
        placed = False
        for section in list(rest):
            ids = [s if isinstance(s, str) else s.id for s in order]
            if section.after not in ids:
                continue
            at = ids.index(section.after) + 1
            while at < len(order):
                here = order[at]
                if not (isinstance(here, ReportSection) and here.after == section.after):
                    break
                at += 1
            order.insert(at, section)
            rest = [s for s in rest if s is not section]
            placed = True
    return order + rest
