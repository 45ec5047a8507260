"""The report page: one self-contained HTML file (charts embedded as PNG data URIs, each linked to its
SVG), rendered from the Jinja2 templates in ``prunekit/report/templates/`` (``report.html``, one
``section_ID.html`` per core section, ``section_plugin.html``) with autoescaping on. The
core sections come in order with the sections plugins add
(:class:`~prunekit.report.sections.ReportSection`) placed among them.

This module turns the report's data into plain rows of text (:func:`sections_context`); the
templates lay them out. Every value a template prints is escaped, except a plugin section's ``html``,
which is markup by contract.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from prunekit.report.sections import ReportSection, page_order

TEMPLATE = "report.html"

# Navigation labels and headings of the core sections.
TITLES = {
    "summary": ("summary", "Summary"),
    "metrics": ("metrics", "Metrics: teacher vs pruned"),
    "experts": ("experts", "Experts: budget and share of prompts"),
    "routing": ("routing", "Which expert gets which kind of prompt"),
    "architecture": ("architecture", "Block-level retained MACs (paper Fig. 9/10)"),
    "words": ("words", "Most frequent words per expert (paper Tables 2/4)"),
    "samples": ("samples", "Samples: teacher vs expert, same prompt and seed"),
    "complexity": ("complexity", "Do harder prompts go to bigger experts?"),
}


@dataclass
class Picture:
    """An image of the page: ``src`` (a data URI), ``alt``, the ``svg`` file it was drawn to (a path
    relative to the page, or None) and the size it is shown at (None: its own)."""

    src: str
    alt: str = ""
    svg: str | None = None
    width: int | None = None
    height: int | None = None


@lru_cache(maxsize=1)
def environment() -> Any:
    """The Jinja2 environment of the report templates (package data; autoescaping on)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("prunekit.report", "templates"), autoescape=True,
                             trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True)
    env.filters["ci"] = format_interval
    return env


def _fmt(key: str, value: Any) -> str:
    key = key.removesuffix(" (eval)")
    if value is None:
        return "–"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    if key.startswith("macs") and "ratio" not in key and "resolution" not in key:
        return f"{value / 1e9:.3f} G"
    if key.endswith("_s"):
        return f"{value:.4g} s"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def format_interval(summary: Mapping[str, Any] | None, signed: bool = False) -> str:
    """``[low, high]`` of a bootstrap summary (``–`` without one); ``signed``: with the sign (differences)."""
    if not summary or summary.get("low") is None or summary.get("high") is None:
        return "–"
    spec = "+.4g" if signed else ".4g"
    return f"[{format(summary['low'], spec)}, {format(summary['high'], spec)}]".replace("-", "−")


_PER_EXPERT = re.compile(r"^(.*)_expert_(\d+)(.*)$")
_TEACHER = re.compile(r"^(.*)_teacher(.*)$")


def split_metrics(metrics: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[int, dict[str, Any]]]:
    """(teacher, mixture, per expert) views of a run's evaluated metrics for display.

    Complexity metrics of a mixture also report the teacher (``macs_teacher``, ``latency_teacher_s``)
    and each expert (``macs_expert_03``): those move to the teacher column and the experts table.
    """
    teacher = dict((metrics.get("teacher") or {}).get("metrics", {}))
    mixture: dict[str, Any] = {}
    per_expert: dict[int, dict[str, Any]] = {}
    for key, value in ((metrics.get("mixture") or {}).get("metrics", {})).items():
        if m := _PER_EXPERT.match(key):
            per_expert.setdefault(int(m.group(2)), {})[m.group(1) + m.group(3)] = value
        elif m := _TEACHER.match(key):
            teacher[m.group(1) + m.group(2)] = value
        else:
            mixture[key] = value
    return teacher, mixture, per_expert


_SETTINGS = ("_resolution", "_steps", "_device")  # reported alongside the values; a ratio means nothing


def _ratio(a: Any, b: Any, key: str = "") -> str:
    if key.endswith(_SETTINGS):
        return ""
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
    return f"{b / a:.3f}" if numbers and a and math.isfinite(a) and math.isfinite(b) else "–"


def _label(data: Mapping[str, Any]) -> str:
    """What produced the run, for headings: its recipe's method name, upper-cased (``APTP``)."""
    return str(data.get("method") or "prunekit").upper()


# -- the core sections' contexts -------------------------------------------------------------------------


