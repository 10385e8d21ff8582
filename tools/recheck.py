"""Checks on what happened while the candidate was timed: its outputs and where its device time went."""

from __future__ import annotations

from kfoundry.schema import Finding, ProfileResult
from kfoundry.server.jobs import Output, Report
from kfoundry.verify import precision as numerics
from kfoundry.verify.compare import Oracle, judge
from kfoundry.verify.guardrails import Guardrails


def _tensors(outputs: list[Output]) -> list:
    return [o.tensor for o in outputs]


def recheck_timed(ref: Report, cand: Report, atol: float | None, rtol: float | None, policy: numerics.Policy, rules: Guardrails) -> tuple[int, list[Finding]]:
    """Compare the sampled timed calls' outputs with the reference's for the same inputs.

    Every timed call read fresh inputs, so an output cached, replayed or skipped while the
    timer ran differs from the reference's here. Returns how many calls were rechecked.
    """
    findings: list[Finding] = []
    rechecked = 0
    for timed in cand.timed_outputs:
        key = f"seed:{timed.seed}"
        expected = ref.expected.get((key, "reference"))
        if expected is None:
            continue
        oracle = Oracle(policy=policy)
        if (key, "oracle") in ref.expected and (key, "honest") in ref.expected:
            oracle.oracle[0] = _tensors(ref.expected[(key, "oracle")])
            oracle.honest[0] = _tensors(ref.expected[(key, "honest")])
        got = [(o.tensor, o.plain, o.type_name) for o in timed.outputs]
        verdict = judge([_tensors(expected)], [got], atol, rtol, oracle)
        rechecked += 1
        if verdict.trials_passed == 1:
            continue
        why = verdict.mismatch.message if verdict.mismatch is not None else "its outputs are not plain tensors"
        finding = rules.finding(
            "timed_output",
            f"timed call {timed.rep + 1}: the output differs from the reference's for that call's inputs ({why[:300]}); "
            "work done while timed must produce the real result (no caching, replay or skipped calls)",
        )
        if finding is not None:
            findings.append(finding)
        break
    return rechecked, findings


def kernel_coverage(result: ProfileResult, rules: Guardrails) -> tuple[float | None, list[Finding]]:
    """GPU: the share of device time in this backend's kernels (or allowed library ones) must reach the floor."""
    if not result.device.startswith("cuda") or not result.breakdown or result.interpreted:
        return None, []
    share = round(sum(k.share for k in result.breakdown if k.own or k.allowed), 4)
    if share >= rules.min_own_kernel_share:
        return share, []
    library = ", ".join(k.name[:60] for k in result.breakdown if not (k.own or k.allowed))[:300]
    finding = rules.finding(
        "kernel_coverage",
        f"only {share:.0%} of the device time is in this backend's own kernels (at least {rules.min_own_kernel_share:.0%} required); "
        f"the rest runs in library kernels ({library}). Allow specific ops with guardrails.allow_torch_ops",
    )
    return share, [finding] if finding is not None else []
