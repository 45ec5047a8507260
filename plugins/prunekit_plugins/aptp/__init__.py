"""APTP's own components: the sentence-transformer prompt encoder, the router and the method; and its
section of the run report (training curves, through ``prunekit_report_sections``)."""

from __future__ import annotations

from prunekit.hookspecs import hookimpl
from prunekit_plugins.aptp.method import APTP, APTPConfig
from prunekit_plugins.aptp.prompt_encoder import SentenceTransformerConfig, SentenceTransformerEncoder
from prunekit_plugins.aptp.report import prunekit_report_sections  # noqa: F401  (a hook of this plugin)
from prunekit_plugins.aptp.router import APTPRouterConfig, build_router


@hookimpl
def prunekit_register_components(register) -> None:
    register("prompt_encoder", "sentence_transformer", SentenceTransformerEncoder, schema=SentenceTransformerConfig,
             doc="Frozen sentence-transformer (default: packaged all-MiniLM-L6-v2), cached per prompt")
    register("router", "aptp", build_router, schema=APTPRouterConfig, provides=("trainable",),
             doc="APTP router: linear architecture predictor + N codes, Sinkhorn OT in training, cosine at inference")
    register("method", "aptp", APTP, schema=APTPConfig,
             doc="APTP: prune into prompt-routed experts, fine-tune each on its prompts, export a mixture")
