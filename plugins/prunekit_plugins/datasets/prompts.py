"""Prompt-only datasets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunekit.config import option


@dataclass
class PromptsConfig:
    items: list[str] = option([], help="inline prompts")
    file: str | None = option(None, help="text file, one prompt per line")
    limit: int = option(0, ge=0, help="use only the first N prompts (0 = all)")

    def check(self) -> list[str]:
        if bool(self.items) == bool(self.file):
            return ["give exactly one of 'items' (a list) or 'file' (a path)"]
        return []

    def preflight(self) -> list[str]:
        if self.file and not Path(self.file).is_file():
            return [f"prompt file {self.file} does not exist (set dataset.file=PATH)"]
        return []

    def probe_samples(self) -> list[str]:
        """``[]`` when there is at least one usable (decodable, non-empty) prompt."""
        prompts, rejected, examples = read_prompts(self)
        if prompts:
            return []
        where = f"prompt file {self.file}" if self.file else "dataset.items"
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(rejected.items()))
        return [f"{where} holds no usable prompt" + (f" ({reasons}); first: {examples[0]}" if examples else "")]


def read_prompts(config: PromptsConfig) -> tuple[list[str], dict[str, int], list[str]]:
    """``(prompts, rejected counts by reason, first rejected lines)``. Blank lines of a file are
    layout and ignored; a line that is not UTF-8 is ``bad_metadata``; an empty inline item is
    ``empty_caption``."""
    rejected: dict[str, int] = {}
    examples: list[str] = []

    def reject(reason: str, detail: str) -> None:
        rejected[reason] = rejected.get(reason, 0) + 1
        if len(examples) < 5:
            examples.append(detail)

    prompts: list[str] = []
    if config.file:
        for n, raw in enumerate(Path(config.file).read_bytes().split(b"\n"), 1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as exc:
                reject("bad_metadata", f"{config.file}:{n}: not UTF-8 ({exc.reason})")
                continue
            if line:
                prompts.append(line)
    else:
        for n, item in enumerate(config.items):
            if str(item).strip():
                prompts.append(str(item))
            else:
                reject("empty_caption", f"dataset.items[{n}]: empty prompt")
    return prompts, rejected, examples


class PromptList:
    def __init__(self, prompts: list[str], rejected: dict[str, int] | None = None,
                 rejected_examples: list[str] | None = None) -> None:
        self.prompts = prompts
        self.rejected = dict(rejected or {})  # dropped while reading, by reason (see read_prompts)
        self.rejected_examples = list(rejected_examples or [])

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"prompt": self.prompts[index]}


def build_prompts(config: PromptsConfig) -> PromptList:
    prompts, rejected, examples = read_prompts(config)
    if config.limit:
        prompts = prompts[: config.limit]
    return PromptList(prompts, rejected, examples)
