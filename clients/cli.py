"""``kfoundry optimize``: the argument parser and the entry point.

Only the standard library is imported here: ``kfoundry serve`` builds the same parser, and must
not pay for rich, matplotlib or the model SDKs at start-up.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

EPILOG = """examples:
  kfoundry optimize softmax --backend cpp --model anthropic:claude-sonnet-4-5 --iterations 8
  kfoundry optimize elementwise --backend cpp --model scripted:elementwise_cpp.json --baselines eager
  kfoundry optimize my_problem.py --backend triton --model openai:qwen2.5-coder@http://127.0.0.1:8000/v1 \\
      --analysis-model anthropic:claude-sonnet-4-5 --mode sampling --samples 4 --server https://gpu-box:8765/mcp --token $TOKEN

FILE[:ITERS] picks iterations: 3, 1,4-6, 5- (5 onward) or all (default).
"""


def _fraction(text: str) -> float:
    value = float(text.rstrip("%")) / (100 if text.endswith("%") else 1)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError("a fraction in (0, 1], e.g. 0.5 or 50%")
    return value


def add_optimize_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``optimize`` subcommand to ``kfoundry``'s subparsers."""
    p = sub.add_parser(
        "optimize", help="the autonomous client: generate, verify and optimize kernels with a model over MCP",
        description="Functional passes until a candidate is correct, then profile-guided optimization passes.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("problems", nargs="+", metavar="PROBLEM", help="a KernelBench problem file or a bundled problem name")
    p.add_argument("--backend", required=True)
    p.add_argument("--model", action="append", required=True, help="provider:name (anthropic, openai, scripted); repeat to compare models")
    p.add_argument("--analysis-model", default=None, help="the performance-analysis agent's model (default: --model; 'rules': none)")
    p.add_argument("--iterations", type=int, default=10, help="rounds (default 10)")
    p.add_argument("--samples", type=int, default=None, help="candidates per round (default 1; 4 in sampling mode)")
    p.add_argument("--concurrency", type=int, default=4, help="samples in flight at once")
    p.add_argument("--mode", choices=["iterative", "single", "sampling"], default="iterative")
    p.add_argument("--server", default=None, help="URL of `kfoundry serve --transport http` (default: spawn `kfoundry serve` over stdio)")
    p.add_argument("--token", default=None, help="bearer token for --server (default: $KFOUNDRY_TOKEN)")
    p.add_argument("--out", type=Path, default=Path("kfoundry-runs"), help="output folder")
    p.add_argument("--resume", action="store_true", help="keep finished iterations found under --out and go on from there")
    p.add_argument("--target-sol", type=_fraction, default=None, help="stop once the best reaches this fraction of speed of light")
    p.add_argument("--patience", type=int, default=None, help="stop after this many optimization rounds without a faster candidate")
    p.add_argument("--guardrails", default=None, metavar="FILE",
                   help="a JSON object of guardrails (required, banned, rules, allow_torch_ops, min_own_kernel_share), sent to the server as is")
    p.add_argument("--guardrail-required", action="append", default=[], metavar="RE", help="added to the guardrails' required regexes")
    p.add_argument("--guardrail-banned", action="append", default=[], metavar="RE", help="added to the guardrails' banned regexes")
    p.add_argument("--prompt-override", action="append", default=[], metavar="FILE[:ITERS]", help="Jinja2 text replacing the prompt ({{ prompt }} is the original)")
    p.add_argument("--prompt-append", action="append", default=[], metavar="FILE[:ITERS]")
    p.add_argument("--aux", action="append", default=[], metavar="PATH[:ITERS]", help="file or folder of auxiliary code to include")
    p.add_argument("--hook", action="append", default=[], metavar="SCRIPT", help="gets each attempt's results as JSON on stdin, prints a JSON object")
    p.add_argument("--hook-timeout", type=float, default=300.0)
    p.add_argument("--translate-from", default=None, metavar="BACKEND:FILE", help="start from another backend's kernel")
    p.add_argument("--baselines", nargs="*", choices=["eager", "compile"], default=["eager", "compile"])
    p.add_argument("--reps", type=int, default=None, help="timed calls per contender (default: planned by the server from the reference's time per call)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--trials", type=int, default=5, help="verify trials")
    p.add_argument("--profile-trials", type=int, default=3)
    p.add_argument("--atol", type=float, default=None)
    p.add_argument("--rtol", type=float, default=None)
    p.add_argument("--precision", default="strict", metavar="POLICY",
                   help="numerics policy the server offers (strict, tf32, bf16, fp16): verify against a float64 oracle at this precision "
                        "and time against baselines given the same freedom")
    p.add_argument("--tool-timeout", type=float, default=900.0, help="seconds one tool call may take")
    p.add_argument("--max-tokens", type=int, default=16000)
    p.add_argument("--thinking-budget", type=int, default=None)
    p.add_argument("--effort", choices=["low", "medium", "high", "xhigh", "max"], default=None)
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--retries", type=int, default=6)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--fast-p", type=float, default=1.0, help="p of the fast_p metric")
    p.add_argument("--quiet", action="store_true", help="no live progress")
    return p


