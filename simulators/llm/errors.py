"""The model layer's two errors: no answer at all, or an answer that cannot be used.

They sit in a module of their own, importing nothing of ours, because every other module of the
layer raises them: the tool-call parser, the backends and the shared chat interface.
"""

from __future__ import annotations

from typing import Protocol


class Spend(Protocol):
    """What an answer cost: any raw completion has these counts."""

    prompt_tokens: int
    completion_tokens: int
    retries: int


class ModelError(RuntimeError):
    """A backend could not produce an answer (transport, server or engine error)."""


class ModelUnavailable(ModelError):
    """The model's server or engine stayed down past its bound (`server_wait_s`, engine
    restarts): every further request would fail the same way, so the run stops instead of
    dead-lettering all its work."""


class ModelOutputError(ValueError):
    """A model answered, but the answer cannot be used (not JSON, wrong schema, truncated)."""

    def __init__(self, message: str, raw_output: str = "") -> None:
        super().__init__(message)
        self.raw_output = raw_output
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.retries = 0
        """What the unusable answer cost: the engine spent these tokens all the same, so the
        caller counts them (`spent` sets them where the raw completion is known)."""

    def spent(self, raw: Spend) -> ModelOutputError:
        """This error with the token counts of the answer it rejects."""
        self.prompt_tokens = raw.prompt_tokens
        self.completion_tokens = raw.completion_tokens
        self.retries = raw.retries
        return self
