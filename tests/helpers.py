"""Shared helpers for the test-suite: plain functions and constants, imported explicitly where used.

Fixtures live in tests/conftest.py; the tiny U-Nets and masks of the tests/test_unet_*.py files in
tests/unet_helpers.py. ``tests`` is on the import path (``pythonpath`` in pyproject.toml), so test
files import these as ``from helpers import ...``. Heavy libraries (torch, transformers, prunekit's
runner) are imported inside the functions that need them, so light tests stay light.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"

TINY_RECIPES = REPO / "recipes" / "tiny"
SMOKE = TINY_RECIPES / "aptp_smoke.yaml"
DENSE = TINY_RECIPES / "dense_finetune.yaml"
POSTTRAIN_RECIPES = REPO / "recipes" / "posttrain"
# One optimizer step of dense_finetune on 8 samples of 16 px: a complete run in a few seconds.
ONE_STEP = ["dataset.size=8", "dataset.resolution=16", "engine.micro_batch=4", "engine.zero_stage=0",
            "method.warmup_steps=0", "method.steps=1", "engine.checkpoint_every=1", "engine.threads=1"]


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run the body with ``count`` torch intra-op threads (``None``: leave the count as it is), and
    restore the count found on entry afterwards."""
    import torch

    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_recipe(recipe: str | Path, overrides: Sequence[str] = (), *, output: Path, registry=None, **kwargs):
    """Load ``recipe`` with ``overrides`` and execute it into ``output`` without console logging, with
    ``registry`` (default: the process-wide one) for both; returns ``(run, metrics)``."""
    from prunekit.recipe import load_recipe
    from prunekit.registry import get_registry
    from prunekit.runner import execute

    registry = get_registry() if registry is None else registry
    recipe = load_recipe(recipe, list(overrides), registry=registry)
    return execute(recipe, registry, output=output, console_log=False, **kwargs)


def install_fake_distribution(site: Path, dist: str, entry_points: dict[str, str], modules: dict[str, str]) -> Path:
    """Make ``dist`` discoverable by importlib.metadata from ``site`` (as pip would), without pip."""
    info = site / f"{dist.replace('-', '_')}-0.1.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1.0\n")
    lines = ["[prunekit]", *(f"{name} = {target}" for name, target in entry_points.items())]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    for name, source in modules.items():
        (site / f"{name}.py").write_text(source)
    return site


def run_cli(*args: str, cwd: Path | None = None, extra_path: Path | None = None, timeout: float = 600):
    env = dict(os.environ)
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(extra_path), env.get("PYTHONPATH", "")]))
    return subprocess.run(
        [sys.executable, "-m", "prunekit", *args],
        cwd=cwd or REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def kill_at_checkpoint(proc: subprocess.Popen, latest: Path, steps: Iterable[str], *, deadline: float,
                       kill: Callable[[int], Any] | None = None) -> None:
    """Poll until the checkpoint pointer ``latest`` names one of ``steps``, then kill ``proc`` (default:
    SIGKILL to its process group; or ``kill(pid)``). Returns once killed, when ``proc`` ends by itself,
    or at ``deadline`` (a ``time.time()``), whichever comes first."""
    steps = tuple(steps)
    while time.time() < deadline and proc.poll() is None:
        if latest.is_file() and latest.read_text().strip() in steps:
            if kill is None:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                kill(proc.pid)
            return
        time.sleep(0.02)


def toy_problem(seed: int = 0):
    """A small regression MLP for the engine: ``(model, loss_fn, batch_fn)``, 64 samples in micro-batches
    of 8; the loss draws from the per-step RNG, so a resume must restore it exactly."""
    import torch

    from prunekit.engine import micro_batch_indices

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 8, generator=g)
    y = x @ torch.randn(8, 1, generator=g)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))

    def batch_fn(index):
        idx = micro_batch_indices(64, 8, index, seed=0)
        return x[idx], y[idx]

    def loss_fn(module, batch, step):
        xb, yb = batch
        noise = 0.01 * torch.randn_like(yb)  # uses the per-step RNG: resume must restore it exactly
        return ((module(xb) - yb - noise) ** 2).mean(), {"aux": 1.0}

    return model, loss_fn, batch_fn


def write_tar(path: Path, members: Iterable[tuple[str, bytes]]) -> Path:
    """A tar file (a webdataset shard) holding ``members`` as ``(name, payload)``, in that order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def save_tiny_clip(folder):
    """A randomly initialised 1-layer CLIP with a processor, saved like a downloaded one (offline)."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from prunekit.tiny import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer(32)
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=32, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2),
        projection_dim=16)
    CLIPModel(config).save_pretrained(folder)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder
