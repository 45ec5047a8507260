"""Numeric pieces of evaluation: CMMD, rank correlation, and feature extractors from local weights.

Everything here works offline: the FID Inception network and CLIP are loaded from files the user
points at, never downloaded. Weights are read with safetensors or ``torch.load(weights_only=True)``;
nothing is unpickled.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prunekit.errors import MissingPathError

if TYPE_CHECKING:
    from transformers import CLIPModel

CMMD_SIGMA = 10.0
CMMD_SCALE = 1000.0


def cmmd(x: Any, y: Any, *, sigma: float = CMMD_SIGMA, scale: float = CMMD_SCALE) -> float:
    """CMMD of Jayasumana et al. (2024): squared MMD between two embedding sets with the Gaussian RBF
    kernel ``exp(-||a - b||^2 / (2 sigma^2))``, σ = 10, times 1000.

    ``x`` (n, d) and ``y`` (m, d) are used as given; the CMMD paper L2-normalises CLIP image embeddings
    first (the ``cmmd`` metric plugin does). Like the reference implementation this is the biased
    estimator: kernel means include the diagonal terms.
    """
    import torch

    a = torch.as_tensor(x, dtype=torch.float64)
    b = torch.as_tensor(y, dtype=torch.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"cmmd needs two (n, d) matrices with the same d, got {tuple(a.shape)} and {tuple(b.shape)}")
    gamma = 1.0 / (2.0 * sigma**2)

    def mean_kernel(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        sq = (p * p).sum(1)[:, None] + (q * q).sum(1)[None, :] - 2.0 * p @ q.T
        return torch.exp(-gamma * sq.clamp_min(0)).mean()

    return float(scale * (mean_kernel(a, a) + mean_kernel(b, b) - 2.0 * mean_kernel(a, b)))


def rankdata(values: Sequence[float]) -> list[float]:
    """Ranks starting at 1, ties sharing their average rank (what Spearman's ρ needs)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (Pearson correlation of tie-averaged ranks); NaN when undefined."""
    if len(x) != len(y):
        raise ValueError(f"spearman: {len(x)} x values but {len(y)} y values")
    if len(x) < 2:
        return math.nan
    rx, ry = rankdata(list(x)), rankdata(list(y))
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    vx = sum((a - mx) ** 2 for a in rx)
    vy = sum((b - my) ** 2 for b in ry)
    if vx == 0 or vy == 0:
        return math.nan
    return cov / math.sqrt(vx * vy)


# -- weights -------------------------------------------------------------------------------------

def load_state_dict(path: str | Path, *, key: str) -> dict[str, Any]:
    """A state dict from ``.safetensors`` or a plain tensor-only torch file (``weights_only=True``).

    ``key`` is the recipe key that sets ``path``; every error names it.
    """
    import torch

    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingPathError(f"{path} does not exist (set {key}=FILE)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise MissingPathError(f"{path} is not a safetensors file or a tensor-only torch state dict "
                               f"({type(exc).__name__}); set {key}=FILE") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MissingPathError(f"{path} does not hold a state dict of tensors (set {key}=FILE)")
    return state


# -- FID InceptionV3 -------------------------------------------------------------------------------

def _inception_classes() -> dict[str, type]:
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Conv(nn.Module):
        """Conv without bias + BatchNorm(eps=1e-3) + ReLU: the TF graph's unit."""

        def __init__(self, cin: int, cout: int, kernel: Any, stride: int = 1, padding: Any = 0) -> None:
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
            self.bn = nn.BatchNorm2d(cout, eps=0.001)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.relu(self.bn(self.conv(x)))

    def avg_pool(x: torch.Tensor) -> torch.Tensor:
        # The TF graph's average pool ignores padded zeros.
        return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)

    class BlockA(nn.Module):
        def __init__(self, cin: int, pool: int) -> None:
            super().__init__()
            self.branch1x1 = Conv(cin, 64, 1)
            self.branch5x5_1, self.branch5x5_2 = Conv(cin, 48, 1), Conv(48, 64, 5, padding=2)
            self.branch3x3dbl_1 = Conv(cin, 64, 1)
            self.branch3x3dbl_2, self.branch3x3dbl_3 = Conv(64, 96, 3, padding=1), Conv(96, 96, 3, padding=1)
            self.branch_pool = Conv(cin, pool, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                              self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                              self.branch_pool(avg_pool(x))], 1)

    class BlockB(nn.Module):
        def __init__(self, cin: int) -> None:
            super().__init__()
            self.branch3x3 = Conv(cin, 384, 3, stride=2)
            self.branch3x3dbl_1 = Conv(cin, 64, 1)
            self.branch3x3dbl_2, self.branch3x3dbl_3 = Conv(64, 96, 3, padding=1), Conv(96, 96, 3, stride=2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                              F.max_pool2d(x, 3, stride=2)], 1)

    class BlockC(nn.Module):
        def __init__(self, cin: int, c7: int) -> None:
            super().__init__()
            row: dict[str, Any] = dict(kernel=(1, 7), padding=(0, 3))
            col: dict[str, Any] = dict(kernel=(7, 1), padding=(3, 0))
            self.branch1x1 = Conv(cin, 192, 1)
            self.branch7x7_1, self.branch7x7_2, self.branch7x7_3 = Conv(cin, c7, 1), Conv(c7, c7, **row), Conv(c7, 192, **col)
            self.branch7x7dbl_1 = Conv(cin, c7, 1)
            self.branch7x7dbl_2, self.branch7x7dbl_3 = Conv(c7, c7, **col), Conv(c7, c7, **row)
            self.branch7x7dbl_4, self.branch7x7dbl_5 = Conv(c7, c7, **col), Conv(c7, 192, **row)
            self.branch_pool = Conv(cin, 192, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
            d = x
            for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                          self.branch7x7dbl_5):
                d = layer(d)
            return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(avg_pool(x))], 1)

    class BlockD(nn.Module):
        def __init__(self, cin: int) -> None:
            super().__init__()
            self.branch3x3_1, self.branch3x3_2 = Conv(cin, 192, 1), Conv(192, 320, 3, stride=2)
            self.branch7x7x3_1 = Conv(cin, 192, 1)
            self.branch7x7x3_2 = Conv(192, 192, (1, 7), padding=(0, 3))
            self.branch7x7x3_3 = Conv(192, 192, (7, 1), padding=(3, 0))
            self.branch7x7x3_4 = Conv(192, 192, 3, stride=2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
            return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, stride=2)], 1)

    class BlockE(nn.Module):
        def __init__(self, cin: int, max_pool: bool) -> None:
            super().__init__()
            # The TF FID graph's last block pools with max instead of average (a quirk FID depends on).
            self.max_pool = max_pool
            self.branch1x1 = Conv(cin, 320, 1)
            self.branch3x3_1 = Conv(cin, 384, 1)
            self.branch3x3_2a = Conv(384, 384, (1, 3), padding=(0, 1))
            self.branch3x3_2b = Conv(384, 384, (3, 1), padding=(1, 0))
            self.branch3x3dbl_1, self.branch3x3dbl_2 = Conv(cin, 448, 1), Conv(448, 384, 3, padding=1)
            self.branch3x3dbl_3a = Conv(384, 384, (1, 3), padding=(0, 1))
            self.branch3x3dbl_3b = Conv(384, 384, (3, 1), padding=(1, 0))
            self.branch_pool = Conv(cin, 192, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b3 = self.branch3x3_1(x)
            d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
            pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else avg_pool(x)
            return torch.cat([self.branch1x1(x), self.branch3x3_2a(b3), self.branch3x3_2b(b3),
                              self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d), self.branch_pool(pooled)], 1)

    class FIDInceptionV3(nn.Module):
        """The TF 2015-12-05 InceptionV3 graph used for FID, returning the 2048-d pool features.

        Takes uint8 images (N, 3, H, W); resizes them to 299 as the TF graph did (TF1
        ``resize_bilinear``: no half-pixel centres, no antialiasing — what torch-fidelity and
        torchmetrics' built-in extractor reproduce) and scales to [-1, 1]. Parameter names follow the torchvision /
        pytorch-fid / torch-fidelity layout, so their ``pt_inception-2015-12-05`` weights load as is.
        """

        num_features = 2048
        input_size = 299

        def __init__(self) -> None:
            super().__init__()
            self.Conv2d_1a_3x3 = Conv(3, 32, 3, stride=2)
            self.Conv2d_2a_3x3 = Conv(32, 32, 3)
            self.Conv2d_2b_3x3 = Conv(32, 64, 3, padding=1)
            self.Conv2d_3b_1x1 = Conv(64, 80, 1)
            self.Conv2d_4a_3x3 = Conv(80, 192, 3)
            self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = BlockA(192, 32), BlockA(256, 64), BlockA(288, 64)
            self.Mixed_6a = BlockB(288)
            self.Mixed_6b, self.Mixed_6c = BlockC(768, 128), BlockC(768, 160)
            self.Mixed_6d, self.Mixed_6e = BlockC(768, 160), BlockC(768, 192)
            self.Mixed_7a = BlockD(768)
            self.Mixed_7b, self.Mixed_7c = BlockE(1280, max_pool=False), BlockE(2048, max_pool=True)

        @torch.no_grad()
        def forward(self, images: torch.Tensor) -> torch.Tensor:
            if images.dtype != torch.uint8:
                raise TypeError(f"FIDInceptionV3 takes uint8 images, got {images.dtype}")
            x = images.to(self.Conv2d_1a_3x3.conv.weight.dtype)
            x = resize_bilinear_tf1(x, self.input_size, self.input_size)
            x = (x - 128) / 128
            x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
            x = F.max_pool2d(x, 3, stride=2)
            x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, stride=2)
            for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                         "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"):
                x = getattr(self, name)(x)
            return F.adaptive_avg_pool2d(x, 1).flatten(1).float()

    return {"FIDInceptionV3": FIDInceptionV3}


