"""PNG plots of speedup per iteration (matplotlib, Agg: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: servers and CI have no display

import matplotlib.pyplot as plt  # noqa: E402

from kfoundry.clients.records import RunSummary  # noqa: E402
from kfoundry.clients.report import best_so_far  # noqa: E402


def _axis_label(runs: list[RunSummary]) -> str:
    attempts = [a for run in runs for a in run.attempts if a.rank is not None]
    if attempts and all(a.speedup_vs_eager is not None for a in attempts):
        return "speedup vs eager PyTorch (x)"
    return "speedup (vs eager, else vs torch.compile)"


def plot_run(run: RunSummary, path: Path) -> Path:
    """Every attempt's speedup (failures as crosses on the axis) and the best-so-far line."""
    figure, axes = plt.subplots(figsize=(7, 4), dpi=100)
    try:
        correct = [a for a in run.attempts if a.rank is not None]
        failed = [a for a in run.attempts if a.rank is None]
        axes.scatter([a.iteration for a in correct], [a.rank for a in correct], label="correct attempt", zorder=3)
        axes.scatter([a.iteration for a in failed], [0.0] * len(failed), marker="x", color="tab:red", label="failed attempt", zorder=3)
        series = [(i, b) for i, b in best_so_far(run.attempts) if b is not None]
        if series:
            axes.step([i for i, _ in series], [b for _, b in series], where="post", color="tab:green", label="best so far")
        axes.axhline(1.0, color="grey", linestyle="--", linewidth=1)
        axes.set_xlabel("iteration")
        axes.set_ylabel(_axis_label([run]))
        axes.set_title(f"{run.problem} · {run.model}")
        axes.legend(loc="best", fontsize="small")
        iterations = sorted({a.iteration for a in run.attempts}) or [1]
        axes.set_xticks(iterations)
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.tight_layout()
        figure.savefig(path, format="png")
    finally:
        plt.close(figure)
    return path


def plot_runs(runs: list[RunSummary], path: Path) -> Path:
    """Best-so-far speedup per iteration, one line per problem and model."""
    figure, axes = plt.subplots(figsize=(8, 4.5), dpi=100)
    try:
        for run in runs:
            series = [(i, b) for i, b in best_so_far(run.attempts) if b is not None]
            if series:
                axes.step([i for i, _ in series], [b for _, b in series], where="post", marker="o", label=f"{run.problem} · {run.model}")
        axes.axhline(1.0, color="grey", linestyle="--", linewidth=1)
        axes.set_xlabel("iteration")
        axes.set_ylabel("best " + _axis_label(runs))
        axes.set_title("best speedup per iteration")
        if axes.get_legend_handles_labels()[0]:
            axes.legend(loc="best", fontsize="small")
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.tight_layout()
        figure.savefig(path, format="png")
    finally:
        plt.close(figure)
    return path
