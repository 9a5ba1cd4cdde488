"""Pure views of a job's results that the CLI (a client of the API) and the service both show: which
checkpoint is best, and the before/after eval table. No service or ml imports: the CLI uses these on
objects it got over HTTP."""

from __future__ import annotations

# How the best checkpoint is chosen, per method: the first metric that some checkpoint carries
# wins; (metric, higher_is_better). The train_* fallbacks apply to jobs without a validation file.
BEST_BY = {
    "reinforcement": (("valid_reward_mean", True), ("train_reward_mean", True)),
    "default": (("full_valid_loss", False), ("valid_loss", False), ("train_loss", False)),
}


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def best_index(method: str, scored_steps: list[tuple[int, dict]]) -> tuple[int | None, str | None]:
    """Which of [(step, metrics), ...] is best for `method` (see BEST_BY), and by which metric.
    Ties go to the later step: it has trained longer for the same score."""
    for metric, higher in BEST_BY.get(method, BEST_BY["default"]):
        candidates = [(m[metric], step, i) for i, (step, m) in enumerate(scored_steps) if _number(m.get(metric))]
        if candidates:
            if higher:
                return max(candidates, key=lambda c: (c[0], c[1]))[2], metric
            return min(candidates, key=lambda c: (c[0], -c[1]))[2], metric
    return None, None


def comparison_table(criteria: list[str], rows: list[dict]) -> str:
    """The comparison as a fixed-width text table (the event's message and `modelmill jobs report`)."""
    head = ["run", "passed", *criteria, "model"]
    body = [[r["label"], f"{r['passed']}/{r['total']}", *(f"{r['scores'].get(c, 0.0):.3f}" for c in criteria),
             r["model"]] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip() for line in [head, *body]]
    return "Before/after eval (mean score per criterion):\n" + "\n".join(lines)
