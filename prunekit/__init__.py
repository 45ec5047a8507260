"""prunekit: config-driven, plugin-based pruning of text-to-image diffusion models."""

__version__ = "0.1.0"

# What a diffusers `model_index.json` names as ["prunekit", CLASS] (diffusers resolves it with getattr on
# this package); imported lazily so that `import prunekit` stays light.
_LAZY = {
    "PrunedUNet2DConditionModel": "prunekit.unet.pruned_model",
    "PrunedPixArtTransformer2DModel": "prunekit.transformer.pruned_model",
    "PrunedSD3Transformer2DModel": "prunekit.transformer.pruned_model",
    "PrunedFluxTransformer2DModel": "prunekit.transformer.pruned_model",
    "PromptRouter": "prunekit.mixture_models",
    "ExpertUNets": "prunekit.mixture_models",
    "PromptRoutedPipeline": "prunekit.pipeline",
    "PromptRoutedPipelineOutput": "prunekit.pipeline",
    # diffusers' loader finds a custom library's load/save methods through these base classes
    "ModelMixin": "diffusers",
    "DiffusionPipeline": "diffusers",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'prunekit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
