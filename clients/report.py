"""Markdown reports: one per run (problem x model) and one across problems, with KernelBench's fast_p and geomean.

fast_p is the fraction of problems whose best candidate is correct and more than ``p`` times as
fast as eager PyTorch (KernelBench's metric, p=1.0 by default: simply faster). The geometric
mean speedup is taken over the problems that got a correct candidate.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from kfoundry.clients.records import Attempt, RunSummary


def _x(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


def _cell(text: str, limit: int = 90) -> str:
    flat = " ".join(text.split()).replace("|", "\\|")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def geomean(values: list[float]) -> float | None:
    positive = [v for v in values if v > 0]
    return math.exp(sum(math.log(v) for v in positive) / len(positive)) if positive else None


def fast_p(runs: list[RunSummary], p: float = 1.0) -> float | None:
    if not runs:
        return None
    fast = 0
    for run in runs:
        best = run.best_attempt()
        if best is not None and best.speedup_vs_eager is not None and best.speedup_vs_eager > p:
            fast += 1
    return fast / len(runs)


def run_report(run: RunSummary, plot: str | None = "speedup.png") -> str:
    best = run.best_attempt()
    lines = [
        f"# {run.problem} · {run.model}",
        "",
        f"- backend `{run.backend}`, mode {run.mode}; generation model `{run.model}`, analysis model `{run.analysis_model}`",
        f"- stopped: {run.stop_reason}" + (f" ({run.duration_s:.0f} s)" if run.duration_s else ""),
    ]
    if run.error:
        lines.append(f"- error: {run.error}")
    if best is not None:
        lines.append(
            f"- **best: {best.label}** — {_ms(best.candidate_ms)} ms, {_x(best.speedup_vs_eager)} vs eager, "
            f"{_x(best.speedup_vs_compile)} vs torch.compile, {_pct(best.sol_fraction)} of speed of light "
            f"(`{best.folder}/candidate.py`)"
        )
    else:
        lines.append("- **no correct candidate**")
    lines += [
        "",
        "| iteration | phase | prompt | state | ms | vs eager | vs compile | % SOL | bottleneck | detail |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for a in run.attempts:
        mark = " ★" if best is not None and a.folder == best.folder else ""
        detail = a.detail
        if a.scores:
            detail += " · hooks: " + ", ".join(f"{k}={v}" for k, v in a.scores.items())
        lines.append(
            f"| {a.label}{mark} | {a.phase} | {a.prompt_kind} | {a.state.value} | {_ms(a.candidate_ms)} | {_x(a.speedup_vs_eager)} "
            f"| {_x(a.speedup_vs_compile)} | {_pct(a.sol_fraction)} | {a.bottleneck or '—'} | {_cell(detail)} |"
        )
    recommendations = [a for a in run.attempts if a.recommendation]
    if recommendations:
        lines += ["", "## Recommendations applied", ""]
        lines += [f"- {a.label}: {_cell(a.recommendation or '', 300)}" for a in recommendations]
    if plot:
        lines += ["", f"![speedup per iteration]({plot})"]
    return "\n".join(lines) + "\n"


def _best_row(run: RunSummary, root: Path) -> str:
    best = run.best_attempt()
    link = Path(run.folder) / "report.md"
    try:
        link = link.relative_to(root)
    except ValueError:
        pass
    state = best.state.value if best else (run.attempts[-1].state.value if run.attempts else "—")
    return (
        f"| [{run.problem}]({link}) | {run.model} | {best.label if best else '—'} | {state} | {_x(best.speedup_vs_eager if best else None)} "
        f"| {_x(best.speedup_vs_compile if best else None)} | {_pct(best.sol_fraction if best else None)} | {len(run.attempts)} | {_cell(run.stop_reason, 70)} |"
    )


def summary_report(runs: list[RunSummary], root: Path, p: float = 1.0, plot: str | None = "speedup.png") -> str:
    lines = [
        "# kernel-foundry optimize",
        "",
        "| problem | model | best | state | vs eager | vs compile | % SOL | attempts | stopped |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [_best_row(run, root) for run in runs]
    by_model: dict[str, list[RunSummary]] = defaultdict(list)
    for run in runs:
        by_model[run.model].append(run)
    lines += [
        "",
        f"| model | problems | correct | fast_{p:g} | geomean vs eager | geomean vs compile |",
        "|---|---|---|---|---|---|",
    ]
    for model, group in by_model.items():
        bests = [b for b in (r.best_attempt() for r in group) if b is not None]
        eager = geomean([b.speedup_vs_eager for b in bests if b.speedup_vs_eager is not None])
        compiled = geomean([b.speedup_vs_compile for b in bests if b.speedup_vs_compile is not None])
        lines.append(f"| {model} | {len(group)} | {len(bests)} | {_pct(fast_p(group, p))} | {_x(eager)} | {_x(compiled)} |")
    lines += [
        "",
        f"fast_{p:g}: share of problems whose best candidate is correct and more than {p:g}x as fast as eager PyTorch. "
        "Geomeans are over the problems with a correct candidate.",
    ]
    if plot:
        lines += ["", f"![best speedup per iteration]({plot})"]
    return "\n".join(lines) + "\n"


def best_so_far(attempts: list[Attempt]) -> list[tuple[int, float | None]]:
    """(iteration, best rank up to and including it) per iteration."""
    best: float | None = None
    series = []
    for iteration in sorted({a.iteration for a in attempts}):
        for a in attempts:
            if a.iteration == iteration and a.rank is not None and (best is None or a.rank > best):
                best = a.rank
        series.append((iteration, best))
    return series
