"""The report's samples of a mixture run: for each expert, images of training prompts routed to it, and
the teacher's image of the same prompt from the same seed next to each (``artifacts/samples/``:
``expert_XX_k.png``, ``teacher_XX_k.png`` and ``samples.json``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from prunekit import run_files
from prunekit.eval_config import EvalConfig, eval_config
from prunekit.evaluation.generation import generate
from prunekit.evaluation.stage import load_mixture

SAMPLES_DIR = run_files.SAMPLES


def write_samples(pipeline: Any, prompts_by_expert: Mapping[int, Sequence[str]], folder: str | Path,
                  config: EvalConfig | None = None, *, teacher: Any = None) -> list[dict[str, Any]]:
    """Generate the report's samples: for each expert, images of prompts routed to it, and the
    teacher's image of each prompt from the same seed.

    Writes ``expert_XX_k.png``, ``teacher_XX_k.png`` and ``samples.json`` (prompt, expert asked for,
    expert it was routed to, seed, the two files) into ``folder``, replacing earlier samples.
    ``teacher``: the dense pipeline (default: the mixture's ``teacher``, when it has one and
    ``config.teacher`` is on); without one only the experts' images are written.
    """
    from PIL import Image

    from prunekit.run import atomic_write_json

    config = config or EvalConfig()
    if teacher is None and config.teacher:
        teacher = getattr(pipeline, "teacher", None)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for old in [*folder.glob("expert_*.png"), *folder.glob("teacher_*.png")]:
        old.unlink()
    flat = [(expert, k, prompt) for expert, prompts in sorted(prompts_by_expert.items())
            for k, prompt in enumerate(prompts)]
    prompts = [p for _, _, p in flat]
    generation = generate(pipeline, prompts, replace(config, resize=None))
    # image n comes from seed config.seed + n for both (prunekit.evaluation.generation): the same noise
    dense = generate(teacher, prompts, replace(config, resize=None)) if teacher is not None and flat else None
    entries = []
    for n, (expert, k, prompt) in enumerate(flat):
        name = f"expert_{expert:02d}_{k}.png"
        Image.fromarray(generation.images[n].permute(1, 2, 0).numpy()).save(folder / name)
        routed = generation.experts[n] if generation.experts is not None else expert
        entry: dict[str, Any] = {"expert": expert, "routed_to": routed, "prompt": prompt, "file": name,
                                 "seed": config.seed + n}
        if dense is not None:
            teacher_name = f"teacher_{expert:02d}_{k}.png"
            entry["teacher_file"] = teacher_name
            Image.fromarray(dense.images[n].permute(1, 2, 0).numpy()).save(folder / teacher_name)
        entries.append(entry)
    atomic_write_json(folder / run_files.SAMPLES_INDEX, entries)
    return entries


def write_run_samples(run_dir: str | Path, recipe_data: Mapping[str, Any], registry: Any, *, base: Any = None,
                      mixture: Any = None) -> list[dict[str, Any]]:
    """Samples per expert of a mixture run, from the first training prompts routed to each expert, with
    the teacher's image of each (unless ``eval.teacher`` is off)."""
    config = eval_config(recipe_data)
    prompts, experts = run_files.routed_prompts(run_dir)
    by_expert: dict[int, list[str]] = {}
    for prompt, expert in zip(prompts, experts):
        if len(by_expert.setdefault(expert, [])) < config.samples_per_expert:
            by_expert[expert].append(prompt)
    if not by_expert or config.samples_per_expert == 0:
        return []
    mixture = mixture or load_mixture(run_files.mixture_dir(run_dir), registry, base=base)
    return write_samples(mixture, by_expert, run_files.samples_dir(run_dir), config)
