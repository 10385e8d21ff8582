"""Tool titles and descriptions, written for the model that calls them: what to send, what comes back, what next.

Hosts load every description into every conversation, so each says only what the schema
cannot; field-level detail is in the schemas, in full at ``kfoundry://schemas/{tool}``.
"""

from __future__ import annotations

from kfoundry.backends import names

INSTRUCTIONS = """\
kernel-foundry checks and times hand-written kernels against a PyTorch reference.
A problem ('reference') is a KernelBench file: class Model(nn.Module), get_inputs(), get_init_inputs().
A candidate is a full Python module defining class ModelNew with the same __init__ arguments as Model,
whose forward computes the same outputs with a kernel of the chosen backend.
Typical loop: backends -> translate_reference (prompt + problem analysis) -> compile -> verify until
state 'correct' -> profile -> analyze_profile -> next candidate. Every result carries a run_id whose
artifacts are readable at kfoundry://runs/{run_id}/result.json; a tool's full schemas, every field
described, at kfoundry://schemas/{tool}.
States: compiled (compile only), generation_failure (no ModelNew), compilation_failure (see diagnostics),
runtime_error (see error), timeout, mismatch (see mismatch), rejected (see findings), correct."""

_BACKENDS = ", ".join(names())

TITLES: dict[str, str] = {
    "compile": "Compile a candidate",
    "verify": "Verify a candidate against its reference",
    "profile": "Profile a candidate against PyTorch",
    "analyze_profile": "Analyze a profile",
    "translate_reference": "Start a kernel from a reference",
    "backends": "Backends on this host",
}

DESCRIPTIONS: dict[str, str] = {
    "compile": (
        f"Build a candidate ({_BACKENDS}) in a sandboxed worker without checking it. Returns `state`, `diagnostics` "
        "('file:line: severity: message', lines in candidate.py) and per-kernel stats. Cheap: iterate on build "
        "errors here before `verify`."
    ),
    "verify": (
        "Check a candidate against the reference on identical secret-seeded inputs in sandboxed workers: shape, "
        "dtype, NaN/inf, values within atol/rtol. Parameters are copied from the reference's state_dict by name "
        "and shape, so reuse its names. Returns `state`, `mismatch`, `findings`, `error`, `next_step`."
    ),
    "profile": (
        "Re-verify, then time a correct candidate against eager PyTorch and torch.compile, call by call with fresh "
        "inputs and cache flushes, each timed output rechecked. Returns medians, speedups, roofline (speed of "
        "light), per-kernel breakdowns. Pass its run_id to `analyze_profile`."
    ),
    "analyze_profile": (
        "ONE recommendation from a `profile` run_id (preferred) or raw profiler text (torch.profiler table, "
        "Nsight Compute CSV): `bottleneck`, `digest`, `recommendation`, `evidence`. Apply it, then `verify` and "
        "`profile` again."
    ),
    "translate_reference": (
        "Start a kernel: analyzes the reference (ops, shapes, FLOPs, bytes, speed of light) and returns a complete "
        "`prompt` for `target_backend` with a worked example (with `source_backend` and `source_code`: to translate "
        "that kernel). Write the candidate from it, then `compile`."
    ),
    "backends": (
        "What this host offers: each backend's availability, toolchain, device, whether it runs interpreted, the "
        "marker a candidate must contain; the job limits; `best`, the backend to try first."
    ),
}
