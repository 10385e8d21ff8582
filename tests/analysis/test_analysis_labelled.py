"""The rules against our labelled profiles: real ``profile`` results of candidates written to show one problem each.

Each fixture in profiles/ is a ProfileResult captured by benchmarks/analysis_capture.py (CPU cases on
a 2-core AVX-512 host, GPU cases on an H100/H200), with the candidate's source and the host it ran
on; labels.json names the best next step for each and why (from the follow-up candidate's measured
effect where one exists). The rules must pick the labelled action for at least 80% of them, never
recommend what the policy or the backend kind rules out, and answer differently across one
problem's sweep of candidates where the evidence differs.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pytest
from pydantic import BaseModel

from kfoundry.profilers.advice import CPU_ACTIONS, GPU_ACTIONS, STRICT_FORBIDDEN, Action
from kfoundry.profilers.analysis import Diagnosis, Host, diagnose
from kfoundry.profilers.peaks import GPU_PEAKS
from kfoundry.schema import ProfileResult

HERE = Path(__file__).parent
#: Words only GPU advice uses; a CPU recommendation containing one has crossed backends.
GPU_WORDS = ("warp", "tl.", "triton", "cuda", "shared memory", "coalesc", "tensor core", "launch", "occupancy", "128-bit")


class Label(BaseModel):
    action: Action
    why: str


class Fixture(BaseModel):
    name: str
    profile: ProfileResult
    source: str
    host: Host
    label: Label
    kind: str
    problem: str


@cache
def fixtures() -> list[Fixture]:
    labels = {k: Label.model_validate(v) for k, v in json.loads((HERE / "labels.json").read_text()).items()}
    found = []
    for path in sorted((HERE / "profiles").glob("*.json")):
        data = json.loads(path.read_text())
        name = data["case"]["name"]
        profile = ProfileResult.model_validate(data["profile"])
        found.append(Fixture(
            name=name, profile=profile, source=data["candidate_source"], host=Host.model_validate(data["host"]), label=labels[name],
            kind="gpu" if profile.device.startswith("cuda") else "cpu", problem=data["case"]["problem"],
        ))
    return found


@cache
def diagnosed(name: str) -> Diagnosis:
    f = next(f for f in fixtures() if f.name == name)
    return diagnose(f.profile, f.source, host=f.host)


def _names(kind: str | None = None) -> list[str]:
    return [f.name for f in fixtures() if kind is None or f.kind == kind]


def test_every_labelled_profile_has_a_label_and_every_label_a_profile() -> None:
    labels = json.loads((HERE / "labels.json").read_text())

    assert sorted(labels) == sorted(_names())
    assert len(labels) >= 20


def test_the_rules_pick_the_labelled_action_for_at_least_80_percent_of_our_profiles() -> None:
    wrong = {f.name: (f.label.action.value, diagnosed(f.name).advice.action.value) for f in fixtures()}
    wrong = {name: pair for name, pair in wrong.items() if pair[0] != pair[1]}
    score = 1 - len(wrong) / len(fixtures())

    assert score >= 0.80, f"{score:.0%} right; labelled vs chosen: {wrong}"


@pytest.mark.parametrize("name", _names())
def test_no_recommendation_asks_for_what_the_backend_kind_or_the_policy_rules_out(name: str) -> None:
    f = next(f for f in fixtures() if f.name == name)
    d = diagnosed(name)
    text = d.recommendation.lower()

    assert d.advice.action in (GPU_ACTIONS if f.kind == "gpu" else CPU_ACTIONS)
    if f.kind == "cpu":
        assert not [w for w in GPU_WORDS if w in text], d.recommendation
    if f.profile.precision == "strict" and _fp32_problem(f):
        assert not [w for w in STRICT_FORBIDDEN if w in text], d.recommendation


def _fp32_problem(f: Fixture) -> bool:
    """Our problems are fp32 unless the roofline was priced at a reduced-precision peak."""
    r = f.profile.roofline
    return f.kind == "cpu" or (r is not None and r.peak_flops in {p.fp32 for p in GPU_PEAKS.values()})


@pytest.mark.parametrize("name", _names())
def test_every_recommendation_to_change_something_states_its_expected_gain_in_time(name: str) -> None:
    d = diagnosed(name)

    if d.advice.action is not Action.stop:
        assert d.advice.expected_gain_ms and d.advice.expected_gain_ms > 0
        assert "saves ~" in d.recommendation


@pytest.mark.parametrize("name", _names())
def test_the_digest_shows_the_peak_the_gap_kernel_and_the_eager_baseline(name: str) -> None:
    f = next(f for f in fixtures() if f.name == name)
    d = diagnosed(name)

    assert d.facts is not None and d.facts.gap_kernel is not None
    assert "gap held by:" in d.digest and "eager" in d.digest
    if f.profile.roofline is not None:
        assert "peak" in d.digest and "of SOL" in d.digest


@pytest.mark.parametrize("problem", sorted({f.problem for f in fixtures()}))
def test_a_sweep_of_candidates_for_one_problem_gets_different_advice_where_the_labels_differ(problem: str) -> None:
    sweep = [f for f in fixtures() if f.problem == problem]
    by_label: dict[Action, set[Action]] = {}
    for f in sweep:
        by_label.setdefault(f.label.action, set()).add(diagnosed(f.name).advice.action)
    chosen = {a for actions in by_label.values() for a in actions}

    # As many different answers as the evidence calls for, less at most one miss.
    assert len(chosen) >= len(by_label) - 1, {f.name: diagnosed(f.name).advice.action.value for f in sweep}
