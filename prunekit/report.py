"""``report.html`` of an APTP run, rebuilt from the run directory alone.

Sections (HTML ids): ``summary``, ``metrics`` (teacher vs pruned), ``experts`` (budget and share of
prompts), ``architecture`` (retained MACs of every U-Net block of every expert, the paper's
Fig. 9/10), ``words`` (most frequent words routed to each expert, Tables 2/4), ``samples`` (a grid
per expert), ``losses`` (training curves) and ``complexity`` (do harder prompts go to bigger
experts?). Every image is embedded as a base64 PNG and also written to ``report/``; the numbers
behind the charts go to ``report/report.json``.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

REPORT_FILE = "report.html"
REPORT_DIR = "report"
COMPLEXITY_FILE = "prompt_complexity.json"
SECTIONS = ("summary", "metrics", "experts", "architecture", "words", "samples", "losses", "complexity")

# Short English stop-word list: articles, pronouns, prepositions, auxiliaries, and caption filler.
STOP_WORDS = frozenset("""
a an the and or but nor so yet of in on at to for from by with without within into onto upon over under
above below between among through during before after about against along around across behind beyond near
off out up down is are was were be been being am do does did has have had having this that these those
there here it its it's he she they them their his her him we us our you your i me my mine who whom whose
which what when where why how all any both each few more most other some such no not only own same than
too very can will just should now as if then while also one two three there's image photo picture view
stock illustration showing shows shown next front top side very while very
""".split())


# -- data ---------------------------------------------------------------------------------------------

def _read_json(path: Path, default: Any = None) -> Any:
    return json.loads(path.read_text()) if path.is_file() else default


def words_of(prompt: str) -> list[str]:
    """Lower-case content words of a prompt (stop-words, numbers and single letters dropped)."""
    tokens = re.findall(r"[a-z][a-z'-]*", prompt.lower())
    return [t.strip("'-") for t in tokens if len(t.strip("'-")) > 1 and t.strip("'-") not in STOP_WORDS]


def top_words(prompts_by_expert: Mapping[int, Sequence[str]], k: int = 6) -> dict[int, dict[str, Any]]:
    """Per expert: the ``k`` most frequent content words, and the ``k`` most over-represented ones
    (share among the expert's words / share among all words, for words used at least twice)."""
    counts = {e: Counter(w for p in prompts for w in words_of(p)) for e, prompts in prompts_by_expert.items()}
    overall = Counter()
    for c in counts.values():
        overall.update(c)
    total = sum(overall.values()) or 1
    out = {}
    for expert, c in counts.items():
        n = sum(c.values()) or 1
        lift = {w: (v / n) / (overall[w] / total) for w, v in c.items() if v >= 2}
        lift = {w: x for w, x in lift.items() if x > 1.0}
        distinctive = sorted(lift, key=lambda w: (-lift[w], -c[w], w))[:k]
        out[expert] = {"frequent": [[w, v] for w, v in sorted(c.items(), key=lambda x: (-x[1], x[0]))[:k]],
                       "distinctive": [[w, round(lift[w], 2)] for w in distinctive]}
    return out


_BLOCK = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions)\.(\d+)$|^mid_block\.(resnets|attentions)\.(\d+)$")


def _block_key(path: str) -> tuple[int, int, int, int]:
    """Forward order: down, mid, up; inside a block resnet j, then attention j."""
    m = _BLOCK.match(path)
    assert m is not None
    if m.group(1):
        part = 0 if m.group(1) == "down_blocks" else 2
        return part, int(m.group(2)), int(m.group(4)), 0 if m.group(3) == "resnets" else 1
    return 1, 0, int(m.group(6)), 0 if m.group(5) == "resnets" else 1


def block_label(path: str) -> str:
    """``down_blocks.1.attentions.0`` → ``D1.A0``; ``mid_block.resnets.1`` → ``M.R1``."""
    m = _BLOCK.match(path)
    assert m is not None
    if m.group(1):
        return f"{m.group(1)[0].upper()}{m.group(2)}.{m.group(3)[0].upper()}{m.group(4)}"
    return f"M.{m.group(5)[0].upper()}{m.group(6)}"


