"""``kfoundry``: serve the MCP tools, run the demo, or call any tool from the shell.

The tool subcommands call the same functions the MCP tools call, with a local worker pool; their
options are the fields of the tools' request models (``kfoundry.tools.requests``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Collection
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import anyio
from pydantic import BaseModel, ValidationError

from kfoundry.errors import BadRequest, KfoundryError
from kfoundry.tools.requests import AnalyzeRequest, CompileRequest, ProfileRequest, TranslateRequest, VerifyRequest, explain

M = TypeVar("M", bound=BaseModel)


#: options that name a file to read ('-' for stdin) rather than carrying the source text
FILE_FIELDS = {"reference", "candidate", "source_code"}
#: fields only an MCP client can send: sampling asks the client's own model, images are its screenshots
MCP_ONLY = {"sample", "images"}
#: tool subcommand -> (help, the request model its options come from)
TOOL_COMMANDS: dict[str, tuple[str, type[BaseModel]]] = {
    "compile": ("build a candidate", CompileRequest),
    "verify": ("check a candidate against a reference", VerifyRequest),
    "profile": ("verify then time a candidate against eager and torch.compile", ProfileRequest),
    "analyze": ("analyze a profile run or raw profiler text", AnalyzeRequest),
    "translate": ("render a generation prompt and analyze a reference", TranslateRequest),
}


def _read(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        return sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as exc:
        raise BadRequest(f"cannot read {path}: {exc.strerror or exc}") from exc


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


def _plain(annotation: Any) -> tuple[Any, bool]:
    """The annotation without Optional/Annotated, and whether it is a list (of that)."""
    while True:
        if get_origin(annotation) is Annotated:
            annotation = get_args(annotation)[0]
        elif get_origin(annotation) in (Union, UnionType):
            annotation = next(a for a in get_args(annotation) if a is not type(None))
        elif get_origin(annotation) is list:
            return _plain(get_args(annotation)[0])[0], True
        else:
            return annotation, False


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def add_request_options(parser: argparse.ArgumentParser, request: type[BaseModel], skip: Collection[str] = ()) -> None:
    """One option per field of ``request``: its name, choices, whether it is required, and its description.

    Defaults stay with the model: an option left out is not passed, so the model's default applies.
    """
    for name, field in request.model_fields.items():
        if name in MCP_ONLY or name in skip:
            continue
        kind, many = _plain(field.annotation)
        options: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": field.description or ""}
        if kind is bool:
            options["action"] = "store_true"
        else:
            options["required"] = field.is_required()
            if get_origin(kind) is Literal:
                options["choices"] = get_args(kind)
            elif kind in (int, float):
                options["type"] = kind
            if many:
                options["nargs"] = "*"
            if name in FILE_FIELDS:
                options.update(metavar="FILE", help=options["help"] + " A file to read ('-' for stdin).")
            elif _is_model(kind):
                options.update(metavar="JSON_FILE", help=options["help"] + " A JSON file ('-' for stdin).")
        if not field.is_required() and field.default not in (None, False):
            options["help"] += f" Default: {field.default}."
        parser.add_argument("--" + name.replace("_", "-"), **options)


def parse_request(args: argparse.Namespace, request: type[M]) -> M:
    """The validated request from the options given; files are read and JSON files parsed first."""
    values: dict[str, Any] = {}
    for name, field in request.model_fields.items():
        if name not in vars(args):
            continue
        value = getattr(args, name)
        if name in FILE_FIELDS:
            value = _read(value)
        elif _is_model(_plain(field.annotation)[0]):
            try:
                value = json.loads(_read(value) or "")
            except ValueError as exc:
                raise BadRequest(f"--{name.replace('_', '-')}: {value} is not JSON: {exc}") from exc
        values[name] = value
    return request.model_validate(values)


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
    model = TOOL_COMMANDS[cmd][1]
    if cmd == "analyze":
        args.profile = args.run_id or _read(args.text)
    try:
        request = parse_request(args, model)
    except ValidationError as exc:
        raise BadRequest(explain(exc, model)) from exc
    if cmd == "analyze":
        return _emit(anyio.run(analyze_profile, request), args.json)
    tools: dict[str, Callable[[Any, Any], Awaitable[BaseModel]]] = {
        "compile": compile_candidate, "verify": verify, "profile": profile, "translate": translate_reference,
    }
    return _emit(anyio.run(_with_runtime, lambda rt: tools[cmd](rt, request)), args.json)


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

    for command, (help_text, model) in TOOL_COMMANDS.items():
        tool = sub.add_parser(command, help=help_text)
        if command == "analyze":
            source = tool.add_mutually_exclusive_group(required=True)
            source.add_argument("--run-id", help="a run_id returned by `profile`")
            source.add_argument("--text", metavar="FILE", help="file with profiler text ('-' for stdin)")
        add_request_options(tool, model, skip={"profile"} if command == "analyze" else ())
        tool.add_argument("--json", action="store_true", help="print the whole result as JSON")

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
