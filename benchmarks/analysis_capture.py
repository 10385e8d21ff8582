"""Profiles for the analysis benchmark: each case's `profile` and `analyze_profile` results, one JSON per case.

    python benchmarks/analysis_capture.py --cases benchmarks/analysis_cases/gpu.json --out OUT
                                          [--only NAME,NAME] [--reps 20] [--timeout-s 600] [--kfoundry-root PATH]

A cases file is a JSON list of objects: ``name``, ``problem`` and ``candidate`` (paths relative to the
cases file), ``backend``, ``precision`` (a numerics policy name) and ``intent`` (what the candidate was
written to show), and optionally ``next``: the cases that apply one change to this candidate, by the
action's name, so a change's measured effect can be read off the two records. One ``kfoundry serve`` is started over stdio from --kfoundry-root with a fresh
KFOUNDRY_HOME (or --home), as a client would run it; for each case it calls ``profile`` (baselines eager only,
hardware_counters false) and then ``analyze_profile`` on the returned run_id, and writes OUT/NAME.json:
the case, both sources, both results and the wall times. A case that fails is written with its error and
the next one runs. Each record also names the host's cores and fp32 vector lanes (what a CPU
analysis weighs threads and vectors against). Cases of one problem run in the order listed, so ``analyze_profile`` sees the earlier
ones as that problem's history, as it would in a session.

    python benchmarks/analysis_capture.py --out OUT --to-fixtures tests/analysis/profiles

turns the records in OUT into the labelled set's fixtures (case, host, candidate source and profile
result; the analysis is dropped, since the tests run the rules afresh); labels live beside them.
``--out OUT --note FILE`` writes a markdown note: each case's digest and recommendation beside the
measured effect of its ``next`` cases.

The package maps kfoundry.server -> server/ etc. through setuptools package-dir, so --kfoundry-root must be
pip-installed (``pip install --no-deps --no-build-isolation -e ROOT``); the script checks that first.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from pydantic import BaseModel, Field

HERE = Path(__file__).resolve().parent
ENV_PREFIXES = ("KFOUNDRY_", "TRITON_", "CUDA_", "PYTHON", "TORCH_", "OMP_")
ENV_NAMES = ("PATH", "HOME", "LD_LIBRARY_PATH", "TMPDIR")


class Case(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    problem: str
    candidate: str
    backend: str
    precision: str = "strict"
    intent: str = ""
    next: dict[str, str] = Field(
        default_factory=dict, description="Follow-up cases that apply one change to this candidate: action name -> case name.",
    )


def load_cases(path: Path, only: set[str] | None) -> list[tuple[Case, str, str]]:
    """Cases with their problem and candidate sources, read now so a missing file stops the run before the server starts."""
    cases = [Case.model_validate(c) for c in json.loads(path.read_text())]
    if only:
        unknown = only - {c.name for c in cases}
        if unknown:
            raise SystemExit(f"--only names no case in {path}: {sorted(unknown)}")
        cases = [c for c in cases if c.name in only]
    return [(c, (path.parent / c.problem).read_text(), (path.parent / c.candidate).read_text()) for c in cases]


def host_facts() -> dict[str, int]:
    """Cores this process may use and the fp32 lanes of the widest vector unit, as the server's analysis reads them."""
    try:
        flags = set(next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "").split())
    except OSError:
        flags = set()
    lanes = 16 if "avx512f" in flags else 8 if flags & {"avx2", "avx"} else 4
    return {"cores": len(os.sched_getaffinity(0)), "vector_lanes": lanes}


def to_fixtures(records: Path, fixtures: Path) -> list[str]:
    """Write one fixture per correct record in ``records``; return the names written."""
    fixtures.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sorted(records.glob("*.json")):
        record = json.loads(path.read_text())
        profiled = record.get("profile") or {}
        if "case" not in record or profiled.get("state") != "correct":
            continue
        fixture = {
            "case": record["case"], "devices": record.get("devices", []), "host": record.get("host") or host_facts(),
            "candidate_source": record["candidate_source"], "profile": profiled,
        }
        (fixtures / path.name).write_text(json.dumps(fixture, indent=1) + "\n")
        written.append(record["case"]["name"])
    return written