def resize_bilinear_tf1(x: Any, height: int, width: int) -> Any:
    """TensorFlow 1's ``resize_bilinear`` (align_corners=False): output pixel ``i`` samples the input at
    ``i * in / out`` (no half-pixel offset), clamped at the last pixel; separable in H and W. The FID
    Inception graph was defined on this resize, so reference FIDs depend on it."""
    import torch

    def along(t: torch.Tensor, dim: int, size: int) -> torch.Tensor:
        n = t.shape[dim]
        if n == size:
            return t
        src = torch.arange(size, dtype=torch.float32) * torch.tensor(n / size, dtype=torch.float32)  # TF: float32
        lo = src.floor().long().clamp(max=n - 1)
        hi = (lo + 1).clamp(max=n - 1)
        w = (src - lo).to(t.dtype)
        shape = [1] * t.ndim
        shape[dim] = size
        a, b = t.index_select(dim, lo.to(t.device)), t.index_select(dim, hi.to(t.device))
        return a + (b - a) * w.to(t.device).view(shape)

    return along(along(x, 2, height), 3, width)


def fid_inception() -> Any:
    """An uninitialised :class:`FIDInceptionV3` (random weights; load real ones with :func:`load_fid_inception`)."""
    return _inception_classes()["FIDInceptionV3"]()


