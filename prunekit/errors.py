"""Errors that the CLI turns into one clear line and a non-zero exit, never a traceback."""

from __future__ import annotations


class PrunekitError(Exception):
    """Base of every error prunekit reports to a user as a message."""

    exit_code = 1


class PluginError(PrunekitError):
    """A plugin failed to import, registers something invalid, or a name is unknown."""

    exit_code = 2


class RecipeError(PrunekitError):
    """A recipe is invalid; ``problems`` holds one message per problem."""

    exit_code = 2

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class RunDirError(PrunekitError):
    """The run directory exists and would be overwritten, or cannot be resumed."""

    exit_code = 2


class MissingPathError(PrunekitError):
    """A model, dataset or weights path is missing; the message names the override that sets it."""

    exit_code = 2


class UsageError(PrunekitError):
    """A command-line argument is invalid (outside what a recipe says)."""

    exit_code = 2


class NonFiniteLossError(PrunekitError):
    """Training produced a NaN/inf loss; the last good checkpoint is kept."""

    exit_code = 1


class PeerRankError(PrunekitError):
    """Another rank failed (it reported the error itself); this rank stops with the same exit code."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class CheckpointError(PrunekitError):
    """A checkpoint cannot be trusted (it holds objects other than tensors) or cannot be used."""

    exit_code = 1


class RunFailedError(PrunekitError):
    """A run stopped on an error of its machine (a full disk, a permission) or an unexpected one; the
    message is one line, run.json records it, run.log holds the traceback."""

    exit_code = 1
