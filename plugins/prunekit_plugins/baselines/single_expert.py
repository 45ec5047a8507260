"""APTP's stages for a method whose result is one architecture used for every prompt.

The pruned model is exported exactly like an APTP mixture with one expert (``artifacts/mixture/``:
manifest, a ``single_code`` router, a ``constant`` prompt encoder, ``experts/expert_00``), so every
pruned method is loaded, generated from and evaluated the same way.
"""

from __future__ import annotations

from typing import Any

from prunekit_plugins.aptp.method import APTP
from prunekit_plugins.baselines.single_code import (
    ConstantPromptEncoder,
    SingleCodeRouterConfig,
    build_single_code_router,
)


class SingleArchitectureMethod(APTP):
    """Base of ``norm`` and ``uni_arch``: the encode / fine-tune / export stages of APTP, one code."""

    init_logit: float = 3.0

    def _build_prompt_encoder(self, run: Any) -> Any:
        return ConstantPromptEncoder()

    def _new_router(self) -> Any:
        return build_single_code_router(SingleCodeRouterConfig(init_logit=self.init_logit),
                                        embed_dim=self.embed_dim, num_units=self.prunable.num_units)

    def _deployed_sections(self) -> dict[str, Any]:
        return {"prompt_encoder": {"name": "constant", "dim": self.encoder.dim},
                "router": {"name": "single_code", "init_logit": self.init_logit}}

    def _one_expert_routing(self, mask: Any) -> dict[str, Any]:
        """Record ``mask`` as the one expert every sample goes to, in the routing table APTP's
        fine-tuning and export stages read; returns what APTP's ``route`` stage returns."""
        import json

        n = len(self.encoded)
        self.run_.on_main(lambda: self.run_.artifact("routing.json").write_text(
            json.dumps({"expert_of_sample": [0] * n, "masks": [mask.to(int).tolist()]})))
        dense, macs = self.budget.dense, self.budget.cost_of(mask)
        self.run_.log.info("architecture: %d of %d units, MACs ratio %.4f (target %.4f)",
                           int(mask.sum()), self.prunable.num_units, macs / dense, self.budget.target)
        return {"counts": [n], "macs": [macs], "macs_ratio": [macs / dense], "mean_macs_ratio": macs / dense,
                "dense_macs": dense, "target": float(self.budget.target)}

    def _finish(self, run: Any, result: dict[str, Any]) -> dict[str, Any]:
        # The model entry goes in before APTP's evaluate stage and report read the metrics.
        return super()._finish(run, self._with_model_entry(result))

    def _with_model_entry(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """Add the exported model's MACs to the one expert entry, and a ``model`` entry."""
        from prunekit.mixture import read_manifest

        folder = self.run_.artifact("mixture")
        manifest = read_manifest(folder)
        entry = manifest["experts"][0]
        metrics["experts"] = [{**metrics["experts"][0], "macs": entry["macs"], "share": 1.0}]
        metrics["model"] = {"path": str(folder / entry["path"]), "format": "prunekit.unet.expert",
                            "macs": entry["macs"], "macs_ratio": entry["macs_ratio"],
                            "dense_macs": manifest["dense_macs"]}
        return metrics