def write_note(records: Path, path: Path, title: str, cases: dict[str, Case] | None = None) -> int:
    """Markdown: each case's digest and recommendation beside what its follow-up candidates measured; returns cases written.

    ``cases`` (from a cases file) overrides the case each record carries, so follow-ups added later still count.
    """
    from kfoundry.profilers.analysis import Host, diagnose
    from kfoundry.schema import ProfileResult

    found = {}
    for record_path in sorted(records.glob("*.json")):
        record = json.loads(record_path.read_text())
        if "case" in record and (record.get("profile") or {}).get("state") == "correct":
            found[record["case"]["name"]] = record
    lines = [f"# {title}", "", "Each case: the digest and the rules' recommendation (run afresh, no history), then what the "
             "follow-up candidate that applies one change measured.", ""]
    written = 0
    for name, record in found.items():
        case = (cases or {}).get(name) or Case.model_validate(record["case"])
        if not case.next:
            continue
        profile = ProfileResult.model_validate(record["profile"])
        host = Host.model_validate(record["host"]) if record.get("host") else None
        d = diagnose(profile, record["candidate_source"], host=host)
        chosen = d.advice.action.value if d.advice else "?"
        lines += [f"## {name}: {case.intent}", "", "```", d.digest, "```", "", f"**Recommendation [{chosen}]**: {d.recommendation}", ""]
        before = profile.candidate.median_ms if profile.candidate else None
        for action, follow in case.next.items():
            other = found.get(follow)
            after = ((other or {}).get("profile") or {}).get("candidate", {}).get("median_ms")
            if before and after:
                effect = f"{before:.4g} ms -> {after:.4g} ms ({after / before - 1:+.0%})"
            else:
                effect = "not measured"
            intent = other["case"]["intent"] if other else "missing"
            lines.append(f"- follow-up for `{action}`: {follow} ({intent}): {effect}")
        lines.append("")
        written += 1
    path.write_text("\n".join(lines))
    return written


def _server_env(root: Path, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES) or k in ENV_NAMES}
    env["PYTHONPATH"] = os.pathsep.join([str(root), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]])
    env["KFOUNDRY_HOME"] = str(home)
    return env


def check_install(root: Path) -> None:
    """Stop unless kfoundry and its mapped subpackages import from ``root``, as the server will see them."""
    env = _server_env(root, Path(tempfile.gettempdir()) / "kf-analysis-check")
    code = "import json, kfoundry, kfoundry.server; print(json.dumps([m.__file__ for m in (kfoundry, kfoundry.server)]))"
    done = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise SystemExit(f"kfoundry does not import from {root}:\n{done.stderr[-2000:]}\n(pip install --no-deps --no-build-isolation -e {root})")
    files = json.loads(done.stdout.strip().splitlines()[-1])
    outside = [f for f in files if not Path(f).resolve().is_relative_to(root)]
    if outside:
        raise SystemExit(f"kfoundry imports from outside {root}: {outside}\n(pip install --no-deps --no-build-isolation -e {root})")


def _text(result: Any) -> str:
    return " ".join(getattr(c, "text", "") for c in result.content)[:4000]


async def _call(client: Any, tool: str, arguments: dict[str, Any], timeout_s: float) -> tuple[dict[str, Any] | None, str | None, float]:
    """(structured result, tool error text, wall seconds) of one call."""
    start = time.perf_counter()
    result = await client.call_tool(tool, arguments, read_timeout_seconds=timeout_s)
    wall = round(time.perf_counter() - start, 3)
    if result.is_error:
        return None, _text(result), wall
    return result.structured_content or {}, None, wall