def block_macs(unet: Any, *, height: int, width: int, text_len: int) -> dict[str, float]:
    """MACs (batch 1) of every ResNet and Transformer2D block of ``unet``, measured with the same
    FlopCounterMode convention as :func:`prunekit.unet.count_macs`. A block pruned away counts 0."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from prunekit.unet import example_inputs, flop_counter_mode

    counter = flop_counter_mode()
    on_meta = any(p.is_meta for p in unet.parameters())
    with torch.no_grad():
        if on_meta:
            args, kwargs = example_inputs(unet, height=height, width=width, text_len=text_len)
            with counter:
                unet(*args, **kwargs)
        else:
            # Shapes only: a Python pass, not a real forward.
            with FakeTensorMode(allow_non_fake_inputs=True):
                args, kwargs = example_inputs(unet, height=height, width=width, text_len=text_len)
                with counter:
                    unet(*args, **kwargs)
    root = type(unet).__name__ + "."
    found = {name[len(root):]: sum(ops.values()) / 2 for name, ops in counter.get_flop_counts().items()
             if name.startswith(root)}
    paths = [name for name, _ in unet.named_modules() if _BLOCK.match(name)]
    return {p: float(found.get(p, 0.0)) for p in sorted(paths, key=_block_key)}


def retained_mac_map(mixture_dir: str | Path) -> dict[str, Any]:
    """Fraction of each U-Net block's dense MACs that every expert of a mixture keeps.

    Measured on the pruned architectures themselves (rebuilt on the meta device from each expert's
    config and mask, no weights), at the latent size and text length the experts were budgeted at.
    """
    from dataclasses import replace

    from prunekit.mixture import read_manifest
    from prunekit.unet.expert import build_expert_skeleton, read_expert_spec

    mixture_dir = Path(mixture_dir)
    manifest = read_manifest(mixture_dir)
    height, width = manifest["latent_size"]
    text_len = int(manifest["text_len"])
    specs = [read_expert_spec(mixture_dir / entry["path"]) for entry in manifest["experts"]]
    config, first = specs[0]
    dense_model = build_expert_skeleton(config, replace(first, mask=(True,) * first.num_units))
    dense = block_macs(dense_model, height=height, width=width, text_len=text_len)
    blocks = [p for p, v in dense.items() if v > 0]
    experts = []
    for entry, (cfg, spec) in zip(manifest["experts"], specs):
        pruned = block_macs(build_expert_skeleton(cfg, spec), height=height, width=width, text_len=text_len)
        experts.append({"expert": int(entry["id"]), "macs_ratio": float(entry["macs_ratio"]),
                        "retained": [pruned.get(p, 0.0) / dense[p] for p in blocks]})
    return {"blocks": blocks, "labels": [block_label(p) for p in blocks], "dense_macs": [dense[p] for p in blocks],
            "latent_size": [height, width], "text_len": text_len, "experts": experts}


def _column_groups(blocks: Sequence[str]) -> list[tuple[str, int, int]]:
    groups: list[tuple[str, int, int]] = []
    for i, path in enumerate(blocks):
        name = "encoder" if path.startswith("down") else "mid" if path.startswith("mid") else "decoder"
        if groups and groups[-1][0] == name:
            groups[-1] = (name, groups[-1][1], i)
        else:
            groups.append((name, i, i))
    return groups


def prompt_complexity(run_dir: Path, prompts: Sequence[str],
                      complexity: Callable[[str], float] | None) -> tuple[list[float], str]:
    """Complexity of each training prompt and where it came from: ``complexity`` when given, else the
    values the run recorded from its dataset, else the prompt's word count."""
    if complexity is not None:
        name = getattr(complexity, "__qualname__", type(complexity).__name__)
        return [float(complexity(p)) for p in prompts], f"{getattr(complexity, '__module__', '')}.{name}".lstrip(".")
    recorded = _read_json(run_dir / "artifacts" / COMPLEXITY_FILE)
    if recorded and recorded.get("prompts") == list(prompts):
        return [float(v) for v in recorded["values"]], str(recorded["source"])
    return [float(len(p.split())) for p in prompts], "word count (the dataset provides no complexity)"


def record_complexity(run_dir: str | Path, dataset: Any, prompts: Sequence[str]) -> bool:
    """Save the dataset's own prompt complexity (a ``complexity`` method, or a list aligned with its
    ``prompts``) into the run, so ``prunekit report`` can use it without the dataset. False if none."""
    from prunekit.run import atomic_write_json

    source = getattr(dataset, "complexity", None)
    if callable(source):
        values = [float(source(p)) for p in prompts]
    elif isinstance(source, Sequence) and list(getattr(dataset, "prompts", [])) == list(prompts):
        values = [float(v) for v in source]
    else:
        return False
    atomic_write_json(Path(run_dir) / "artifacts" / COMPLEXITY_FILE,
                      {"source": f"dataset {type(dataset).__name__}.complexity", "prompts": list(prompts), "values": values})
    return True


def collect(run_dir: str | Path, *, complexity: Callable[[str], float] | None = None) -> dict[str, Any]:
    """Everything the report shows, as plain data (also written to ``report/report.json``)."""
    from prunekit.evaluation import routed_prompts
    from prunekit.metrics import spearman

    run_dir = Path(run_dir)
    artifacts = run_dir / "artifacts"
    metrics = _read_json(run_dir / "metrics.json", {})
    manifest = _read_json(artifacts / "mixture" / "manifest.json")
    if manifest is None:
        raise FileNotFoundError(f"{run_dir} has no artifacts/mixture/manifest.json: not a finished APTP run")
    prompts, experts_of = routed_prompts(run_dir)
    n_experts = len(manifest["experts"])
    by_expert = {e: [p for p, x in zip(prompts, experts_of) if x == e] for e in range(n_experts)}
    ratio = {int(e["id"]): float(e["macs_ratio"]) for e in manifest["experts"]}
    values, source = prompt_complexity(run_dir, prompts, complexity)
    routed_ratio = [ratio[e] for e in experts_of]
    rho = spearman(values, routed_ratio)
    histories = {p.name[: -len("_history.json")]: json.loads(p.read_text())
                 for p in sorted(artifacts.glob("*_history.json"))}
    recipe_text = (run_dir / "recipe.yaml").read_text() if (run_dir / "recipe.yaml").is_file() else ""
    return {
        "run": run_dir.name,
        "stages": list(_read_json(run_dir / "stages.json", {}) or {}),
        "recipe": recipe_text,
        "metrics": metrics,
        "manifest": {k: v for k, v in manifest.items() if k not in ("model", "prompt_encoder", "router")},
        "counts": [len(by_expert[e]) for e in range(n_experts)],
        "architecture": retained_mac_map(artifacts / "mixture"),
        "words": {str(e): v for e, v in top_words(by_expert).items()},
        "samples": _read_json(artifacts / "samples" / "samples.json", []),
        "histories": histories,
        "complexity": {
            "source": source, "spearman": rho, "prompts": len(prompts),
            "mean_by_expert": [sum(values[i] for i, x in enumerate(experts_of) if x == e) / len(by_expert[e])
                               if by_expert[e] else None for e in range(n_experts)],
        },
    }


# -- charts -------------------------------------------------------------------------------------------

def _series(history: Sequence[Mapping[str, Any]], key: str, offset: int = 0) -> list[tuple[float, float]]:
    return [(h["step"] + offset, float(h[key])) for h in history if key in h and h[key] is not None]


