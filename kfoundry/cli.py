"""``kfoundry``: serve the MCP tools, run the demo, or call any tool from the shell.

The tool subcommands call the same functions the MCP tools call, with a local worker pool.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
from pydantic import BaseModel

from kfoundry.errors import KfoundryError


def _read(path: str | None) -> str | None:
    if path is None:
        return None
    return sys.stdin.read() if path == "-" else Path(path).read_text()


def _emit(result: BaseModel, as_json: bool) -> int:
    if as_json:
        sys.stdout.write(result.model_dump_json(indent=2) + "\n")
    else:
        data = result.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
        for key, value in data.items():
            text = json.dumps(value) if not isinstance(value, str) else value
            sys.stdout.write(f"{key}: {text[:2000]}\n")
    state = getattr(result, "state", None)
    ok = state is None or getattr(state, "value", state) in ("compiled", "correct")
    return 0 if ok else 2


async def _with_runtime(call: Callable[[Any], Awaitable[BaseModel]]) -> BaseModel:
    from kfoundry.runner.pool import WorkerPool
    from kfoundry.tools.runtime import Runtime

    async with WorkerPool(spares=0) as pool:
        return await call(Runtime(pool))


def _tool_command(args: argparse.Namespace) -> int:
    from kfoundry.tools.analyze import analyze_profile
    from kfoundry.tools.backends import list_backends
    from kfoundry.tools.compile import compile_candidate
    from kfoundry.tools.profile import profile
    from kfoundry.tools.translate import translate_reference
    from kfoundry.tools.verify import verify

    cmd = args.command
    if cmd == "backends":
        return _emit(list_backends(), args.json)
    if cmd == "analyze":
        text = args.run_id or _read(args.text)
        result = anyio.run(analyze_profile, text or "", _read(args.candidate), None)
        return _emit(result, args.json)
    runners: dict[str, Callable[[Any], Awaitable[BaseModel]]] = {
        "compile": lambda rt: compile_candidate(rt, args.backend, _read(args.candidate) or "", args.timeout_s, _read(args.reference)),
        "verify": lambda rt: verify(rt, args.backend, _read(args.reference) or "", _read(args.candidate) or "", args.trials, args.atol, args.rtol, None, args.timeout_s, args.precision, args.stress),
        "profile": lambda rt: profile(
            rt, args.backend, _read(args.reference) or "", _read(args.candidate) or "", args.baselines, args.hardware_counters,
            args.trials, args.warmup, args.reps, args.atol, args.rtol, None, args.timeout_s, args.cuda_graph, args.precision, args.stress,
        ),
        "translate": lambda rt: translate_reference(rt, _read(args.reference) or "", args.target_backend, args.source_backend, _read(args.source_code), args.timeout_s),
    }
    return _emit(anyio.run(_with_runtime, runners[cmd]), args.json)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kfoundry", description="Kernel engineer's tools over MCP: compile, verify, profile, analyze_profile, translate_reference.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve the MCP tools (stdio by default, or streamable HTTP)")
    serve.add_argument("--transport", choices=["stdio", "http"], default="stdio")
    serve.add_argument("--host", default="127.0.0.1", help="HTTP bind address; non-loopback needs a token")
    serve.add_argument("--port", type=int, default=8765)
    serve.add_argument("--token-file", type=Path, default=None, help="lines of 'name token' (also: KFOUNDRY_TOKEN, KFOUNDRY_TOKENS=name:token,...)")
    serve.add_argument("--allowed-host", action="append", default=[], help="extra Host header value to accept, e.g. gpu-box.lan:*")
    serve.add_argument("--allowed-origin", action="append", default=[], help="extra Origin to accept, e.g. https://ide.example.com")
    serve.add_argument("--certfile", type=Path, default=None, help="TLS certificate (PEM)")
    serve.add_argument("--keyfile", type=Path, default=None, help="TLS private key (PEM)")
    serve.add_argument("--max-body-mb", type=int, default=16, help="largest request body accepted")

    demo = sub.add_parser("demo", help="start the server over stdio and run all five tools on a bundled problem")
    demo.add_argument("--problem", default="softmax")
    demo.add_argument("--backend", default=None, help="default: the best backend on this host")

    sub.add_parser("backends", help="list backends and their availability").add_argument("--json", action="store_true")

    def common(p: argparse.ArgumentParser, reference: bool = True) -> None:
        p.add_argument("--backend", required=True)
        p.add_argument("--candidate", required=True, help="candidate module file ('-' for stdin)")
        if reference:
            p.add_argument("--reference", required=True, help="KernelBench problem file")
            p.add_argument("--trials", type=int, default=5)
            p.add_argument("--atol", type=float, default=None)
            p.add_argument("--rtol", type=float, default=None)
            p.add_argument("--precision", choices=["strict", "tf32", "bf16", "fp16"], default="strict", help="numerics policy (default strict)")
            p.add_argument("--stress", nargs="*", choices=["signed", "large", "tiny"], default=None, help="extra trials on stress input families")
        p.add_argument("--timeout-s", type=float, default=None)
        p.add_argument("--json", action="store_true")

    compile_parser = sub.add_parser("compile", help="build a candidate")
    common(compile_parser, reference=False)
    compile_parser.add_argument("--reference", default=None, help="launch kernels once on this problem's inputs (Triton JIT stats on a GPU)")
    common(sub.add_parser("verify", help="check a candidate against a reference"))
    prof = sub.add_parser("profile", help="verify then time a candidate against eager and torch.compile")
    common(prof)
    prof.set_defaults(trials=3)
    prof.add_argument("--baselines", nargs="*", choices=["eager", "compile"], default=None)
    prof.add_argument("--hardware-counters", action="store_true")
    prof.add_argument("--cuda-graph", action="store_true")
    prof.add_argument("--warmup", type=int, default=3)
    prof.add_argument("--reps", type=int, default=20)

    analyze = sub.add_parser("analyze", help="analyze a profile run or raw profiler text")
    src = analyze.add_mutually_exclusive_group(required=True)
    src.add_argument("--run-id")
    src.add_argument("--text", help="file with profiler text ('-' for stdin)")
    analyze.add_argument("--candidate", default=None)
    analyze.add_argument("--json", action="store_true")

    tr = sub.add_parser("translate", help="render a generation prompt and analyze a reference")
    tr.add_argument("--reference", required=True)
    tr.add_argument("--target-backend", required=True)
    tr.add_argument("--source-backend", default="pytorch")
    tr.add_argument("--source-code", default=None)
    tr.add_argument("--timeout-s", type=float, default=None)
    tr.add_argument("--json", action="store_true")

    from kfoundry.clients.cli import add_optimize_parser

    add_optimize_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "serve":
        if args.transport == "http":
            from kfoundry.server.http import HttpOptions, serve_http

            options = HttpOptions(
                host=args.host, port=args.port, token_file=args.token_file, allowed_hosts=args.allowed_host,
                allowed_origins=args.allowed_origin, certfile=args.certfile, keyfile=args.keyfile, max_body_bytes=args.max_body_mb << 20,
            )
            try:
                serve_http(options)
            except KfoundryError as exc:
                sys.stderr.write(f"error: {exc}\n")
                return 1
            return 0
        from kfoundry.server.app import build_server

        build_server().run()
        return 0
    if args.command == "demo":
        from kfoundry.demo import run_demo

        return run_demo(args.problem, args.backend)
    if args.command == "optimize":
        from kfoundry.clients.cli import run_optimize

        return run_optimize(args)
    try:
        return _tool_command(args)
    except KfoundryError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