# The classifier head and BN step counters of the published files are not part of the feature path.
_IGNORED_PREFIXES = ("fc.", "AuxLogits.")


def load_fid_inception(path: str | Path, *, key: str = "metrics.fid.inception_weights",
                       device: str = "cpu") -> Any:
    """The FID InceptionV3 with weights from ``path`` (``.safetensors`` or a tensor-only ``.pth``),
    in eval mode. Missing or unexpected tensors are an error naming ``key``."""
    import torch

    state = load_state_dict(path, key=key)
    state = {k: v for k, v in state.items()
             if not k.startswith(_IGNORED_PREFIXES) and not k.endswith("num_batches_tracked")}
    with torch.device("meta"):  # no random initialisation: every tensor comes from the file
        model = fid_inception()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = {k for k in shapes if not k.endswith("num_batches_tracked")}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    wrong = sorted(k for k in expected & set(state) if tuple(state[k].shape) != shapes[k])
    if missing or unexpected or wrong:
        detail = "; ".join(f"{label}: {', '.join(items[:3])}{' ...' if len(items) > 3 else ''}"
                           for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
                           if items)
        raise MissingPathError(f"{path} is not the FID InceptionV3 (pt_inception-2015-12-05) state dict ({detail}); "
                               f"set {key}=FILE")
    state.update({k: torch.tensor(0) for k in shapes if k.endswith("num_batches_tracked")})
    model.load_state_dict({k: v if k.endswith("num_batches_tracked") else v.float() for k, v in state.items()},
                          strict=True, assign=True)
    return model.eval().requires_grad_(False).to(device)