def charts(data: Mapping[str, Any], run_dir: Path) -> dict[str, Any]:
    """The report's PNG charts (PIL images) by file stem."""
    from PIL import Image

    from prunekit import plots

    out: dict[str, Any] = {}
    manifest = data["manifest"]
    experts = manifest["experts"]
    names = [f"E{e['id']}" for e in experts]
    total = max(1, sum(data["counts"]))
    out["experts"] = plots.bar_chart(
        names, {"MACs ratio": [e["macs_ratio"] for e in experts], "share of prompts": [c / total for c in data["counts"]]},
        title="Budget and share of training prompts per expert", ylim=(0.0, 1.1))
    arch = data["architecture"]
    out["architecture"] = plots.heatmap(
        [e["retained"] for e in arch["experts"]], row_labels=[f"E{e['expert']} ({e['macs_ratio']:.2f})" for e in arch["experts"]],
        col_labels=arch["labels"], col_groups=_column_groups(arch["blocks"]),
        title="Retained MACs per U-Net block (R = ResNet, A = attention)")
    histories = data["histories"]
    warm, joint = histories.get("prune_warmup", []), histories.get("prune_joint", [])
    if warm or joint:
        offset = warm[-1]["step"] if warm else 0
        phases = {"joint": offset + 0.5} if warm and joint else {}
        keys = [k for k in (joint or warm)[0] if k == "loss" or k.startswith("loss_")]
        positive = all(v > 0 for h in warm + joint for k in keys if isinstance(v := h.get(k), (int, float)))
        out["loss_prune"] = plots.line_chart(
            {k: _series(warm, k) + _series(joint, k, offset) for k in keys},
            title="Pruning losses (warm-up, then joint)", xlabel="step", log_y=positive, vlines=phases)
        out["macs_prune"] = plots.line_chart(
            {"MACs ratio (batch mean)": _series(warm, "macs_ratio") + _series(joint, "macs_ratio", offset)},
            hlines={"target": float(manifest.get("budget", 0.0))}, title="MACs ratio during pruning", xlabel="step",
            vlines=phases)
    finetune = {k.replace("finetune_expert_", "E"): _series(h, "loss") for k, h in histories.items()
                if k.startswith("finetune_expert_")}
    if finetune:
        positive = all(y > 0 for s in finetune.values() for _, y in s)
        out["loss_finetune"] = plots.line_chart(finetune, title="Fine-tuning loss per expert", xlabel="step",
                                                log_y=positive)
    order = sorted(range(len(experts)), key=lambda i: experts[i]["macs_ratio"])
    means = data["complexity"]["mean_by_expert"]
    used = [i for i in order if means[i] is not None]
    if used:
        out["complexity"] = plots.bar_chart(
            [f"E{experts[i]['id']} ({experts[i]['macs_ratio']:.2f})" for i in used], {"mean complexity": [means[i] for i in used]},
            title="Mean prompt complexity per expert (experts by MACs ratio)")
    if data["samples"]:
        rows: dict[int, list[Any]] = {}
        for s in data["samples"]:
            path = run_dir / "artifacts" / "samples" / s["file"]
            if path.is_file():
                rows.setdefault(int(s["expert"]), []).append(Image.open(path).convert("RGB"))
        if rows:
            ratio = {int(e["id"]): e["macs_ratio"] for e in experts}
            out["samples"] = plots.image_grid([rows[e] for e in sorted(rows)],
                                              row_labels=[f"E{e} ({ratio.get(e, 0):.2f})" for e in sorted(rows)],
                                              title="Samples per expert (prompts routed to it)")
    return out


# -- HTML ----------------------------------------------------------------------------------------------

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