def _summary(data: Mapping[str, Any], images: Mapping[str, Picture]) -> dict[str, Any]:
    manifest = data["manifest"]
    rows = [
        ("recipe", data.get("title") or data["run"]),
        ("run directory", data["run"]),
        ("stages", ", ".join(data.get("stages", []))),
        ("experts", str(len(manifest["experts"]))),
        ("MAC budget (target ratio)", _fmt("", manifest.get("budget"))),
        ("dense U-Net MACs (training latent)", _fmt("macs", manifest.get("dense_macs"))),
        ("latent size / text tokens", f"{manifest.get('latent_size')} / {manifest.get('text_len')}"),
        ("routed mean MACs ratio (training prompts)", _fmt("", manifest.get("mean_macs_ratio"))),
        ("training prompts", str(sum(data["counts"]))),
    ]
    return {"rows": rows, "recipe": data["recipe"]}


def _metrics(data: Mapping[str, Any], images: Mapping[str, Picture]) -> dict[str, Any]:
    metrics = data["metrics"]
    teacher, mixture, _ = split_metrics(metrics)
    if not (teacher or mixture):
        return {"evaluated": False}
    intervals = data.get("intervals") or {}
    by_key = intervals.get("metrics", {})
    role = intervals.get("role", "mixture")
    keys = list(dict.fromkeys([*teacher, *mixture]))
    rows = []
    for k in keys:
        entry = by_key.get(k, {})
        difference = entry.get("difference")
        rows.append({
            "metric": k, "teacher": _fmt(k, teacher.get(k)),
            "teacher_ci": format_interval(entry["teacher"]) if "teacher" in entry else "",
            "pruned": _fmt(k, mixture.get(k)), "pruned_ci": format_interval(entry[role]) if role in entry else "",
            "ratio": _ratio(teacher.get(k), mixture.get(k), k),
            "difference": f"{difference['mean']:+.4g}".replace("-", "−") if difference else "–",
            "difference_ci": format_interval(difference, signed=True) if difference else "",
        })
    settings = (metrics.get("evaluation") or {}).get("settings", {})
    gen = (metrics.get("mixture") or {}).get("generation", {})
    return {
        "evaluated": True, "rows": rows, "pruned_label": f"{_label(data)} mixture", "intervals": bool(by_key),
        "level": f"{intervals.get('level', 0.95):.0%}", "resamples": intervals.get("resamples"),
        "seed": intervals.get("seed"), "with_intervals": sorted(by_key),
        "prompts": (metrics.get("evaluation") or {}).get("prompts", "?"), "scheduler": str(settings.get("scheduler")),
        "steps": settings.get("steps"), "guidance": settings.get("guidance_scale"), "height": gen.get("height"),
        "metric_size": gen.get("metric_size"), "chart": images.get("metrics"),
    }


def _experts(data: Mapping[str, Any], images: Mapping[str, Picture]) -> dict[str, Any]:
    """Two tables: each expert's budget and share of prompts (a row per expert), and the metrics
    evaluated on each expert's images (a row per metric, a column per expert: metrics outnumber
    experts)."""
    metrics = data["metrics"]
    experts = data["manifest"]["experts"]
    _, _, per_expert = split_metrics(metrics)
    entries = {e.get("expert"): dict(e) for e in metrics.get("experts", [])}
    for entry in entries.values():
        entry["metrics"] = dict(entry.get("metrics") or {})
    for expert, values in per_expert.items():
        entries.setdefault(expert, {"metrics": {}})["metrics"].update({f"{k} (eval)": v for k, v in values.items()})
    metric_keys = list(dict.fromkeys(k for e in entries.values() for k in (e.get("metrics") or {})))
    intervals = (data.get("intervals") or {}).get("metrics", {})
    total = max(1, sum(data["counts"]))
    rows = []
    for e in experts:
        entry = entries.get(e["id"], {})
        rows.append([f"E{e['id']}", f"{e['macs_ratio']:.3f}", _fmt("macs", e.get("macs")),
                     f"{data['counts'][e['id']] / total:.1%}", str(data["counts"][e["id"]]),
                     f"{entry['eval_share']:.1%}" if "eval_share" in entry else "–",
                     str(entry["eval_images"]) if "eval_images" in entry else "–", _fmt("", entry.get("final_loss"))])
    header = ["expert", "MACs ratio", "MACs", "share of training prompts", "training prompts", "share of eval prompts",
              "eval prompts", "final fine-tune loss"]
    metric_rows = []
    for k in metric_keys:
        cells = []
        for e in experts:
            entry = entries.get(e["id"], {})
            ci = (intervals.get(k.removesuffix(" (eval)")) or {}).get("experts", {}).get(str(e["id"]))
            cells.append({"value": _fmt(k, (entry.get("metrics") or {}).get(k)), "ci": format_interval(ci) if ci else ""})
        metric_rows.append({"metric": k, "cells": cells})
    return {"header": header, "rows": rows, "chart": images.get("experts"), "intervals": bool(intervals),
            "experts": [f"E{e['id']} ({e['macs_ratio']:.2f})" for e in experts], "metric_rows": metric_rows}


