"""Everything a run's report shows, as plain data read from the run directory alone: the metrics (with
bootstrap intervals where the evaluation kept per-image scores), the mixture's experts, the evaluation
prompts per category routed to each, the words and complexity of the training prompts routed to each,
the samples and the training histories (also written to ``report/report.json``)."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from prunekit import run_files

COMPLEXITY_FILE = run_files.COMPLEXITY

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


def read_json(path: Path, default: Any = None) -> Any:
    return json.loads(path.read_text()) if path.is_file() else default


def words_of(prompt: str) -> list[str]:
    """Lower-case content words of a prompt (stop-words, numbers and single letters dropped)."""
    tokens = re.findall(r"[a-z][a-z'-]*", prompt.lower())
    return [t.strip("'-") for t in tokens if len(t.strip("'-")) > 1 and t.strip("'-") not in STOP_WORDS]


def top_words(prompts_by_expert: Mapping[int, Sequence[str]], k: int = 6) -> dict[int, dict[str, Any]]:
    """Per expert: the ``k`` most frequent content words, and the ``k`` most over-represented ones
    (share among the expert's words / share among all words, for words used at least twice)."""
    counts = {e: Counter(w for p in prompts for w in words_of(p)) for e, prompts in prompts_by_expert.items()}
    overall: Counter[str] = Counter()
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


def prompt_complexity(run_dir: Path, prompts: Sequence[str],
                      complexity: Callable[[str], float] | None) -> tuple[list[float], str]:
    """Complexity of each training prompt and where it came from: ``complexity`` when given, else the
    values the run recorded from its dataset, else the prompt's word count."""
    if complexity is not None:
        name = getattr(complexity, "__qualname__", type(complexity).__name__)
        return [float(complexity(p)) for p in prompts], f"{getattr(complexity, '__module__', '')}.{name}".lstrip(".")
    recorded = read_json(run_files.complexity_file(run_dir))
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
    atomic_write_json(run_files.complexity_file(run_dir),
                      {"source": f"dataset {type(dataset).__name__}.complexity", "prompts": list(prompts), "values": values})
    return True


def _recipe(recipe_text: str) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(recipe_text) or {}
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def method_name(recipe_text: str) -> str:
    """The ``method.name`` of a run's recipe.yaml ("" when it cannot be read)."""
    method = _recipe(recipe_text).get("method")
    return str(method.get("name", "")) if isinstance(method, dict) else ""


def recipe_name(recipe_text: str) -> str:
    """The ``name`` of a run's recipe.yaml ("" when it has none or cannot be read)."""
    name = _recipe(recipe_text).get("name")
    return str(name) if name else ""


def complexity_intervals(values: Sequence[float], experts_of: Sequence[int], n_experts: int) -> list[Any]:
    """Per expert, the bootstrap interval ``[low, high]`` of the mean complexity of its training prompts
    (None with fewer than two prompts)."""
    from prunekit.report.stats import bootstrap_ci

    out: list[Any] = []
    for e in range(n_experts):
        interval = bootstrap_ci([v for v, x in zip(values, experts_of) if x == e])
        out.append(list(interval) if interval else None)
    return out


def collect(run_dir: str | Path, *, complexity: Callable[[str], float] | None = None) -> dict[str, Any]:
    """Everything the core sections of the report show, as plain data (also written to ``report/report.json``)."""
    from prunekit.metrics import spearman
    from prunekit.report.architecture import retained_mac_map
    from prunekit.report.stats import metric_intervals, routing_table

    run_dir = Path(run_dir)
    metrics = read_json(run_dir / "metrics.json", {})
    manifest = read_json(run_files.mixture_dir(run_dir) / "manifest.json")
    if manifest is None:
        raise FileNotFoundError(f"{run_dir} has no artifacts/mixture/manifest.json: not a finished mixture run")
    prompts, experts_of = run_files.routed_prompts(run_dir)
    n_experts = len(manifest["experts"])
    by_expert = {e: [p for p, x in zip(prompts, experts_of) if x == e] for e in range(n_experts)}
    ratio = {int(e["id"]): float(e["macs_ratio"]) for e in manifest["experts"]}
    values, source = prompt_complexity(run_dir, prompts, complexity)
    routed_ratio = [ratio[e] for e in experts_of]
    rho = spearman(values, routed_ratio)
    recipe_text = (run_dir / "recipe.yaml").read_text() if (run_dir / "recipe.yaml").is_file() else ""
    evaluation = read_json(run_files.evaluation_file(run_dir), {}) or {}
    if evaluation.get("prompts") != (metrics.get("evaluation") or {}).get("prompts"):
        evaluation = {}  # not the evaluation metrics.json shows (e.g. `prunekit eval --output`)
    return {
        "run": run_dir.name,
        "title": recipe_name(recipe_text) or run_dir.name,
        "description": str(_recipe(recipe_text).get("description") or ""),
        "method": method_name(recipe_text),
        "stages": list(read_json(run_dir / "stages.json", {}) or {}),
        "recipe": recipe_text,
        "metrics": metrics,
        "manifest": {k: v for k, v in manifest.items() if k not in ("model", "prompt_encoder", "router")},
        "counts": [len(by_expert[e]) for e in range(n_experts)],
        "architecture": retained_mac_map(run_files.mixture_dir(run_dir)),
        "words": {str(e): v for e, v in top_words(by_expert).items()},
        "samples": read_json(run_files.samples_dir(run_dir) / run_files.SAMPLES_INDEX, []),
        "histories": run_files.read_histories(run_dir),
        "complexity": {
            "source": source, "spearman": rho, "prompts": len(prompts),
            "mean_by_expert": [sum(values[i] for i, x in enumerate(experts_of) if x == e) / len(by_expert[e])
                               if by_expert[e] else None for e in range(n_experts)],
            "interval_by_expert": complexity_intervals(values, experts_of, n_experts),
        },
        "intervals": metric_intervals(evaluation),
        "routing": routing_table(metrics, n_experts),
    }
