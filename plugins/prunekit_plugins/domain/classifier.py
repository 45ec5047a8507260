"""The domain classifier: a small CNN that reads the slots of a domain image (see ``slots.py``).

It is both the judge of prompt alignment and the feature extractor of the domain FID (its
``feature_dim``-wide penultimate layer plays the part Inception's pool layer plays for FID).
Weights are stored as ``config.json`` + ``model.safetensors``; the shipped ones live in
``assets/classifier``. This module imports torch: plugin registration never imports it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from prunekit_plugins.domain.slots import FIELD_CLASSES

ASSETS = Path(__file__).resolve().parent / "assets"
SHIPPED_CLASSIFIER = ASSETS / "classifier"


def default_classifier_config() -> dict[str, Any]:
    return {"widths": [16, 32, 64], "feature_dim": 64, "resolution": 32, "field_classes": list(FIELD_CLASSES)}


class DomainClassifier(nn.Module):
    """uint8 (N, 3, H, W) images -> one logit tensor per target field; ``features`` gives FID features."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.config = {**default_classifier_config(), **(config or {})}
        layers: list[nn.Module] = []
        channels = 3
        for width in self.config["widths"]:
            for _ in range(2):
                layers += [nn.Conv2d(channels, width, 3, padding=1), nn.GroupNorm(8, width), nn.SiLU()]
                channels = width
            layers.append(nn.MaxPool2d(2))
        self.body = nn.Sequential(*layers)
        side = self.config["resolution"] // 2 ** len(self.config["widths"])
        # Flatten, not global pooling: where an object sits decides its slot.
        self.neck = nn.Sequential(nn.Flatten(), nn.Linear(channels * side * side, self.config["feature_dim"]), nn.SiLU())
        self.head = nn.Linear(self.config["feature_dim"], sum(self.config["field_classes"]))
        self.num_features = int(self.config["feature_dim"])

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 in [0, 255] (or float in [-1, 1]) -> float in [-1, 1] at the classifier's resolution."""
        x = images.float() / 127.5 - 1.0 if images.dtype == torch.uint8 else images.float()
        size = self.config["resolution"]
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return x.to(self.head.weight.device)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.neck(self.body(self.prepare(images)))

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return list(torch.split(self.head(self.features(images)), self.config["field_classes"], dim=1))


class ClassifierFeatures(nn.Module):
    """The feature module torchmetrics' FID takes: uint8 images -> (N, num_features)."""

    def __init__(self, classifier: DomainClassifier) -> None:
        super().__init__()
        self.classifier = classifier
        self.num_features = classifier.num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(images)


def save_classifier(model: DomainClassifier, folder: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {**model.config, **({"metadata": metadata} if metadata else {})}
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    return folder


def load_classifier(folder: str | Path | None = None, device: str = "cpu") -> DomainClassifier:
    """The classifier stored in ``folder`` (default: the shipped one), in eval mode."""
    from safetensors.torch import load_file

    folder = Path(folder) if folder is not None else SHIPPED_CLASSIFIER
    config = json.loads((folder / "config.json").read_text())
    config.pop("metadata", None)
    model = DomainClassifier(config)
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    return model.eval().to(device)


@torch.no_grad()
def predict_rows(model: DomainClassifier, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """LongTensor (N, fields): the arg-max class of each field for images (N, 3, H, W)."""
    rows = [
        torch.stack([logits.argmax(1) for logits in model(images[start : start + batch_size])], dim=1).cpu()
        for start in range(0, len(images), batch_size)
    ]
    return torch.cat(rows) if rows else torch.zeros(0, len(FIELD_CLASSES), dtype=torch.long)
