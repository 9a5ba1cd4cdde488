"""A Reporter for tests of the training methods: records everything, can ask to stop."""

from __future__ import annotations

from pathlib import Path


class ListReporter:
    """Records everything; answers should_stop with `action` on poll number `stop_on_poll` (1-based)."""

    def __init__(self, action: str | None = None, stop_on_poll: int = 0):
        self.events, self.steps, self.checkpoints = [], [], []
        self.action, self.stop_on_poll, self.polls = action, stop_on_poll, 0

    def on_event(self, level, message, data=None):
        self.events.append((level, message, data))

    def on_step(self, step, total_steps, metrics):
        self.steps.append((step, total_steps, metrics))

    def on_checkpoint(self, step, path, metrics):
        self.checkpoints.append((step, Path(path), metrics))

    def should_stop(self):
        self.polls += 1
        return self.action if self.polls == self.stop_on_poll else None