def render_html(data: Mapping[str, Any], images: Mapping[str, str]) -> str:
    """The report page; ``images`` maps chart names to data URIs."""
    metrics = data["metrics"]
    manifest = data["manifest"]
    experts = manifest["experts"]
    esc = html.escape
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>prunekit report: {esc(data['run'])}</title>"
             f"<style>{_CSS}</style></head><body>",
             f"<h1>APTP run <code>{esc(data['run'])}</code></h1>",
             "<nav>" + "".join(f"<a href='#{s}'>{s}</a>" for s in SECTIONS) + "</nav>"]

    parts.append("<section id='summary'><h2>Summary</h2>")
    parts.append(_table(["", "value"], left=2, rows=[
        ["stages", esc(", ".join(data.get("stages", [])))],
        ["experts", str(len(experts))],
        ["MAC budget (target ratio)", _fmt("", manifest.get("budget"))],
        ["dense U-Net MACs (training latent)", _fmt("macs", manifest.get("dense_macs"))],
        ["latent size / text tokens", f"{manifest.get('latent_size')} / {manifest.get('text_len')}"],
        ["routed mean MACs ratio (training prompts)", _fmt("", manifest.get("mean_macs_ratio"))],
        ["training prompts", str(sum(data["counts"]))],
    ]))
    parts.append(f"<details><summary>recipe</summary><pre>{esc(data['recipe'])}</pre></details></section>")

    parts.append("<section id='metrics'><h2>Metrics: teacher vs pruned</h2>")
    teacher, mixture, per_expert = split_metrics(metrics)
    if teacher or mixture:
        keys = list(dict.fromkeys([*teacher, *mixture]))
        settings = (metrics.get("evaluation") or {}).get("settings", {})
        parts.append(_table(["metric", "teacher (dense)", "APTP mixture", "mixture / teacher"],
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

    parts.append("<section id='experts'><h2>Experts: budget and share of prompts</h2>")
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
                         "share of eval prompts", "final fine-tune loss", *map(esc, metric_keys)], rows))
    parts.append(_img(images["experts"], "MACs ratio and share per expert") + "</section>")

    arch = data["architecture"]
    parts.append("<section id='architecture'><h2>Block-level retained MACs (paper Fig. 9/10)</h2>")
    parts.append(f"<p class='note'>Each cell: the fraction of a ResNet (R) or Transformer (A) block's dense MACs the "
                 f"expert keeps, measured on the pruned architecture (latent {arch['latent_size']}, "
                 f"{arch['text_len']} text tokens). D = encoder (down) block, M = middle, U = decoder (up); "
                 f"conv_in/out, resamplers and skip connections are omitted, as in the paper.</p>")
    parts.append(_img(images["architecture"], "retained MACs heatmap") + "</section>")

    parts.append("<section id='words'><h2>Most frequent words per expert (paper Tables 2/4)</h2>")
    rows = []
    for e in sorted(experts, key=lambda x: x["macs_ratio"]):
        words = data["words"].get(str(e["id"]), {"frequent": [], "distinctive": []})
        rows.append([f"E{e['id']} ({e['macs_ratio']:.2f})", str(data["counts"][e["id"]]),
                     " – ".join(f"{esc(w)} <span class='note'>({n})</span>" for w, n in words["frequent"]),
                     " – ".join(f"{esc(w)} <span class='note'>×{x}</span>" for w, x in words["distinctive"])])
    parts.append(_table(["expert (MACs ratio)", "prompts", "most frequent (count)", "most over-represented (lift)"],
                        rows, left=4))
    parts.append("<p class='note'>Stop-words removed. Lift: a word's share among the expert's words over its share "
                 "among all words (words used at least twice by the expert).</p></section>")

    parts.append("<section id='samples'><h2>Samples per expert</h2>")
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

    parts.append("<section id='losses'><h2>Training curves</h2>")
    shown = [k for k in ("loss_prune", "macs_prune", "loss_finetune") if k in images]
    parts.append("".join(_img(images[k], k) for k in shown) or "<p class='note'>No training histories.</p>")
    parts.append("</section>")

    cx = data["complexity"]
    rho = cx["spearman"]
    parts.append("<section id='complexity'><h2>Do harder prompts go to bigger experts?</h2>")
    verdict = "n/a (constant complexity or a single budget)" if rho is None or math.isnan(rho) else f"{rho:+.3f}"
    parts.append(f"<p>Spearman ρ between prompt complexity and the MACs ratio of the expert each prompt was routed to: "
                 f"<b>{verdict}</b> over {cx['prompts']} training prompts. Complexity: {esc(cx['source'])}. "
                 f"A positive ρ means more complex prompts went to bigger experts.</p>")
    if "complexity" in images:
        parts.append(_img(images["complexity"], "complexity per expert"))
    parts.append("</section></body></html>")
    return "\n".join(parts)


