"""The three roles, end to end through the MCP tools.

The candidate's process only runs ``forward``: it never holds the problem, never times a
baseline, cannot tell one call from another (every call is judged), and anything it leaves
running after ``forward`` returns does not count. Static guardrails are switched off in
these tests so that what is tested is the process boundary itself.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from candidates import REFERENCE, _candidate
from mcp import Client
from mcp_support import ok, rss_growth

pytestmark = pytest.mark.anyio

#: every static rule and the measured kernel coverage off: the candidate reaches the worker whatever it does
OPEN = {"rules": {rule: "off" for rule in (
    "try_fallback", "concurrency", "low_level_os", "ctypes_libc", "file_io", "reference_use", "monkeypatch", "introspection",
    "output_cache", "monkeypatch_runtime", "thread_leak", "process_leak", "torch_compute", "kernel_coverage",
)}}
MARKER = "kfoundry-problem-marker-7f3a9c"
MARKED_REFERENCE = REFERENCE + f"\n# {MARKER}\n"

# Looks everywhere the candidate's own process can look; computes a wrong answer if it finds the problem.
SEARCHES_FOR_THE_PROBLEM = _candidate(
    """
    if _found_problem():
        return torch.zeros_like(x)
    return swish(x, self.scale_factor)
    """,
    extra=f'''
import gc


def _texts():
    yield from (m.__name__ + str(getattr(m, "__file__", "")) for m in list(sys.modules.values()))
    for obj in gc.get_objects():
        if isinstance(obj, str):
            yield obj
        elif isinstance(obj, dict):
            yield from (v for v in obj.values() if isinstance(v, str))
    yield " ".join(sys.argv)
    yield " ".join(os.environ.values())
    for proc in ("self", str(os.getppid())):
        for name in ("cmdline", "environ"):
            try:
                with open(f"/proc/{{proc}}/{{name}}", "rb") as fh:
                    yield fh.read().decode(errors="replace")
            except OSError:
                pass
    roots = {{os.getcwd()}}
    try:
        roots |= {{os.readlink(f"/proc/self/fd/{{fd}}") for fd in os.listdir("/proc/self/fd")}}
    except OSError:
        pass
    # What the process was handed: its working directory and the folders of its open files.
    # (The rest of the file system is the sandbox's to hide.)
    for root in roots:
        if not os.path.isdir(root):
            continue
        for folder, _, files in os.walk(root):
            for name in files:
                try:
                    with open(os.path.join(folder, name), "rb") as fh:
                        yield fh.read(1 << 20).decode(errors="replace")
                except OSError:
                    pass


# Built at run time, so the candidate's own source does not contain what it looks for.
_NEEDLES = ["".join(reversed(s)) for s in ("{MARKER[::-1]}", "stupni_teg fed")]


def _found_problem():
    if "reference" in sys.modules:
        return True
    for text in _texts():
        if any(text is needle for needle in _NEEDLES):
            continue
        if any(needle in text for needle in _NEEDLES):
            return True
    return False
''',
)

# Patches everything it can reach to sleep: were the baselines timed in this process, they would slow down.
PATCHES_THE_BASELINES = _candidate(
    "return swish(x, self.scale_factor)",
    extra='''
import time

_sleep = time.sleep


def _slow(original):
    def wrapped(*args, **kwargs):
        _sleep(0.2)
        return original(*args, **kwargs)
    return wrapped


torch.sigmoid = _slow(torch.sigmoid)
torch.Tensor.sigmoid = _slow(torch.Tensor.sigmoid)
torch.Tensor.__mul__ = _slow(torch.Tensor.__mul__)
torch.nn.Module.__call__ = _slow(torch.nn.Module.__call__)
torch.compile = lambda model, *a, **k: _slow(model)
''',
)



def wrong_once(bad: int) -> str:
    """Wrong on the ``bad``-th call of forward only, counted by the candidate itself."""
    return _candidate(
        """
        _calls.append(1)
        if len(_calls) == _BAD:
            return torch.zeros_like(x)
        return swish(x, self.scale_factor)
        """,
        extra=f"_calls = []\n_BAD = {bad}\n",
    )

# Returns an empty output and fills it from a thread after forward has returned.
FILLS_AFTER_RETURN = _candidate(
    """
    out = torch.empty_like(x).fill_(0.5)

    def late():
        _time.sleep(0.05)
        out.copy_(swish(x, self.scale_factor))

    threading.Thread(target=late, daemon=True).start()
    return out
    """,
    extra="import threading\nimport time as _time\n",
)


async def _verify(client: Client, source: str, reference: str = REFERENCE, **extra: Any) -> dict[str, Any]:
    arguments = {"backend": "cpp", "reference": reference, "candidate": source, "trials": 3, "guardrails": OPEN, "timeout_s": 90, **extra}
    return await ok(client, "verify", arguments, within=150)


async def test_a_candidate_cannot_find_the_problem_in_anything_its_process_was_handed(client: Client) -> None:
    data = await _verify(client, SEARCHES_FOR_THE_PROBLEM, reference=MARKED_REFERENCE)

    assert data["state"] == "correct", json.dumps(data)[:3000]


async def test_the_search_itself_works_when_the_problem_is_within_reach(client: Client) -> None:
    # The same search, pointed at a copy of the problem in its own working directory, finds it.
    planted = SEARCHES_FOR_THE_PROBLEM.replace("class ModelNew", f"open('planted.txt', 'w').write({MARKER!r})\n\n\nclass ModelNew")

    data = await _verify(client, planted, reference=MARKED_REFERENCE)

    assert data["state"] in ("mismatch", "rejected"), data


async def test_baseline_timings_do_not_change_when_the_candidate_patches_what_it_can_reach(client: Client) -> None:
    arguments = {"backend": "cpp", "reference": REFERENCE, "trials": 1, "warmup": 1, "reps": 5, "baselines": ["eager", "compile"],
                 "guardrails": OPEN, "timeout_s": 240}

    data = await ok(client, "profile", {**arguments, "candidate": PATCHES_THE_BASELINES}, within=300)

    assert data["state"] == "correct", json.dumps(data)[:3000]
    # Every patched entry point sleeps 200 ms; the baselines, timed in the reference's process, never do.
    assert data["eager"]["median_ms"] < 100 and data["eager"]["min_ms"] < 100, data["eager"]
    if data.get("compiled"):
        assert data["compiled"]["median_ms"] < 100, data["compiled"]
    # ... while the candidate's own calls do pay for its patches.
    assert data["candidate"]["min_ms"] >= 200, data["candidate"]


# With one trial, two warm-ups and eight timed calls: the trial, a warm-up, the first and the last timed call.
@pytest.mark.parametrize("bad", [1, 3, 4, 11])
async def test_a_candidate_wrong_on_a_single_call_is_caught_whichever_call_that_is(client: Client, bad: int) -> None:
    arguments = {"backend": "cpp", "reference": REFERENCE, "candidate": wrong_once(bad), "trials": 1, "warmup": 2, "reps": 8,
                 "baselines": ["eager"], "guardrails": OPEN, "timeout_s": 240}

    data = await ok(client, "profile", arguments, within=300)

    assert data["state"] in ("mismatch", "rejected"), data
    if data["state"] == "rejected":
        # zeros on a trial are a constant output; on any later call, a timed call that differs from the reference
        assert {"timed_output", "constant_output"} & {f["code"] for f in data["findings"] if f["blocking"]}, data["findings"]


async def test_work_left_running_after_forward_returns_does_not_count(client: Client) -> None:
    data = await _verify(client, FILLS_AFTER_RETURN)

    assert data["state"] in ("mismatch", "rejected"), data
    if data["state"] == "mismatch":
        assert data["mismatch"]["samples"][0]["got"] == 0.5


OUTER_REFERENCE = '''\
import torch
import torch.nn as nn

N = 22400  # an N x N float32 output: 2.0 GB


class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x, y):
        return torch.outer(x, y)


def get_inputs():
    return [torch.rand(N), torch.rand(N)]


def get_init_inputs():
    return []
'''

OUTER_CPP = '''\
import torch
import torch.nn as nn

from kfoundry.backends.cpp import load_cpp

_lib = load_cpp(r"""
#include <cstdint>
extern "C" void outer(const float* x, const float* y, float* out, int64_t n) {
    #pragma omp parallel for
    for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < n; ++j) out[i * n + j] = x[i] * y[j];
}
""")


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x, y):
        out = torch.empty(x.numel(), y.numel(), dtype=torch.float32)
        _lib.outer(x.contiguous(), y.contiguous(), out, x.numel())
        return out
'''


@pytest.mark.slow
async def test_a_2_gb_output_is_verified_without_the_parent_growing(client: Client) -> None:
    with rss_growth() as grown:
        arguments = {"backend": "cpp", "reference": OUTER_REFERENCE, "candidate": OUTER_CPP, "trials": 1, "timeout_s": 600}
        data = await ok(client, "verify", arguments, within=700)

    assert data["state"] == "correct", json.dumps(data)[:3000]
    # The outputs stay in the workers' memory; the parent only ever holds their summaries.
    assert grown[0] < 256, f"the parent grew by {grown[0]:.0f} MB while verifying a 2 GB output"


def _swaps_trusted_folders(target: str) -> str:
    return _candidate(
        """
    import glob
    for folder in glob.glob("/dev/shm/kfoundry-x-*/w*"):
        for sub in ("peer", "built"):
            try:
                os.rename(f"{folder}/{sub}", f"{folder}/{sub}-old")
                os.symlink(TARGET, f"{folder}/{sub}")
            except OSError:
                pass
    return swish(x, self.scale_factor)
    """,
        extra=f"TARGET = {target!r}\n",
    )


async def test_a_candidate_cannot_swap_the_folders_the_trusted_side_writes_into_for_links(client: Client, tmp_path: Any) -> None:
    # A folder anyone may write: had the swap worked, the trusted side would link inputs and builds into it.
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o777)
    target.chmod(0o777)

    data = await _verify(client, _swaps_trusted_folders(str(target)))

    assert data["state"] == "correct", json.dumps(data)[:3000]
    assert list(target.iterdir()) == []
