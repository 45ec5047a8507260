"""One shared rich console (stderr), so logs and progress bars do not interleave badly, and the
libraries' own logging and progress bars kept off it."""

from __future__ import annotations

from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def quiet_libraries() -> None:
    """Our log and progress bars are the interface; library chatter goes to the log file only."""
    import os

    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import diffusers
    import huggingface_hub
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()
    diffusers.utils.logging.disable_progress_bar()
