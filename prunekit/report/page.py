"""The report page: one self-contained HTML file (charts embedded as data URIs), the core sections in
order with the sections plugins add (:class:`~prunekit.report.sections.ReportSection`) placed among them."""

from __future__ import annotations

import html
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from prunekit.report.sections import ReportSection, page_order

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;color:#222;margin:0 auto;max-width:1150px;padding:16px 24px}
h1{font-size:22px;margin:8px 0}h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:28px}
nav a{margin-right:12px}table{border-collapse:collapse;margin:8px 0;display:block;max-width:100%;overflow-x:auto}th,td{border:1px solid #ddd;padding:3px 8px;
text-align:right;vertical-align:top;white-space:nowrap}th{background:#f4f6f8;white-space:normal}td.l,th.l{text-align:left}
td.l{white-space:normal}img{max-width:100%}
.note{color:#555;font-size:13px}.samples{display:flex;flex-wrap:wrap;gap:6px;align-items:flex-start}
figure{margin:0;width:136px}figure img{width:128px;height:128px;image-rendering:pixelated;border:1px solid #ddd}
figcaption{font-size:11px;color:#444}pre{background:#f6f8fa;padding:8px;overflow:auto;font-size:12px;max-height:320px}
"""


def _fmt(key: str, value: Any) -> str:
    key = key.removesuffix(" (eval)")
    if value is None:
        return "–"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return html.escape(str(value))
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    if key.startswith("macs") and "ratio" not in key and "resolution" not in key:
        return f"{value / 1e9:.3f} G"
    if key.endswith("_s"):
        return f"{value:.4g} s"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


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


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    head = "".join(f"<th class='l'>{h}</th>" if i < left else f"<th>{h}</th>" for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f"<td class='l'>{c}</td>" if i < left else f"<td>{c}</td>" for i, c in enumerate(r))
                   + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _img(uri: str, alt: str) -> str:
    return f"<img src='{uri}' alt='{html.escape(alt)}'>"


def _label(data: Mapping[str, Any]) -> str:
    """What produced the run, for headings: its recipe's method name, upper-cased (``APTP``)."""
    return str(data.get("method") or "prunekit").upper()


def _summary(data: Mapping[str, Any], images: Mapping[str, str]) -> list[str]:
    manifest = data["manifest"]
    esc = html.escape
    return [
        "<section id='summary'><h2>Summary</h2>",
        _table(["", "value"], left=2, rows=[
            ["stages", esc(", ".join(data.get("stages", [])))],
            ["experts", str(len(manifest["experts"]))],
            ["MAC budget (target ratio)", _fmt("", manifest.get("budget"))],
            ["dense U-Net MACs (training latent)", _fmt("macs", manifest.get("dense_macs"))],
            ["latent size / text tokens", f"{manifest.get('latent_size')} / {manifest.get('text_len')}"],
            ["routed mean MACs ratio (training prompts)", _fmt("", manifest.get("mean_macs_ratio"))],
            ["training prompts", str(sum(data["counts"]))],
        ]),
        f"<details><summary>recipe</summary><pre>{esc(data['recipe'])}</pre></details></section>",
    ]


def _metrics(data: Mapping[str, Any], images: Mapping[str, str]) -> list[str]:
    metrics = data["metrics"]
    esc = html.escape
    parts = ["<section id='metrics'><h2>Metrics: teacher vs pruned</h2>"]
    teacher, mixture, _ = split_metrics(metrics)
    if teacher or mixture:
        keys = list(dict.fromkeys([*teacher, *mixture]))
        settings = (metrics.get("evaluation") or {}).get("settings", {})
        parts.append(_table(["metric", "teacher (dense)", f"{esc(_label(data))} mixture", "mixture / teacher"],
                            [[esc(k), _fmt(k, teacher.get(k)), _fmt(k, mixture.get(k)),
                              _ratio(teacher.get(k), mixture.get(k), k)] for k in keys]))
        gen = (metrics.get("mixture") or {}).get("generation", {})
        parts.append(f"<p class='note'>{(metrics.get('evaluation') or {}).get('prompts', '?')} prompts; "
                     f"{esc(str(settings.get('scheduler')))} sampler, {settings.get('steps')} steps, guidance "
                     f"{settings.get('guidance_scale')}; generated at {gen.get('height')} px, metrics at "
                     f"{gen.get('metric_size')} px. MACs are per U-Net forward at batch 1; a complexity metric "
                     f"measured for the teacher inside the mixture's evaluation (interleaved timing) is the teacher's "
                     f"value here.</p>")
    else:
        parts.append("<p class='note'>No evaluation: the recipe has no <code>metrics:</code> section. Add one "
                     "(docs/evaluation.md) and run <code>prunekit eval RUN_DIR</code>.</p>")
    parts.append("</section>")
    return parts


def _experts(data: Mapping[str, Any], images: Mapping[str, str]) -> list[str]:
    metrics = data["metrics"]
    experts = data["manifest"]["experts"]
    _, _, per_expert = split_metrics(metrics)
    parts = ["<section id='experts'><h2>Experts: budget and share of prompts</h2>"]
    entries = {e.get("expert"): e for e in metrics.get("experts", [])}
    for entry in entries.values():
        entry.setdefault("metrics", {})
    for expert, values in per_expert.items():
        entries.setdefault(expert, {"metrics": {}})["metrics"].update({f"{k} (eval)": v for k, v in values.items()})
    metric_keys = list(dict.fromkeys(k for e in entries.values() for k in (e.get("metrics") or {})))
    total = max(1, sum(data["counts"]))
    rows = []
    for e in experts:
        entry = entries.get(e["id"], {})
        rows.append([f"E{e['id']}", f"{e['macs_ratio']:.3f}", _fmt("macs", e.get("macs")),
                     f"{data['counts'][e['id']] / total:.1%}", str(data["counts"][e["id"]]),
                     f"{entry['eval_share']:.1%}" if "eval_share" in entry else "–",
                     _fmt("", entry.get("final_loss"))] + [_fmt(k, (entry.get("metrics") or {}).get(k)) for k in metric_keys])
    parts.append(_table(["expert", "MACs ratio", "MACs", "share of training prompts", "training prompts",
                         "share of eval prompts", "final fine-tune loss", *map(html.escape, metric_keys)], rows))
    parts.append(_img(images["experts"], "MACs ratio and share per expert") + "</section>")
    return parts


def _architecture(data: Mapping[str, Any], images: Mapping[str, str]) -> list[str]:
    arch = data["architecture"]
    return [
        "<section id='architecture'><h2>Block-level retained MACs (paper Fig. 9/10)</h2>",
        f"<p class='note'>Each cell: the fraction of a ResNet (R) or Transformer (A) block's dense MACs the "
        f"expert keeps, measured on the pruned architecture (latent {arch['latent_size']}, "
        f"{arch['text_len']} text tokens). D = encoder (down) block, M = middle, U = decoder (up); "
        f"conv_in/out, resamplers and skip connections are omitted, as in the paper.</p>",
        _img(images["architecture"], "retained MACs heatmap") + "</section>",
    ]


def _words(data: Mapping[str, Any], images: Mapping[str, str]) -> list[str]:
    esc = html.escape
    parts = ["<section id='words'><h2>Most frequent words per expert (paper Tables 2/4)</h2>"]
    rows = []
    for e in sorted(data["manifest"]["experts"], key=lambda x: x["macs_ratio"]):
        words = data["words"].get(str(e["id"]), {"frequent": [], "distinctive": []})
        rows.append([f"E{e['id']} ({e['macs_ratio']:.2f})", str(data["counts"][e["id"]]),
                     " – ".join(f"{esc(w)} <span class='note'>({n})</span>" for w, n in words["frequent"]),
                     " – ".join(f"{esc(w)} <span class='note'>×{x}</span>" for w, x in words["distinctive"])])
    parts.append(_table(["expert (MACs ratio)", "prompts", "most frequent (count)", "most over-represented (lift)"],
                        rows, left=4))
    parts.append("<p class='note'>Stop-words removed. Lift: a word's share among the expert's words over its share "
                 "among all words (words used at least twice by the expert).</p></section>")
    return parts


def _samples(data: Mapping[str, Any], images: Mapping[str, str]) -> list[str]:
    esc = html.escape
    parts = ["<section id='samples'><h2>Samples per expert</h2>"]
    if data["samples"]:
        by_expert: dict[int, list[Mapping[str, Any]]] = {}
        for s in data["samples"]:
            by_expert.setdefault(int(s["expert"]), []).append(s)
        for expert in sorted(by_expert):
            figures = "".join(
                f"<figure>{_img(images.get('sample:' + s['file'], ''), s['prompt'])}<figcaption>{esc(s['prompt'])}"
                + (f" <b>(routed to E{s['routed_to']})</b>" if s.get("routed_to") != s["expert"] else "")
                + "</figcaption></figure>" for s in by_expert[expert] if "sample:" + s["file"] in images)
            parts.append(f"<h3>E{expert}</h3><div class='samples'>{figures}</div>")
    else:
        parts.append("<p class='note'>No samples in artifacts/samples.</p>")
    parts.append("</section>")
    return parts


def _complexity(data: Mapping[str, Any], images: Mapping[str, str]) -> list[str]:
    cx = data["complexity"]
    rho = cx["spearman"]
    parts = ["<section id='complexity'><h2>Do harder prompts go to bigger experts?</h2>"]
    verdict = "n/a (constant complexity or a single budget)" if rho is None or math.isnan(rho) else f"{rho:+.3f}"
    parts.append(f"<p>Spearman ρ between prompt complexity and the MACs ratio of the expert each prompt was routed to: "
                 f"<b>{verdict}</b> over {cx['prompts']} training prompts. Complexity: {html.escape(cx['source'])}. "
                 f"A positive ρ means more complex prompts went to bigger experts.</p>")
    if "complexity" in images:
        parts.append(_img(images["complexity"], "complexity per expert"))
    parts.append("</section>")
    return parts


_CORE: dict[str, Callable[[Mapping[str, Any], Mapping[str, str]], list[str]]] = {
    "summary": _summary, "metrics": _metrics, "experts": _experts, "architecture": _architecture,
    "words": _words, "samples": _samples, "complexity": _complexity,
}


def render_section(section: ReportSection, images: Mapping[str, str]) -> list[str]:
    """A plugin's section: its heading, its HTML, then its charts (or its ``empty`` note)."""
    shown = "".join(_img(images[name], name) for name in section.charts if name in images)
    return [f"<section id='{html.escape(section.id)}'><h2>{html.escape(section.title)}</h2>",
            (section.html + shown) or f"<p class='note'>{html.escape(section.empty)}</p>", "</section>"]


def render_html(data: Mapping[str, Any], images: Mapping[str, str], extra: Sequence[ReportSection] = ()) -> str:
    """The report page; ``images`` maps chart names to data URIs; ``extra``: the plugins' sections."""
    esc = html.escape
    order = page_order(extra)
    ids = [s if isinstance(s, str) else s.id for s in order]
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>prunekit report: {esc(data['run'])}</title>"
             f"<style>{_CSS}</style></head><body>",
             f"<h1>{esc(_label(data))} run <code>{esc(data['run'])}</code></h1>",
             "<nav>" + "".join(f"<a href='#{esc(s)}'>{esc(s)}</a>" for s in ids) + "</nav>"]
    for section in order:
        parts.extend(_CORE[section](data, images) if isinstance(section, str) else render_section(section, images))
    parts[-1] += "</body></html>"
    return "\n".join(parts)
