"""The Reporter protocol: how a training run talks to whoever runs it.

The worker implements it by writing events and checkpoints to the store; a notebook can
use PrintReporter. Training code never imports the service.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class Reporter(Protocol):
    def on_event(self, level: str, message: str, data: dict | None = None) -> None:
        """A human-readable message event. level is "info" | "warn" | "error"."""

    def on_step(self, step: int, total_steps: int, metrics: dict[str, float]) -> None:
        """A metrics event after an optimizer step. metrics use OpenAI's names:
        train_loss, train_mean_token_accuracy, valid_loss, valid_mean_token_accuracy,
        full_valid_loss, full_valid_mean_token_accuracy (the last two at epoch ends)."""

    def on_checkpoint(self, step: int, path: Path, metrics: dict[str, float]) -> None:
        """A complete, atomically written adapter checkpoint now exists at `path`."""

    def should_stop(self) -> str | None:
        """Polled every step: None to continue, "cancel" or "pause" to stop promptly."""


class PrintReporter:
    """Reporter for notebooks and scripts: prints events and metrics, never stops."""

    def on_event(self, level: str, message: str, data: dict | None = None) -> None:
        print(f"[{level}] {message}")

    def on_step(self, step: int, total_steps: int, metrics: dict[str, float]) -> None:
        shown = " ".join(f"{k}={v:.4f}" for k, v in metrics.items())
        print(f"step {step}/{total_steps} {shown}")

    def on_checkpoint(self, step: int, path: Path, metrics: dict[str, float]) -> None:
        print(f"checkpoint step {step} -> {path}")

    def should_stop(self) -> str | None:
        return None
