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


class PromptList:
    def __init__(self, prompts: list[str]) -> None:
        self.prompts = prompts

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"prompt": self.prompts[index]}


def build_prompts(config: PromptsConfig) -> PromptList:
    prompts = list(config.items)
    if config.file:
        prompts = [line.strip() for line in Path(config.file).read_text().splitlines() if line.strip()]
    if config.limit:
        prompts = prompts[: config.limit]
    return PromptList(prompts)
