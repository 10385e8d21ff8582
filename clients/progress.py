"""Live terminal progress with rich: one row per problem x model, one line per finished attempt.

This is the terminal UI, so unlike the library modules it writes to the terminal (stderr, so
stdout stays free for the final summary).
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from kfoundry.clients.records import Event
from kfoundry.schema import State

_STYLE = {State.correct: "green", State.mismatch: "yellow", State.compilation_failure: "red", State.generation_failure: "magenta"}


@dataclass
class _Row:
    iteration: str = "—"
    stage: str = "starting"
    last: str = "—"
    attempts: int = 0
    best: float | None = None
    sol: float | None = None


class LiveProgress:
    """An ``Event`` observer; use as a context manager around the run."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.rows: dict[tuple[str, str], _Row] = {}
        self.live = Live(self._table(), console=self.console, refresh_per_second=4, transient=False)

    def __enter__(self) -> LiveProgress:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.update(self._table())
        self.live.__exit__(*exc)
        self.console.line()  # the final table ends without a newline when the output is not a terminal

    def _table(self) -> Table:
        table = Table(title="kfoundry optimize", expand=False)
        for column in ("problem", "model", "iteration", "stage", "last state", "attempts", "best speedup", "% SOL"):
            table.add_column(column)
        for (problem, model), row in self.rows.items():
            table.add_row(
                problem, model, row.iteration, row.stage, row.last, str(row.attempts),
                "—" if row.best is None else f"{row.best:.2f}x", "—" if row.sol is None else f"{row.sol:.1%}",
            )
        return table

    def __call__(self, event: Event) -> None:
        row = self.rows.setdefault((event.problem, event.model), _Row())
        where = f"{event.iteration}" + (f" s{event.sample}" if event.sample is not None else "") if event.iteration is not None else row.iteration
        if event.kind == "stage":
            row.iteration, row.stage = where, event.stage or ""
        elif event.kind == "round_started":
            row.iteration, row.stage = where, f"round: {event.stage}"
        elif event.kind == "attempt_finished" and event.state is not None:
            row.attempts += 1
            row.last = event.state.value
            if event.speedup is not None and (row.best is None or event.speedup > row.best):
                row.best, row.sol = event.speedup, event.sol_fraction
            style = _STYLE.get(event.state, "cyan")
            # Text, not markup: details quote compiler output, which may contain [brackets].
            self.console.print(Text.assemble(f"{event.problem} · {event.model} · iter {where}: ", (event.state.value, style), f" {event.detail}"))
        elif event.kind == "run_finished":
            row.stage = "done"
            self.console.print(Text(f"{event.problem} · {event.model}: {event.detail}"))
        elif event.kind == "run_started":
            row.stage = event.detail
        self.live.update(self._table())