def build_report(run_dir: str | Path, *, complexity: Callable[[str], float] | None = None,
                 output: str | Path | None = None) -> Path:
    """Write ``report.html``, ``report/*.png`` and ``report/report.json`` for an APTP run directory."""
    from prunekit import plots
    from prunekit.run import atomic_write_json, atomic_write_text

    run_dir = Path(run_dir)
    data = collect(run_dir, complexity=complexity)
    folder = run_dir / REPORT_DIR
    folder.mkdir(exist_ok=True)
    images: dict[str, str] = {}
    for name, image in charts(data, run_dir).items():
        png = plots.png_bytes(image)
        (folder / f"{name}.png").write_bytes(png)
        images[name] = plots.data_uri(png)
    for s in data["samples"]:
        path = run_dir / "artifacts" / "samples" / s["file"]
        if path.is_file():
            images["sample:" + s["file"]] = plots.data_uri(path.read_bytes())
    atomic_write_json(folder / "report.json", {k: v for k, v in data.items() if k not in ("recipe", "histories")})
    target = Path(output) if output else run_dir / REPORT_FILE
    atomic_write_text(target, render_html(data, images))
    return target


def write_run_report(run: Any, *, base: Any = None) -> Path | None:
    """End of an APTP run: record the dataset's prompt complexity, write samples if missing, build the
    report. Only rank 0 writes; returns the report path (None on other ranks)."""
    import torch.distributed as dist

    from prunekit.evaluation import routed_prompts, write_run_samples

    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        return None
    prompts, _ = routed_prompts(run.dir)
    record_complexity(run.dir, run.build("dataset"), prompts)
    if not (run.dir / "artifacts" / "samples" / "samples.json").is_file():
        write_run_samples(run.dir, run.recipe.data, run.registry, base=base)
    path = build_report(run.dir)
    run.log.info("report: %s", path)
    return path


# -- CLI -------------------------------------------------------------------------------------------------

def add_report_arguments(parser: Any) -> None:
    """Arguments of ``prunekit report``."""
    parser.add_argument("run_dir", help="an APTP run directory (runs/NAME)")
    parser.add_argument("--output", "-o", help="HTML file to write (default: RUN_DIR/report.html)")
    parser.add_argument("--complexity", metavar="MODULE:FUNCTION",
                        help="prompt complexity function, e.g. prunekit_plugins.domain:complexity_of "
                             "(default: what the run recorded from its dataset, else the word count)")


def load_function(spec: str) -> Callable[[str], float]:
    """``package.module:function`` → the function (for ``--complexity``)."""
    import importlib

    from prunekit.errors import PluginError

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise PluginError(f"--complexity {spec!r}: expected MODULE:FUNCTION")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise PluginError(f"--complexity {spec!r}: {type(exc).__name__}: {exc}") from None
    if not callable(fn):
        raise PluginError(f"--complexity {spec!r} is not callable")
    return fn


def main_report(args: Any) -> int:
    """``prunekit report RUN_DIR``: rebuild the run's report from its directory."""
    from prunekit.errors import MissingPathError

    run_dir = Path(args.run_dir)
    if not (run_dir / "artifacts" / "mixture" / "manifest.json").is_file():
        raise MissingPathError(f"{run_dir} is not a finished APTP run (no artifacts/mixture/manifest.json)")
    complexity = load_function(args.complexity) if args.complexity else None
    from prunekit.run import holding

    with holding(run_dir, action="report"):  # it writes report/ there, as the run does at its end
        print(f"wrote {build_report(run_dir, complexity=complexity, output=args.output)}")
    return 0
