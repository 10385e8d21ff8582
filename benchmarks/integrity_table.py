"""The adversarial suite as a table: each cheat's verdict and the checks that caught it, each honest candidate's verdict.

    python benchmarks/integrity_table.py [--only cheats|honest]

Runs every candidate of ``tests/integrity/integrity_candidates.py`` through the real ``verify``
tool (in-memory MCP client, 2 trials) and prints markdown rows: name, backend, state, the
blocking finding codes (or the mismatch reason), and the verify time.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import anyio
from mcp import Client

_TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path[:0] = [str(_TESTS / "server"), str(_TESTS / "integrity")]
from candidates import REFERENCE  # noqa: E402
from integrity_candidates import CHEATS, HONEST  # noqa: E402

from kfoundry.server.app import build_server  # noqa: E402


async def _verify(client: Client, backend: str, source: str) -> dict[str, Any]:
    arguments = {"backend": backend, "reference": REFERENCE, "candidate": source, "trials": 2, "timeout_s": 150}
    result = await client.call_tool("verify", arguments, read_timeout_seconds=200)
    return result.structured_content or {"state": "tool error"}


def _caught_by(data: dict[str, Any]) -> str:
    codes = [f["code"] for f in data.get("findings", []) if f.get("blocking")]
    if data.get("state") == "mismatch" and data.get("mismatch"):
        codes.append(f"mismatch ({data['mismatch']['reason']})")
    return ", ".join(dict.fromkeys(codes)) or "—"


async def main(only: str | None) -> None:
    rows = ["| candidate | backend | verdict | caught by | verify s |", "|---|---|---|---|---|"]
    groups = {"cheats": {k: v[:2] for k, v in CHEATS.items()}, "honest": dict(HONEST)}
    async with Client(build_server()) as client:
        for group, members in groups.items():
            if only and group != only:
                continue
            for name, (backend, source) in sorted(members.items()):
                data = await _verify(client, backend, source)
                rows.append(f"| {name} | {backend} | {data.get('state')} | {_caught_by(data)} | {data.get('duration_s', 0):.1f} |")
    sys.stdout.write("\n".join(rows) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["cheats", "honest"], default=None)
    anyio.run(main, parser.parse_args().only)
