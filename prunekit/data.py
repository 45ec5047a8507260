"""Datasets of captioned images, and the cache of their latents and text embeddings.

A ``dataset`` plugin builds an object with ``prompts: list[str]``, ``__len__`` and
``__getitem__(i) -> {"prompt": str, "image": FloatTensor[3, H, W] in [-1, 1]}`` (prompt-only
datasets may omit images). A sample that cannot be read raises (a missing file, an undecodable
image) or has an empty caption: the encode stage and the evaluation skip and count it. Training
encodes every image and prompt once (VAE latents, text states, router inputs) into shards
(:mod:`prunekit.shards`) instead of on every fetch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from prunekit.encode_config import EncodeConfig
from prunekit.run_files import ENCODED

if TYPE_CHECKING:  # torch is imported where it is used: preflight_data serves `prunekit validate`
    import torch


@runtime_checkable
class CaptionedDataset(Protocol):
    prompts: list[str]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, Any]: ...


def encode_prompts(pipeline: Any, prompts: list[str], batch_size: int = 64) -> torch.Tensor:
    """Text-encoder hidden states exactly as the pipeline conditions its U-Net."""
    import torch

    from prunekit.conditioning import Conditioning

    sd = Conditioning("sd")
    out = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            out.append(sd.encode_text(pipeline, prompts[start : start + batch_size])["text"].float().cpu())
    return torch.cat(out)


def sd_batch_encoder(pipeline: Any, prompt_encoder: Any = None) -> Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]:
    """Encode dataset items as the pipeline conditions its denoiser: VAE posterior-mean latents
    (shifted and scaled as the pipeline decodes them), the family's conditioning columns (``text``,
    and e.g. SDXL's ``pooled`` / ``time_ids``: :mod:`prunekit.conditioning`), and, given a
    ``prompt_encoder``, router inputs ``z``."""
    import torch

    from prunekit.conditioning import conditioning_for

    vae = pipeline.vae
    conditioning = conditioning_for(pipeline)
    scale = float(getattr(vae.config, "scaling_factor", 0.18215))
    shift = float(vae.config.get("shift_factor") or 0.0)  # SD3 / Flux VAEs centre their latents

    @torch.no_grad()
    def encode(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        prompts = [str(it["prompt"]) for it in items]
        images = torch.stack([it["image"] for it in items]).to(vae.device, vae.dtype)
        mean = vae.encode(images).latent_dist.mean
        latents = (mean - shift) * scale if shift else mean * scale
        sizes = [(int(it["image"].shape[-2]), int(it["image"].shape[-1])) for it in items]
        out = {"latents": latents.float().cpu(), **conditioning.encode(pipeline, prompts, sizes)}
        if prompt_encoder is not None:
            out["z"] = prompt_encoder.encode(prompts).float().cpu()
        return out

    return encode


def encode_stage(run: Any, pipeline: Any, config: EncodeConfig, *, prompt_encoder: Any = None,
                 folder: str = ENCODED) -> dict[str, Any]:
    """The ``encode`` stage of a training method: the recipe's dataset into shards under
    ``artifacts/<folder>`` (split over ranks, resumable); unreadable samples are skipped, counted in
    ``metrics.json`` under ``data``, and stop the run beyond ``config.max_skipped_fraction``."""
    import time

    from prunekit.shards import encode_to_shards

    dataset = run.build("dataset")
    start = time.perf_counter()
    with run.progress("encode dataset", len(dataset)) as advance:
        index = encode_to_shards(run.artifact(folder), dataset, sd_batch_encoder(pipeline, prompt_encoder),
                                 shard_size=config.shard_size, batch_size=config.batch_size, dtype=config.dtype,
                                 progress=advance, log=run.log)
    # What the dataset rejected while indexing (bad metadata lines, files missing at listing time)
    # counts with what could not be loaded.
    counts = dict(index["skipped"])
    for reason, n in (getattr(dataset, "rejected", None) or {}).items():
        counts[reason] = counts.get(reason, 0) + int(n)
    examples = [*getattr(dataset, "rejected_examples", [])[:5], *(e["detail"] for e in index["skipped_examples"])]
    skipped = sum(counts.values())
    rows = index["dataset_rows"] + skipped - sum(index["skipped"].values())
    summary = {"samples": index["samples"], "dataset_rows": rows, "skipped": counts, "skipped_examples": examples[:5]}
    run.save_metrics(data=summary)
    check_skipped("encode", rows=rows, usable=index["samples"], counts=counts, examples=examples, log=run.log,
                  fraction=config.max_skipped_fraction, option="method.encode.max_skipped_fraction")
    seconds = time.perf_counter() - start
    disk = sum((run.artifact(folder) / s["file"]).stat().st_size for s in index["shards"])
    return {**summary, "latent_shape": index["shapes"]["latents"], "text_shape": index["shapes"]["text"],
            "shards": len(index["shards"]), "storage_dtype": index["storage_dtype"],
            "seconds": round(seconds, 3), "bytes_per_sample": round(disk / max(1, index["samples"]), 1)}


def open_encoded(run: Any, folder: str = ENCODED) -> Any:
    """The encoded dataset of a run (rows read lazily from its shards)."""
    from prunekit.shards import EncodedShards

    return EncodedShards(run.artifact(folder))


# -- bad samples outside the encode stage (evaluation, autoencoder training) and before a run ---------


def _reasons(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))


def check_skipped(what: str, *, rows: int, usable: int, counts: Mapping[str, int], examples: Sequence[str],
                  log: Any, fraction: float, option: str) -> None:
    """Log what was skipped (counts by reason, the first few named) and stop with one line — a
    :class:`~prunekit.errors.PrunekitError` naming the counts — when no row is usable or more than
    ``fraction`` of ``rows`` was skipped (``option`` is the recipe key that sets ``fraction``)."""
    from prunekit.errors import PrunekitError

    skipped = sum(counts.values())
    if skipped and log is not None:
        log.warning("%s: skipped %d of %d samples (%s); first: %s", what, skipped, rows, _reasons(counts),
                    "; ".join(examples[:3]))
    first = examples[0] if examples else "none"
    if usable == 0:
        raise PrunekitError(f"{what}: none of the {rows} samples could be used ({_reasons(counts) or 'no rows'}); "
                            f"first: {first}")
    if rows and skipped / rows > fraction:
        raise PrunekitError(f"{what}: {skipped} of {rows} samples could not be used ({_reasons(counts)}), "
                            f"more than {option}={fraction}; first: {first}")


def usable_rows(dataset: Any, indices: Sequence[int], *, collective: bool = False,
                on_item: Callable[[int, dict[str, Any]], None] | None = None) -> tuple[list[int], dict[str, Any]]:
    """The rows of ``indices`` that load (:func:`prunekit.shards.load_sample`: image readable, caption
    not empty), in order, and ``{"rows", "samples", "skipped": {reason: n}, "skipped_examples"}``.
    ``on_item(row, item)`` sees each usable item as it is loaded. ``collective``: every rank calls
    this with the same rows; each loads a share and all get the whole answer."""
    from prunekit import distributed
    from prunekit.shards import SkippedSample, load_sample

    indices = list(indices)
    split = collective and distributed.world_size() > 1
    kept: list[int] = []
    skipped: list[tuple[str, str]] = []
    for position in (distributed.shard(len(indices)) if split else range(len(indices))):
        row = indices[position]
        try:
            item = load_sample(dataset, row)
        except SkippedSample as exc:
            skipped.append((exc.reason, exc.detail[:300]))
            continue
        kept.append(row)
        if on_item is not None:
            on_item(row, item)
    if split:  # shares are contiguous and gathered in rank order: the row order is kept
        parts = distributed.all_gather((kept, skipped))
        kept = [r for part in parts for r in part[0]]
        skipped = [s for part in parts for s in part[1]]
    counts: dict[str, int] = {}
    for reason, _ in skipped:
        counts[reason] = counts.get(reason, 0) + 1
    return kept, {"rows": len(indices), "samples": len(kept), "skipped": counts,
                  "skipped_examples": [detail for _, detail in skipped[:5]]}


def preflight_data(recipe_data: Mapping[str, Any], registry: Any) -> list[str]:
    """What ``prunekit validate`` says about the data a recipe names, on this machine, one line per
    problem: a dataset path that does not exist (the schema's ``preflight()``), else data that holds
    no readable sample (its ``probe_samples()``: metadata read and images opened until the first
    readable sample, a few tens at most). Covers ``dataset`` and ``eval.dataset``; never
    imports torch."""
    from prunekit.config import instantiate_schema, validate_options

    sections = [("dataset", recipe_data.get("dataset"))]
    eval_section = (recipe_data.get("eval") or {}).get("dataset")
    if eval_section and eval_section != recipe_data.get("dataset"):
        sections.append(("eval.dataset", eval_section))
    problems: list[str] = []
    for where, section in sections:
        if not isinstance(section, Mapping):
            continue
        component = registry.find("dataset", str(section.get("name")))
        if component is None and where != "dataset":  # the recipe checks named an unknown `dataset`
            from prunekit.registry import unknown_name_message

            problems.append(f"{where}.name: "
                            f"{unknown_name_message('dataset', str(section.get('name')), registry.names('dataset'))}")
        if component is None or component.schema is None:
            continue
        options = {k: v for k, v in section.items() if k != "name"}
        if where != "dataset":  # the recipe checks do not look inside eval.dataset
            invalid = validate_options(component.schema, options, where)
            if invalid:
                problems.extend(invalid)
                continue
        config = instantiate_schema(component.schema, options)
        found = list(config.preflight() or []) if hasattr(config, "preflight") else []
        if not found and hasattr(config, "probe_samples"):
            found = list(config.probe_samples() or [])
        problems.extend(p.replace("set dataset.", f"set {where}.") for p in found)
    return problems


def preflight_budget(recipe_data: Mapping[str, Any], registry: Any) -> list[str]:
    """What ``prunekit validate`` says about the files a recipe's budget reads (a latency table): the
    budget schema's ``preflight()``, one line per problem; never imports torch."""
    from prunekit.config import instantiate_schema

    section = recipe_data.get("budget")
    if not isinstance(section, Mapping):
        return []
    component = registry.find("budget", str(section.get("name")))
    if component is None or component.schema is None or not hasattr(component.schema, "preflight"):
        return []
    options = {k: v for k, v in section.items() if k != "name"}
    return list(instantiate_schema(component.schema, options).preflight() or [])
