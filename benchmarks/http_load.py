"""Load and fault figures for the remote box: C clients x N concurrent verify calls over streamable HTTP.

    python benchmarks/http_load.py [--clients 5] [--calls 10] [--faults 4] [--json out.json]

A real ``kfoundry serve --transport http`` subprocess on 127.0.0.1 with two named tokens
(alice, bob); each client connects with its own token and fires its calls at once. The
calls mix correct and mismatching C++ candidates for the bundled ``elementwise`` problem
with injected faults (a segfaulting candidate, and one that hangs under ``timeout_s=3``).
A call counts as a failure when it does not come back with the state its candidate must
get. Prints one JSON object: calls, failures, latency percentiles, throughput, and the
server's ``/healthz`` after the run (and whether any worker outlived the server).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import httpx2
from anyio.abc import Process
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from kfoundry import examples

REFERENCE = examples.source("elementwise")
CORRECT = examples.source("elementwise", "cpp")
_SCALED = "y[i] = v / (1.0f + std::exp(-v)) * scale;"
assert _SCALED in CORRECT, "the bundled elementwise cpp solution changed; update the mismatch edit"
MISMATCH = CORRECT.replace(_SCALED, "y[i] = v / (1.0f + std::exp(-v));")
_FORWARD = "        _lib.swish_scale(x, y, x.numel(), float(self.scale_factor))\n"
assert _FORWARD in CORRECT
SEGFAULT = CORRECT.replace(_FORWARD, "        import ctypes\n        ctypes.string_at(0)\n" + _FORWARD)
HANG = CORRECT.replace(_FORWARD, "        while True:\n            pass\n" + _FORWARD)

#: kind -> (candidate, extra arguments, expected state)
KINDS: dict[str, tuple[str, dict[str, Any], str]] = {
    "correct": (CORRECT, {}, "correct"),
    "mismatch": (MISMATCH, {}, "mismatch"),
    "segfault": (SEGFAULT, {}, "runtime_error"),
    "hang": (HANG, {"timeout_s": 3}, "timeout"),
}
WORKER_MODULE = b"kfoundry.runner.entry"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def plan(clients: int, calls: int, faults: int) -> list[list[str]]:
    """Which candidate each call sends: every third a mismatch, ``faults`` spread evenly, alternating segfault/hang."""
    total = clients * calls
    kinds = ["mismatch" if k % 3 == 2 else "correct" for k in range(total)]
    if faults:
        stride = max(1, total // faults)
        for n, k in enumerate(range(stride // 2, total, stride)):
            if n >= faults:
                break
            kinds[k] = "segfault" if n % 2 == 0 else "hang"
    return [kinds[c * calls:(c + 1) * calls] for c in range(clients)]


def leftover_workers(home: Path) -> list[int]:
    """Live worker processes started for this KFOUNDRY_HOME."""
    marker = f"KFOUNDRY_HOME={home}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if WORKER_MODULE not in (entry / "cmdline").read_bytes() or marker not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                continue
        except OSError:
            continue
        found.append(int(entry.name))
    return found


async def wait_healthy(url: str, proc: Process, within: float) -> dict[str, Any]:
    with anyio.fail_after(within):
        async with httpx2.AsyncClient(timeout=2.0) as http:
            while True:
                if proc.returncode is not None:
                    raise RuntimeError(f"server exited with {proc.returncode} before it was healthy")
                try:
                    response = await http.get(f"{url}/healthz")
                    if response.status_code == 200:
                        return response.json()
                except httpx2.TransportError:
                    pass
                await anyio.sleep(0.1)


async def one_client(url: str, token: str, kinds: list[str], out: list[dict[str, Any]], read_timeout: float) -> None:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(30.0, read=read_timeout))
    async with http, Client(streamable_http_client(f"{url}/mcp", http_client=http)) as client:

        async def call(kind: str) -> None:
            candidate, extra, expected = KINDS[kind]
            arguments = {"backend": "cpp", "reference": REFERENCE, "candidate": candidate, "trials": 1, **extra}
            start = time.perf_counter()
            record: dict[str, Any] = {"kind": kind, "expected": expected}
            try:
                with anyio.fail_after(read_timeout):
                    result = await client.call_tool("verify", arguments)
                if result.is_error or result.structured_content is None:
                    record["state"] = "tool_error"
                    record["detail"] = " ".join(getattr(b, "text", "") for b in result.content)[:300]
                else:
                    record["state"] = result.structured_content["state"]
            except Exception as exc:  # noqa: BLE001 - every way a call can fail is a figure here
                record["state"] = "exception"
                record["detail"] = f"{type(exc).__name__}: {exc}"[:300]
            record["latency_s"] = time.perf_counter() - start
            out.append(record)

        async with anyio.create_task_group() as group:
            for kind in kinds:
                group.start_soon(call, kind)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = q / 100 * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    home = Path(args.home or tempfile.mkdtemp(prefix="kfoundry-http-load-")).resolve()
    tokens = {"alice": secrets.token_hex(16), "bob": secrets.token_hex(16)}
    port = _free_port()
    env = {
        "KFOUNDRY_HOME": str(home),
        "KFOUNDRY_TOKENS": ",".join(f"{name}:{token}" for name, token in tokens.items()),
        "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET", "1"),
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/tmp"),
    }
    env.update({k: v for k, v in os.environ.items() if k.startswith("KFOUNDRY_") and k not in ("KFOUNDRY_HOME", "KFOUNDRY_TOKEN", "KFOUNDRY_TOKENS")})
    command = [sys.executable, "-m", "kfoundry.cli", "serve", "--transport", "http", "--host", "127.0.0.1", "--port", str(port)]
    with (home / "server.log").open("wb") as log:
        proc = await anyio.open_process(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        started = time.perf_counter()
        await wait_healthy(url, proc, args.start_within)
        startup_s = time.perf_counter() - started
        schedule = plan(args.clients, args.calls, args.faults)
        records: list[dict[str, Any]] = []
        names = list(tokens)
        started = time.perf_counter()
        async with anyio.create_task_group() as group:
            for index, kinds in enumerate(schedule):
                group.start_soon(one_client, url, tokens[names[index % len(names)]], kinds, records, args.read_timeout)
        wall = time.perf_counter() - started
        async with httpx2.AsyncClient(timeout=5.0) as http:
            health = (await http.get(f"{url}/healthz")).json()
    finally:
        proc.send_signal(signal.SIGTERM)
        with anyio.move_on_after(60):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()
        code = await proc.wait()
    latencies = [r["latency_s"] for r in records]
    failures = [r for r in records if r["state"] != r["expected"]]
    by_kind: dict[str, dict[str, int]] = {}
    for r in records:
        counts = by_kind.setdefault(r["kind"], {})
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    return {
        "clients": args.clients,
        "calls_per_client": args.calls,
        "calls": len(records),
        "failures": len(failures),
        "failure_details": [{k: r.get(k) for k in ("kind", "expected", "state", "detail")} for r in failures[:10]],
        "states_by_kind": by_kind,
        "latency_s": {
            "p50": round(percentile(latencies, 50), 3),
            "p95": round(percentile(latencies, 95), 3),
            "max": round(max(latencies), 3) if latencies else None,
            "mean": round(statistics.fmean(latencies), 3) if latencies else None,
        },
        "wall_s": round(wall, 3),
        "throughput_calls_per_s": round(len(records) / wall, 3) if wall else None,
        "server_startup_s": round(startup_s, 3),
        "healthz_after": health,
        "server_exit_code": code,
        "workers_left_after_shutdown": len(leftover_workers(home)),
        "host_cpus": os.cpu_count(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--calls", type=int, default=10, help="concurrent verify calls per client")
    parser.add_argument("--faults", type=int, default=4, help="segfaulting / hanging candidates mixed in")
    parser.add_argument("--home", default=None, help="KFOUNDRY_HOME for the server (default: a fresh temp dir)")
    parser.add_argument("--start-within", type=float, default=120.0)
    parser.add_argument("--read-timeout", type=float, default=900.0, help="per-call limit in seconds")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    figures = anyio.run(run, args)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    return 0 if figures["failures"] == 0 and figures["workers_left_after_shutdown"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
