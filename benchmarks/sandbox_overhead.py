"""Wall time of warm verify calls, to compare the bubblewrap sandbox with the unconfined mode.

Run it twice on one machine, once as is and once with bubblewrap off the PATH and
KFOUNDRY_UNSAFE_NO_SANDBOX=1, and compare the medians it prints (one JSON line per backend).

    python benchmarks/sandbox_overhead.py --calls 5 --backends triton,cuda
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import anyio

from kfoundry import jail
from kfoundry.runner.pool import WorkerPool
from kfoundry.tools.requests import VerifyRequest
from kfoundry.tools.runtime import Runtime
from kfoundry.tools.verify import verify

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


async def measure(backend: str, calls: int) -> dict[str, object]:
    reference = (EXAMPLES / "elementwise" / "reference.py").read_text()
    candidate = (EXAMPLES / "elementwise" / f"{backend}.py").read_text()
    async with WorkerPool() as pool:
        runtime = Runtime(pool)
        seconds: list[float] = []
        for n in range(calls + 1):  # the first call warms caches and spares and is not counted
            start = time.perf_counter()
            result = await verify(runtime, VerifyRequest(backend=backend, reference=reference, candidate=candidate))
            if n:
                seconds.append(time.perf_counter() - start)
            if result.state.value != "correct":
                raise SystemExit(f"{backend}: verify ended {result.state.value}: {result.error}")
    return {"backend": backend, "sandbox": jail.describe()[:40], "calls": calls,
            "median_s": round(statistics.median(seconds), 3), "min_s": round(min(seconds), 3), "max_s": round(max(seconds), 3)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--backends", default="cpp")
    args = parser.parse_args()
    for backend in args.backends.split(","):
        print(json.dumps(anyio.run(measure, backend, args.calls)), flush=True)


if __name__ == "__main__":
    main()
