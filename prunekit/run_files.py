"""The files a run directory holds about what it trains and deploys, by name, with their readers and
writers: no other module spells these names.

Layout under ``RUN/artifacts/``::

    encoded/                      the encoded training set (:mod:`prunekit.shards`): latents, text
                                  states, router inputs ``z`` and the prompts, row by row
    routing.json                  {"expert_of_sample": [expert of each encoded row],
                                   "masks": [[0/1 per prunable unit] per expert]}
    router_<phase>.safetensors    router weights after a pruning phase (``warmup``, ``joint``)
    <name>_history.json           a training loop's per-step records (``prune_warmup``, ``prune_joint``,
                                  ``finetune_expert_0``, ``finetune``, ...), read by the report
    mixture/                      what a mixture method deploys (:mod:`prunekit.mixture`)
    samples/                      the report's sample grid: ``samples.json`` and ``expert_XX_k.png``
    evaluation.json               the last evaluation (:mod:`prunekit.evaluation`)
    eval_images/<role>/           the images the evaluation scored, and its resume point
    prompt_complexity.json        the dataset's complexity of each training prompt, for the report
    latency_table.json            the latency budget's table, as the run used it (a budget's ``files``)

Every function takes a run directory or a :class:`~prunekit.run.Run` (anything with ``.dir``).
Writers write whole files atomically; under a launcher call them on rank 0 (``run.on_main``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ARTIFACTS = "artifacts"
ENCODED = "encoded"
ROUTING = "routing.json"
MIXTURE = "mixture"
SAMPLES = "samples"
SAMPLES_INDEX = "samples.json"
EVALUATION = "evaluation.json"
EVAL_IMAGES = "eval_images"
COMPLEXITY = "prompt_complexity.json"
HISTORY_SUFFIX = "_history.json"
LATENCY_TABLE = "latency_table.json"


def _root(where: Any) -> Path:
    return Path(getattr(where, "dir", where))


def artifacts_dir(where: Any) -> Path:
    return _root(where) / ARTIFACTS


def encoded_dir(where: Any) -> Path:
    return artifacts_dir(where) / ENCODED


def routing_file(where: Any) -> Path:
    return artifacts_dir(where) / ROUTING


def router_file(where: Any, phase: str) -> Path:
    """Router weights after pruning phase ``phase`` (``warmup``, ``joint``)."""
    return artifacts_dir(where) / f"router_{phase}.safetensors"


def history_file(where: Any, name: str) -> Path:
    return artifacts_dir(where) / f"{name}{HISTORY_SUFFIX}"


def mixture_dir(where: Any) -> Path:
    return artifacts_dir(where) / MIXTURE


def samples_dir(where: Any) -> Path:
    return artifacts_dir(where) / SAMPLES


def evaluation_file(where: Any) -> Path:
    return artifacts_dir(where) / EVALUATION


def eval_images_dir(where: Any) -> Path:
    return artifacts_dir(where) / EVAL_IMAGES


def complexity_file(where: Any) -> Path:
    return artifacts_dir(where) / COMPLEXITY


def has_mixture(where: Any) -> bool:
    from prunekit.mixture import MANIFEST

    return (mixture_dir(where) / MANIFEST).is_file()


# -- routing ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Routing:
    """``routing.json``: the expert of every encoded training row, and each expert's unit mask."""

    expert_of_sample: list[int]
    masks: list[list[int]]


def write_routing(where: Any, expert_of_sample: Sequence[int], masks: Sequence[Sequence[int]]) -> Path:
    from prunekit.run import atomic_write_text

    path = routing_file(where)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"expert_of_sample": [int(e) for e in expert_of_sample],
                                        "masks": [[int(u) for u in mask] for mask in masks]}))
    return path


def read_routing(where: Any) -> Routing:
    data = json.loads(routing_file(where).read_text())
    return Routing([int(e) for e in data["expert_of_sample"]], [list(m) for m in data["masks"]])


# -- the encoded training set ----------------------------------------------------------------------


def open_encoded(where: Any) -> Any:
    """The encoded training set (rows read lazily from its shards, :class:`prunekit.shards.EncodedShards`)."""
    from prunekit.shards import EncodedShards

    return EncodedShards(encoded_dir(where))


def encoded_prompts(where: Any) -> list[str]:
    return list(open_encoded(where).prompts)


def routed_prompts(where: Any) -> tuple[list[str], list[int]]:
    """The training prompts of a run and the expert each was routed to."""
    return encoded_prompts(where), read_routing(where).expert_of_sample


# -- training histories ----------------------------------------------------------------------------


def write_history(where: Any, name: str, history: Sequence[Any]) -> Path:
    from prunekit.run import atomic_write_text

    path = history_file(where, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(list(history)))
    return path


def read_histories(where: Any) -> dict[str, list[dict[str, Any]]]:
    """Every ``<name>_history.json`` of a run, by ``name``, in name order."""
    return {p.name[: -len(HISTORY_SUFFIX)]: json.loads(p.read_text())
            for p in sorted(artifacts_dir(where).glob(f"*{HISTORY_SUFFIX}"))}


def keep_copies(where: Any, files: Mapping[str, Any]) -> list[Path]:
    """Copy files a component read (``{artifact name: source path}``, e.g. a budget's latency table)
    into ``artifacts/``, so the run directory records what it used; returns the copies."""
    import shutil

    copies = []
    for name, source in files.items():
        target = artifacts_dir(where) / Path(name).name
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        shutil.copyfile(source, tmp)
        tmp.replace(target)
        copies.append(target)
    return copies
