"""Tool descriptions, written for the model that calls them: what to send, what comes back, what next."""

from __future__ import annotations

INSTRUCTIONS = """\
kernel-foundry checks and times hand-written kernels against a PyTorch reference.
A problem ('reference') is a KernelBench file: class Model(nn.Module), get_inputs(), get_init_inputs().
A candidate is a full Python module defining class ModelNew with the same __init__ arguments as Model,
whose forward computes the same outputs with a kernel of the chosen backend.
Typical loop: backends -> translate_reference (prompt + problem analysis) -> compile -> verify until
state 'correct' -> profile -> analyze_profile -> next candidate. Every result carries a run_id whose
artifacts are readable at kfoundry://runs/{run_id}/result.json."""

_STATES = (
    "States: compiled (compile only), generation_failure (no ModelNew), compilation_failure (see diagnostics), "
    "runtime_error (see error), timeout, mismatch (see mismatch), rejected (see findings), correct."
)

DESCRIPTIONS: dict[str, str] = {
    "compile": (
        "Build a candidate without running it: imports the module in a sandboxed worker so its kernels compile "
        "(C++ via g++; Triton JIT kernels compile on first launch on a GPU). Send `backend` and the full "
        "`candidate` module source. Returns `state` ('compiled' or a failure), `diagnostics` as "
        "'file:line: severity: message' (lines point into candidate.py), per-kernel `kernels` stats, `duration_s`, "
        "`run_id`. Cheap: use it to iterate on build errors before `verify`. " + _STATES
    ),
    "verify": (
        "Check a candidate against the reference. The reference runs in its own process; the candidate in a "
        "sandboxed worker; both get identical secret-seeded inputs for `trials` trials and the server compares "
        "outputs (shape, dtype, NaN/inf positions, values within atol/rtol: 1e-4 for fp32, 1e-2 for fp16/bf16). "
        "Parameters are copied from the reference's state_dict where names and shapes match, so reuse the "
        "reference's parameter names. `precision` ('strict' default; 'tf32', 'bf16', 'fp16') allows reduced-precision "
        "math, judged against a float64 oracle within 2x an honest run's error; `stress` adds signed/large/tiny inputs. "
        "Returns `state`, `trials_passed`/`trials`, `mismatch` (max abs/rel error, "
        "bad fraction, first bad index, samples), `findings`, `error` (type, message, traceback tail), "
        "`next_step`, `run_id`. " + _STATES
    ),
    "profile": (
        "Time a candidate (after re-verifying it: only correct candidates are timed) against eager PyTorch and "
        "torch.compile, call by call in one job, with fresh inputs and cache flushes before every call. Returns "
        "median/IQR/CoV per contender, speedups, roofline (FLOPs, compulsory bytes, speed-of-light ms and the "
        "fraction achieved), and a per-kernel breakdown marking this backend's own kernels vs library ops, plus "
        "the eager baseline's breakdown. Under a relaxed `precision` the baselines run under the same policy and "
        "under strict, each speedup labelled. Every timed call gets fresh inputs and its outputs are checked "
        "against the reference's for those inputs (`timed_rechecks`). Pass the "
        "returned run_id to `analyze_profile` next."
    ),
    "analyze_profile": (
        "Turn a profile into ONE recommendation. Send `profile`: the run_id a `profile` call returned (preferred) "
        "or raw profiler text (a torch.profiler key_averages table or an Nsight Compute CSV). Returns "
        "`bottleneck` (memory / compute / latency / launch_overhead / host_overhead / unknown), a short `digest`, "
        "one concrete `recommendation`, and the measured `evidence`. Works without any model (rules over the "
        "measurements). Apply the recommendation, then `verify` and `profile` the new candidate."
    ),
    "translate_reference": (
        "Start a new kernel: analyzes the reference (ops, shapes, dtypes, FLOPs, bytes, speed of light per known "
        "device) and renders a complete generation prompt for `target_backend` with a worked one-shot example "
        "and the output contract. With `source_backend` set to another backend and `source_code` given, the "
        "prompt asks for a translation of that kernel instead. Write the candidate from `prompt`, then `compile`."
    ),
    "backends": (
        "What this host offers: each backend with availability, toolchain version, device, whether it runs "
        "interpreted (Triton on a CPU-only host: correct but not representative timings), and the marker a "
        "candidate must contain. `best` is the backend to try first here."
    ),
}