# -- CLIP --------------------------------------------------------------------------------------------

def _clip_wrapper_class() -> type:
    import torch
    from torch import nn

    class ClipFeatures(nn.Module):
        """A ``CLIPModel`` whose ``get_image_features``/``get_text_features`` return tensors.

        transformers 5 returns a ``ModelOutput`` (projected embeddings in ``pooler_output``), which
        torchmetrics' CLIPScore does not expect.
        """

        def __init__(self, model: CLIPModel) -> None:
            super().__init__()
            self.model = model

        @property
        def config(self) -> Any:
            return self.model.config

        @staticmethod
        def _tensor(out: Any) -> torch.Tensor:
            return out if isinstance(out, torch.Tensor) else out.pooler_output

        def get_image_features(self, *args: Any, **kwargs: Any) -> torch.Tensor:
            return self._tensor(self.model.get_image_features(*args, **kwargs))

        def get_text_features(self, *args: Any, **kwargs: Any) -> torch.Tensor:
            return self._tensor(self.model.get_text_features(*args, **kwargs))

    return ClipFeatures


_CLIP_CACHE: dict[tuple[str, str], tuple[Any, Any]] = {}


def load_clip(path: str | Path, *, key: str, device: str = "cpu") -> tuple[Any, Any]:
    """``(model, processor)`` from a local CLIP folder (``save_pretrained`` layout), cached per process
    so ``clip_score`` and ``cmmd`` share one copy. ``model`` is wrapped for torchmetrics."""
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise MissingPathError(f"CLIP folder {folder} does not exist or has no config.json (set {key}=DIR)")
    cache_key = (str(folder.resolve()), str(device))
    if cache_key not in _CLIP_CACHE:
        from transformers import CLIPModel, CLIPProcessor

        model = CLIPModel.from_pretrained(str(folder), local_files_only=True).eval().requires_grad_(False).to(device)
        processor = CLIPProcessor.from_pretrained(str(folder), local_files_only=True)
        _CLIP_CACHE[cache_key] = (_clip_wrapper_class()(model), processor)
    return _CLIP_CACHE[cache_key]


def clip_image_embeddings(images: Any, model: Any, processor: Any, *, batch_size: int = 64) -> Any:
    """L2-normalised CLIP image embeddings (N, d) of uint8 images (N, 3, H, W)."""
    import torch

    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            chunk = [img.cpu() for img in images[start:start + batch_size]]
            pixels = processor(images=chunk, return_tensors="pt")["pixel_values"].to(device)
            emb = model.get_image_features(pixel_values=pixels).float()
            out.append(torch.nn.functional.normalize(emb, dim=-1).cpu())
    return torch.cat(out)


def clip_text_embeddings(prompts: list[str], model: Any, processor: Any, *, batch_size: int = 64) -> Any:
    """L2-normalised CLIP text embeddings (N, d), tokenized as torchmetrics' CLIPScore does (padded per
    batch, cut at the text model's positions), so per-image scores average to its value."""
    import torch

    device = next(model.parameters()).device
    limit = getattr(getattr(model.config, "text_config", None), "max_position_embeddings", None)
    out = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            tokens = processor(text=list(prompts[start:start + batch_size]), return_tensors="pt", padding=True)
            ids, mask = tokens["input_ids"], tokens["attention_mask"]
            if limit is not None:
                ids, mask = ids[..., :limit], mask[..., :limit]
            emb = model.get_text_features(ids.to(device), mask.to(device)).float()
            out.append(torch.nn.functional.normalize(emb, dim=-1).cpu())
    return torch.cat(out)


def clip_scores(images: Any, prompts: list[str], model: Any, processor: Any, *, batch_size: int = 64) -> Any:
    """Per-image CLIP score, ``100 × cos(image, prompt)`` (N,): torchmetrics' CLIPScore is their mean,
    floored at 0."""
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images for {len(prompts)} prompts")
    image = clip_image_embeddings(images, model, processor, batch_size=batch_size)
    text = clip_text_embeddings(prompts, model, processor, batch_size=batch_size)
    return 100 * (image * text).sum(dim=-1)