async def capture(root: Path, cases: list[tuple[Case, str, str]], out: Path, args: argparse.Namespace) -> None:
    """Run every case through one server, printing one summary line per case as it finishes."""
    from mcp import Client, StdioServerParameters

    home = args.home or Path(tempfile.mkdtemp(prefix="kf-analysis-"))
    params = StdioServerParameters(command=sys.executable, args=["-m", "kfoundry.cli", "serve"], env=_server_env(root, home), cwd=str(root))
    # The server answers only after a profile's build, trials and timed calls: allow the whole job plus slack.
    limit = args.timeout_s + 300
    async with Client(params, read_timeout_seconds=120) as client:
        backends, error, _ = await _call(client, "backends", {}, 300)
        devices = (backends or {}).get("devices", [])
        for case, problem, candidate in cases:
            record: dict[str, Any] = {
                "case": case.model_dump(), "problem_source": problem, "candidate_source": candidate, "devices": devices, "host": host_facts(),
            }
            arguments = {
                "backend": case.backend, "reference": problem, "candidate": candidate, "precision": case.precision,
                "baselines": ["eager"], "hardware_counters": False, "reps": args.reps, "timeout_s": args.timeout_s,
            }
            try:
                profiled, record["profile_error"], record["profile_wall_s"] = await _call(client, "profile", arguments, limit)
                record["profile"] = profiled
                if profiled is not None and profiled.get("state") == "correct":
                    analysis, record["analysis_error"], record["analysis_wall_s"] = await _call(
                        client, "analyze_profile", {"profile": profiled["run_id"]}, 120
                    )
                    record["analysis"] = analysis
            except Exception as exc:  # noqa: BLE001 - keep the record: a dead server still says which case killed it
                record["exception"] = f"{type(exc).__name__}: {exc}"[:4000]
            (out / f"{case.name}.json").write_text(json.dumps(record, indent=1))
            print(_summary(case, record), flush=True)
            if "exception" in record:
                break


def _summary(case: Case, record: dict[str, Any]) -> str:
    profiled = record.get("profile") or {}
    analysis = record.get("analysis") or {}
    median = (profiled.get("candidate") or {}).get("median_ms")
    eager = (profiled.get("eager") or {}).get("median_ms")
    head = f"{case.name}: {profiled.get('state', 'no profile')}"
    if median is not None:
        head += f" candidate {median:.4g} ms" + (f", eager {eager:.4g} ms" if eager is not None else "")
    trouble = record.get("exception") or record.get("profile_error") or record.get("analysis_error")
    if trouble:
        return f"{head} -- {trouble[:300]}"
    return f"{head} -- {analysis.get('bottleneck', '?')}: {analysis.get('recommendation', '')[:200]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=Path, help="JSON list of cases")
    parser.add_argument("--out", type=Path, required=True, help="folder for one JSON per case")
    parser.add_argument("--only", default="", help="comma-separated case names to run (default: all)")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--timeout-s", type=float, default=600.0, help="per profile call")
    parser.add_argument("--kfoundry-root", type=Path, default=HERE.parent)
    parser.add_argument("--home", type=Path, default=None,
                        help="KFOUNDRY_HOME for the server (default: a fresh one); reusing one keeps its measured CPU peaks")
    parser.add_argument("--to-fixtures", type=Path, default=None, help="convert the records in --out into fixtures here, and stop")
    parser.add_argument("--note", type=Path, default=None, help="write a markdown note of the records in --out (digest, advice, follow-ups), and stop")
    args = parser.parse_args()
    if args.to_fixtures is not None:
        for name in to_fixtures(args.out, args.to_fixtures):
            print(name)
        return
    if args.note is not None:
        manifest = {c.name: c for c, _, _ in load_cases(args.cases.resolve(), None)} if args.cases else None
        print(f"{write_note(args.out, args.note, f'Analysis of {args.out.name}', manifest)} cases written to {args.note}")
        return
    if args.cases is None:
        parser.error("--cases is required to capture")
    root = args.kfoundry_root.resolve()
    cases = load_cases(args.cases.resolve(), {n for n in args.only.split(",") if n} or None)
    check_install(root)
    args.out.mkdir(parents=True, exist_ok=True)
    anyio.run(capture, root, cases, args.out, args)


if __name__ == "__main__":
    main()
