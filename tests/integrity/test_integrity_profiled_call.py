"""The extra call that measures where forward's time goes is judged like a timed one.

A candidate can tell that call apart (the op profiler is on, ``torch._C._autograd._profiler_enabled()``), so
the shares it yields count only if that call computed the real result as well.
"""

from __future__ import annotations

import pytest
from candidates import CORRECT_CPP, REFERENCE
from mcp import Client
from mcp_support import ok

pytestmark = pytest.mark.anyio

#: correct whenever it is judged, something else (here: a constant) whenever the op profiler is on
_WRONG_WHILE_PROFILED = CORRECT_CPP + '''

_Honest = ModelNew


class ModelNew(_Honest):
    def forward(self, *args):
        out = super().forward(*args)
        if torch._C._autograd._profiler_enabled():
            return torch.full_like(out, 7.0)
        return out
'''


async def test_a_candidate_whose_output_changes_while_profiled_is_rejected_by_the_judged_breakdown_call(client: Client) -> None:
    arguments = {"backend": "cpp", "reference": REFERENCE, "candidate": _WRONG_WHILE_PROFILED, "trials": 1, "warmup": 1, "reps": 5,
                 "baselines": ["eager"]}

    data = await ok(client, "profile", arguments, within=300)

    assert data["verify"]["state"] == "correct", data["verify"]  # every judged trial was right
    assert data["state"] == "rejected", data
    [finding] = [f for f in data["findings"] if f["code"] == "timed_output"]
    assert finding["blocking"] and "breakdown call" in finding["message"], finding


async def test_the_honest_candidate_passes_the_judged_breakdown_call(client: Client) -> None:
    arguments = {"backend": "cpp", "reference": REFERENCE, "candidate": CORRECT_CPP, "trials": 1, "warmup": 1, "reps": 5, "baselines": ["eager"]}

    data = await ok(client, "profile", arguments, within=300)

    assert data["state"] == "correct", data["findings"]
    assert not [f for f in data["findings"] if f["code"] == "timed_output"]
    assert data["breakdown"], "the judged call still yields the per-kernel breakdown"
