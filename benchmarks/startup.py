"""How fast a fresh ``kfoundry serve`` answers an MCP client over stdio.

    python benchmarks/startup.py [--runs 5]

Each run starts the server as a subprocess (its own KFOUNDRY_HOME), times ``initialize`` (the
client's connect) and the first ``tools/list``, and stops it. Prints each run and the medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio
from mcp import Client, StdioServerParameters


async def one_run() -> tuple[float, float]:
    home = Path(tempfile.mkdtemp(prefix="kfstart-"))
    env = {"KFOUNDRY_HOME": str(home), "PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", str(home))}
    params = StdioServerParameters(command=sys.executable, args=["-m", "kfoundry.cli", "serve"], env=env)
    start = time.perf_counter()
    async with Client(params, read_timeout_seconds=120) as client:
        connected = time.perf_counter() - start
        await client.list_tools()
        listed = time.perf_counter() - start
    return connected, listed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    results = []
    for i in range(args.runs):
        connected, listed = anyio.run(one_run)
        results.append((connected, listed))
        print(f"run {i + 1}: initialize answered in {connected:.2f} s, tools/list by {listed:.2f} s")
    print(f"median: initialize {statistics.median(r[0] for r in results):.2f} s, tools/list {statistics.median(r[1] for r in results):.2f} s "
          f"({os.cpu_count()} CPUs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
