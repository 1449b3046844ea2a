"""The loss history of a run (report/loss_history.json) and its chart (report/loss.png).

History entries are `{step, loss?, evalLoss?}`, one per step with a logged training loss
or an evaluation; step 0 carries the base model's eval loss, the point the curve starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def loss_history(
    log_history: list[dict[str, Any]], base_eval_loss: float | None
) -> list[dict[str, Any]]:
    """Merge the trainer's log entries into one entry per step, in step order."""
    by_step: dict[int, dict[str, Any]] = {}
    if base_eval_loss is not None:
        by_step[0] = {"step": 0, "evalLoss": base_eval_loss}
    for entry in log_history:
        step = entry.get("step")
        if step is None:
            continue
        for source, target in (("loss", "loss"), ("eval_loss", "evalLoss")):
            if source in entry:
                by_step.setdefault(step, {"step": step})[target] = float(entry[source])
    return [by_step[step] for step in sorted(by_step)]


def final_train_loss(history: list[dict[str, Any]], window: int) -> float | None:
    """Mean training loss over the last `window` logged steps (one epoch's worth): a
    single step's loss depends too much on which batch it was."""
    losses = [entry["loss"] for entry in history if "loss" in entry]
    if not losses:
        return None
    tail = losses[-max(window, 1) :]
    return sum(tail) / len(tail)


def plot_loss(history: list[dict[str, Any]], path: Path, title: str) -> None:
    """Training and eval loss against the step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(7, 4), dpi=100)
    try:
        train = [(e["step"], e["loss"]) for e in history if "loss" in e]
        evaluation = [(e["step"], e["evalLoss"]) for e in history if "evalLoss" in e]
        if train:
            axes.plot(*zip(*train, strict=True), label="training loss", linewidth=1.2)
        if evaluation:
            axes.plot(*zip(*evaluation, strict=True), label="eval loss", marker="o")
        axes.set_xlabel("optimizer step")
        axes.set_ylabel("loss")
        axes.set_title(title)
        axes.grid(alpha=0.3)
        axes.legend()
        figure.tight_layout()
        figure.savefig(path)
    finally:
        pyplot.close(figure)