def _translate_from(spec: str | None) -> dict[str, str] | None:
    if spec is None:
        return None
    backend, sep, path = spec.partition(":")
    if not sep or not path:
        raise ValueError(f"--translate-from takes BACKEND:FILE, not {spec!r}")
    return {"backend": backend, "path": path, "source": Path(path).read_text(encoding="utf-8")}


def _guardrails(path: str | None, required: list[str], banned: list[str]) -> dict[str, Any]:
    """The guardrails object: FILE's JSON, its regex lists extended by the flags. The server validates the rest."""
    rules: Any = json.loads(Path(path).read_text(encoding="utf-8")) if path else {}
    if not isinstance(rules, dict):
        raise ValueError(f"--guardrails {path} must hold a JSON object, not {type(rules).__name__}")
    for key, extra in (("required", required), ("banned", banned)):
        if not extra:
            continue
        given = rules.get(key, [])
        if not isinstance(given, list):
            raise ValueError(f"--guardrails {path}: {key!r} must be a list of regexes")
        rules[key] = [*given, *extra]
    return rules


def build_job(args: argparse.Namespace) -> Any:
    """The Job an ``optimize`` namespace describes. Raises ValueError / OSError for bad arguments."""
    # Imported here, not at the top: see the module docstring.
    from kfoundry.clients.edits import AuxCode, PromptEdit, PromptEdits
    from kfoundry.clients.providers import ModelOptions
    from kfoundry.clients.records import RunSettings, TranslateFrom
    from kfoundry.clients.runner import Job

    samples = args.samples or (4 if args.mode == "sampling" else 1)
    edits = PromptEdits(
        edits=[PromptEdit.load("override", s) for s in args.prompt_override] + [PromptEdit.load("append", s) for s in args.prompt_append],
        aux=[AuxCode.load(s) for s in args.aux],
    )
    source = _translate_from(args.translate_from)
    settings = RunSettings(
        backend=args.backend, mode=args.mode, iterations=args.iterations, samples=samples, concurrency=args.concurrency,
        target_sol=args.target_sol, patience=args.patience,
        guardrails=_guardrails(args.guardrails, args.guardrail_required, args.guardrail_banned),
        edits=edits, hooks=args.hook, hook_timeout_s=args.hook_timeout, baselines=args.baselines, reps=args.reps,
        warmup=args.warmup, trials=args.trials, profile_trials=args.profile_trials, atol=args.atol, rtol=args.rtol, precision=args.precision,
        tool_timeout_s=args.tool_timeout, translate_from=TranslateFrom(**source) if source else None, resume=args.resume, seed=args.seed,
    )
    options = ModelOptions(
        max_tokens=args.max_tokens, thinking_budget=args.thinking_budget, effort=args.effort, temperature=args.temperature,
        retries=args.retries, seed=args.seed,
    )
    return Job(
        problems=args.problems, models=args.model, analysis_model=args.analysis_model, options=options, settings=settings,
        out=args.out, server=args.server, token=args.token or os.environ.get("KFOUNDRY_TOKEN"), fast_p=args.fast_p,
    )


def run_optimize(args: argparse.Namespace) -> int:
    """0 when every run found a correct candidate, 2 when some did not, 1 when the run could not go on."""
    import anyio
    from pydantic import ValidationError

    from kfoundry.clients.progress import LiveProgress
    from kfoundry.clients.runner import run_job

    try:
        job = build_job(args)
    except (ValueError, OSError, ValidationError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    try:
        if args.quiet:
            runs = anyio.run(run_job, job)
        else:
            with LiveProgress() as progress:
                runs = anyio.run(run_job, job, progress)
    except Exception as exc:  # the command's top-level handler: any failure becomes one line and exit 1
        sys.stderr.write(f"error: {type(exc).__name__}: {exc}\n")
        return 1
    sys.stdout.write(f"report: {job.out / 'report.md'}\n")
    for run in runs:
        best = run.best_attempt()
        verdict = f"best {best.label}: {best.detail}" if best else "no correct candidate"
        sys.stdout.write(f"  {run.problem} · {run.model}: {verdict} — {run.stop_reason}\n")
    failed = [r for r in runs if r.error]
    if failed:
        return 1
    return 0 if all(r.best for r in runs) else 2