def _routing(data: Mapping[str, Any], images: Mapping[str, Picture]) -> dict[str, Any]:
    table = data.get("routing")
    if not table:
        return {"table": None}
    experts = data["manifest"]["experts"]
    rows = []
    for category, counts in zip(table["categories"], table["counts"]):
        total = sum(counts)
        rows.append({"category": category, "total": total,
                     "cells": [{"count": c, "share": c / total if total else 0.0,
                                "text": f"{c} ({c / total:.0%})" if total and table["by_category"] else str(c)}
                               for c in counts]})
    return {"table": table, "rows": rows, "experts": [f"E{e['id']} ({e['macs_ratio']:.2f})" for e in experts],
            "grand_total": sum(table["totals"])}


def _architecture(data: Mapping[str, Any], images: Mapping[str, Picture]) -> dict[str, Any]:
    arch = data["architecture"]
    return {"latent_size": arch["latent_size"], "text_len": arch["text_len"], "chart": images.get("architecture")}


def _words(data: Mapping[str, Any], images: Mapping[str, Picture]) -> dict[str, Any]:
    rows = []
    for e in sorted(data["manifest"]["experts"], key=lambda x: x["macs_ratio"]):
        words = data["words"].get(str(e["id"]), {"frequent": [], "distinctive": []})
        rows.append({"expert": f"E{e['id']} ({e['macs_ratio']:.2f})", "prompts": data["counts"][e["id"]],
                     "frequent": words["frequent"], "distinctive": words["distinctive"]})
    return {"rows": rows}


def _samples(data: Mapping[str, Any], images: Mapping[str, Picture]) -> dict[str, Any]:
    ratio = {int(e["id"]): e["macs_ratio"] for e in data["manifest"]["experts"]}
    groups: dict[int, list[dict[str, Any]]] = {}
    for s in data["samples"]:
        expert_image = images.get("sample:" + s["file"])
        if expert_image is None:
            continue
        teacher_image = images.get("sample:" + s["teacher_file"]) if s.get("teacher_file") else None
        groups.setdefault(int(s["expert"]), []).append({
            "prompt": s["prompt"], "seed": s.get("seed"), "expert": expert_image, "teacher": teacher_image,
            "routed_to": s.get("routed_to") if s.get("routed_to") != s["expert"] else None,
        })
    return {"groups": [{"name": f"E{e}", "ratio": f"{ratio.get(e, 0):.2f}", "samples": groups[e]} for e in sorted(groups)],
            "paired": any(x["teacher"] is not None for g in groups.values() for x in g)}


def _complexity(data: Mapping[str, Any], images: Mapping[str, Picture]) -> dict[str, Any]:
    cx = data["complexity"]
    rho = cx["spearman"]
    verdict = "n/a (constant complexity or a single budget)" if rho is None or math.isnan(rho) else f"{rho:+.3f}"
    return {"verdict": verdict, "prompts": cx["prompts"], "source": cx["source"], "chart": images.get("complexity")}


_CORE = {"summary": _summary, "metrics": _metrics, "experts": _experts, "routing": _routing,
         "architecture": _architecture, "words": _words, "samples": _samples, "complexity": _complexity}


def _picture(value: str | Picture, alt: str) -> Picture:
    return value if isinstance(value, Picture) else Picture(src=value, alt=alt)


def sections_context(data: Mapping[str, Any], images: Mapping[str, str | Picture],
                     extra: Sequence[ReportSection] = ()) -> list[dict[str, Any]]:
    """The page's sections in order, each ``{"id", "nav", "title", "template", "ctx"}``."""
    from markupsafe import Markup

    pictures = {name: _picture(value, name) for name, value in images.items()}
    out = []
    for section in page_order(extra):
        if isinstance(section, str):
            nav, title = TITLES[section]
            out.append({"id": section, "nav": nav, "title": title, "template": f"section_{section}.html",
                        "ctx": _CORE[section](data, pictures)})
        else:
            charts = [pictures[name] for name in section.charts if name in pictures]
            out.append({"id": section.id, "nav": section.id, "title": section.title, "template": "section_plugin.html",
                        "ctx": {"html": Markup(section.html), "charts": charts, "empty": section.empty}})
    return out


def render_html(data: Mapping[str, Any], images: Mapping[str, str | Picture], extra: Sequence[ReportSection] = ()) -> str:
    """The report page. ``images`` maps chart names (and ``sample:FILE`` for the samples) to data URIs
    or :class:`Picture` s; ``extra``: the plugins' sections. The title is the recipe's name."""
    return environment().get_template(TEMPLATE).render(
        title=data.get("title") or data["run"], run=data["run"], label=_label(data),
        description=data.get("description", ""), sections=sections_context(data, images, extra))
