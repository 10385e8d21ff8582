"""What the integrity checks cost: verify time with every check on (the default) and with every rule off.

    python benchmarks/integrity_cost.py [--backend cpp] [--repeat 3] [--trials 5] [--problems a,b] [--gpu-size]

Runs each bundled problem's solution through the real ``verify`` tool (in-memory MCP client),
alternating the two configurations, and reports the median server-side ``duration_s``. Before
each call it waits (bounded) until the device's warm spares are all back, so the figures are the
checks' cost rather than a wait for a worker to boot. With
every rule off the worker also skips the poisoned second run and the aten-op trace; the
address-reuse probe trial and the input digests always run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from typing import Any

import anyio
from mcp import Client

from kfoundry import examples
from kfoundry.config import settings
from kfoundry.server.app import build_server
from kfoundry.verify import ast_rules
from kfoundry.verify.guardrails import RUNTIME_RULES

ALL_OFF = {"backend_marker": False, "rules": {rule: "off" for rule in [*ast_rules.RULES, *RUNTIME_RULES]}}
#: only the measured attribution off: on a GPU this drops verify's one extra profiled call, on the CPU the sampling
NO_ATTRIBUTION = {"rules": {"kernel_coverage": "off"}}


async def _spares_ready(client: Client, within: float = 120.0) -> None:
    """Until every device holds its full count of warm spares and runs nothing, or ``within`` seconds pass."""
    config = settings()
    with anyio.move_on_after(within):
        while True:
            result = await client.call_tool("backends", {})
            queues = (result.structured_content or {}).get("queues", {})
            if all(q.get("running", 0) == 0 and q.get("spares", 0) >= (config.gpu_spares if name.startswith("cuda") else config.spares)
                   for name, q in queues.items()):
                return
            await anyio.sleep(0.5)


async def _verify(client: Client, backend: str, problem: str, trials: int, guardrails: dict[str, Any] | None, part: str) -> float:
    await _spares_ready(client)
    arguments = {"backend": backend, "reference": examples.source(problem, part), "candidate": examples.source(problem, backend), "trials": trials}
    if guardrails is not None:
        arguments["guardrails"] = guardrails
    result = await client.call_tool("verify", arguments, read_timeout_seconds=600)
    data = result.structured_content or {}
    if result.is_error or data.get("state") != "correct":
        raise RuntimeError(f"{problem}: {data or result.content}")
    return float(data["duration_s"])


HEADER = ["| problem | checks on (s) | checks off (s) | cost | attribution off (s) | attribution's cost |", "|---|---|---|---|---|---|"]


def _row(name: str, on: float, off: float, bare: float) -> str:
    return f"| {name} | {on:.2f} | {off:.2f} | {on - off:+.2f} s ({(on / off - 1):+.0%}) | {bare:.2f} | {on - bare:+.2f} s |"


async def main(backend: str, repeat: int, trials: int, only: set[str], gpu_size: bool) -> list[tuple[str, float, float, float]]:
    rows = []
    # Rows are written as they complete, so a run cut short still reports what it measured.
    sys.stdout.write("\n".join(HEADER) + "\n")
    async with Client(build_server()) as client:
        for info in examples.problems():
            if backend not in info.solutions or (only and info.name not in only):
                continue
            part = examples.REFERENCE_GPU if gpu_size and info.gpu_size else examples.REFERENCE
            on: list[float] = []
            off: list[float] = []
            unattributed: list[float] = []
            await _verify(client, backend, info.name, trials, None, part)  # builds and caches before timing anything
            for _ in range(repeat):
                on.append(await _verify(client, backend, info.name, trials, None, part))
                off.append(await _verify(client, backend, info.name, trials, ALL_OFF, part))
                unattributed.append(await _verify(client, backend, info.name, trials, NO_ATTRIBUTION, part))
            rows.append((info.name, statistics.median(on), statistics.median(off), statistics.median(unattributed)))
            sys.stdout.write(_row(*rows[-1]) + "\n")
            sys.stdout.flush()
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="cpp")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--problems", default="", help="comma-separated problem names (default: every problem with a solution)")
    parser.add_argument("--gpu-size", action="store_true", help="verify at reference_gpu sizes where a problem has them")
    args = parser.parse_args()
    anyio.run(main, args.backend, args.repeat, args.trials, {p for p in args.problems.split(",") if p}, args.gpu_size)
