"""The Helion backend: its scans and probe anywhere; its candidates verified and profiled where helion is installed
(through Triton's interpreter on a CPU-only host, compiled on a GPU)."""

from __future__ import annotations

import ast
import importlib.util

import pytest
import torch
from mcp import Client
from mcp_support import ok

from kfoundry import examples
from kfoundry.backends import get_backend
from kfoundry.verify.runtime_checks import OpTrace

needs_helion = pytest.mark.skipif(importlib.util.find_spec("helion") is None,
                                  reason="helion is not installed (pip install 'kernel-foundry[helion]')")


def _resolve(tree: ast.Module):  # noqa: ANN202 - the scans' own resolver, built the way ast_rules builds it
    from kfoundry.verify.ast_rules import _Scan

    scan = _Scan()
    scan.visit(tree)
    return scan.root


def _hits(kind: str, source: str) -> list[tuple[int, str, str]]:
    tree = ast.parse(source)
    backend = get_backend("helion")
    found = backend.marker_hits(tree, _resolve(tree)) if kind == "marker" else backend.precision_hits(tree, _resolve(tree))
    return [(h.line, h.kind, h.message) for h in found]


_GEMM = '''import helion
import helion.language as hl
import torch

@helion.kernel({settings})
def mm(a, b):
    m, k = a.size()
    _, n = b.size()
    out = torch.empty([m, n], dtype=a.dtype, device=a.device)
    for tm, tn in hl.tile([m, n]):
        acc = hl.zeros([tm, tn], dtype=torch.float32)
        for tk in hl.tile(k):
            acc = torch.addmm(acc, a[tm, tk], b[tk, tn])
        out[tm, tn] = acc
    return out

y = mm
'''


def test_a_helion_matmul_without_ieee_dot_precision_is_a_tf32_hit_at_the_matmul_line() -> None:
    [(line, kind, message)] = _hits("precision", _GEMM.format(settings=""))

    assert (line, kind) == (13, "tf32")
    assert 'dot_precision="ieee"' in message and "mm" in message


def test_a_helion_matmul_with_ieee_dot_precision_has_no_precision_hit() -> None:
    assert _hits("precision", _GEMM.format(settings='dot_precision="ieee"')) == []


def test_tf32x3_dot_precision_and_fast_math_are_named_for_what_they_are() -> None:
    hits = _hits("precision", _GEMM.format(settings='dot_precision="tf32x3", fast_math=True'))

    assert sorted(kind for _, kind, _ in hits) == ["fast_math", "tf32"]
    assert any("'tf32x3'" in message for _, _, message in hits)


def test_a_kernel_made_by_calling_helion_kernel_is_scanned_like_a_decorated_one() -> None:
    source = _GEMM.format(settings="").replace("@helion.kernel()\n", "").replace("y = mm\n", "y = helion.kernel(mm, fast_math=True)\n")

    hits = _hits("precision", source)

    assert sorted(kind for _, kind, _ in hits) == ["fast_math", "tf32"]
    assert _hits("marker", source) == []


@pytest.mark.parametrize("settings", ["fast_math=FAST", "**OPTIONS"])
def test_fast_math_settings_a_scan_cannot_read_are_named(settings: str) -> None:
    hits = _hits("precision", _GEMM.format(settings=f'dot_precision="ieee", {settings}'))

    assert [kind for _, kind, _ in hits] == ["fast_math"]


def test_setting_helions_fast_math_variable_is_named() -> None:
    [(line, kind, _)] = _hits("precision", 'import os\nos.environ["HELION_FAST_MATH"] = "1"\n')

    assert (line, kind) == (2, "fast_math")


def test_an_elementwise_helion_kernel_has_no_precision_hit() -> None:
    assert _hits("precision", examples.source("elementwise", "helion")) == []


def test_the_marker_wants_a_helion_kernel_that_forward_calls() -> None:
    assert _hits("marker", "import torch\n") == [(0, "", "no function is decorated with @helion.kernel")]
    unused = _GEMM.format(settings="").replace("y = mm\n", "")
    [(line, _, message)] = _hits("marker", unused)
    assert line == 6 and "defined but never called" in message
    assert _hits("marker", _GEMM.format(settings="")) == []
    assert _hits("marker", examples.source("matmul_epilogue", "helion")) == []


def test_kernels_helion_generates_count_as_the_candidates_own() -> None:
    backend = get_backend("helion")

    assert backend.is_own_kernel("_helion_swish_scale") and backend.is_own_kernel("triton::_helion_swish_scale")
    assert not backend.is_own_kernel("void at::native::vectorized_elementwise_kernel<4>")
    # The Python function's own name is not a kernel of its: torch ops in its host code are library work.
    assert not backend.is_own_kernel("helion::swish_scale")


def test_workers_run_helion_without_autotuning_and_on_the_cpu_through_the_triton_interpreter() -> None:
    backend = get_backend("helion")

    assert backend.worker_env("cpu") == {"HELION_AUTOTUNE_EFFORT": "none", "HELION_FAST_MATH": "0", "TRITON_INTERPRET": "1"}
    assert backend.worker_env("cuda:0") == {"HELION_AUTOTUNE_EFFORT": "none", "HELION_FAST_MATH": "0"}


def test_the_probe_says_how_to_install_helion_when_it_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "helion" else real(name, *a))

    info = get_backend("helion").probe()

    assert not info.available and "helion not installed" in info.reason and "kernel-foundry[helion]" in info.reason


@needs_helion
def test_the_probe_reports_helions_version_and_the_interpreter_on_a_cpu_only_host() -> None:
    info = get_backend("helion").probe()

    assert info.available and info.version
    if not torch.cuda.is_available():
        assert info.interpreted and info.device == "cpu" and "interpreter" in info.reason


def test_shape_only_ops_of_a_traced_function_are_not_compute_but_real_ops_beside_them_are() -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    real, mode = torch.randn(8), FakeTensorMode()
    fake = mode.from_tensor(torch.randn(8))
    with OpTrace() as trace:
        with mode:
            _ = torch.sigmoid(fake) * 2
        _ = torch.tanh(real)

    assert trace.compute_ops() == {"tanh": 1}


class _Hidden(torch.Tensor):
    """Claims the meta device, carries a real tensor and computes on it in its own dispatch."""

    @staticmethod
    def __new__(cls, real: torch.Tensor) -> _Hidden:
        made = torch.Tensor._make_wrapper_subclass(cls, real.shape, dtype=real.dtype, device="meta")
        made.hidden = real
        return made

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN206 - torch's protocol
        return func(*[a.hidden if isinstance(a, _Hidden) else a for a in args], **(kwargs or {}))


def test_a_tensor_subclass_that_claims_the_meta_device_but_computes_on_real_data_is_traced() -> None:
    x, w = torch.randn(4, 4), torch.randn(4, 4)

    with OpTrace() as trace:
        y = torch.mm(_Hidden(x), _Hidden(w))

    torch.testing.assert_close(y, x @ w)
    assert trace.compute_ops() == {"mm": 1}


# -- through the server ------------------------------------------------------------------------------


@needs_helion
@pytest.mark.anyio
@pytest.mark.parametrize("problem", ["elementwise", "matmul_epilogue"])
async def test_the_bundled_helion_solutions_are_correct_and_report_their_generated_kernel(client: Client, problem: str) -> None:
    arguments = {"backend": "helion", "reference": examples.source(problem, "reference"), "candidate": examples.source(problem, "helion"), "trials": 2}

    data = await ok(client, "verify", arguments, within=300)

    assert data["state"] == "correct", (data.get("findings"), data.get("error"), data.get("mismatch"))
    assert [f for f in data["findings"] if f["blocking"]] == []
    [kernel] = data["kernels"]
    assert kernel["name"].startswith("_helion_") and any(n.startswith("config Config(block_sizes=") for n in kernel["notes"])


_TORCH_BESIDE = examples.source("elementwise", "helion").replace(
    "return swish_scale(flat, float(self.scale_factor)).view_as(x)",
    "swish_scale(flat, float(self.scale_factor))\n        return x * torch.sigmoid(x) * self.scale_factor",
)

# Compute hidden in the traced function's host code: the real input, stashed in a global, is read during tracing.
_COMPUTE_WHILE_TRACED = examples.source("elementwise", "helion").replace(
    "    out = torch.empty_like(x)\n",
    "    out = torch.empty_like(x)\n    _STASH[1] = _STASH[0] * torch.sigmoid(_STASH[0]) * 1.75\n",
).replace("class ModelNew", "_STASH = {}\n\n\nclass ModelNew").replace(
    "        flat = x.contiguous().view(-1)\n",
    "        flat = x.contiguous().view(-1)\n        _STASH[0] = x\n        swish_scale.reset()\n",
).replace("return swish_scale(flat, float(self.scale_factor)).view_as(x)", "swish_scale(flat, float(self.scale_factor))\n        return _STASH[1]")


@needs_helion
@pytest.mark.anyio
@pytest.mark.parametrize(("name", "candidate"), [("torch_beside_the_kernel", _TORCH_BESIDE), ("compute_while_traced", _COMPUTE_WHILE_TRACED)])
async def test_torch_compute_a_helion_candidate_does_outside_its_kernel_is_rejected(client: Client, name: str, candidate: str) -> None:
    arguments = {"backend": "helion", "reference": examples.source("elementwise", "reference"), "candidate": candidate, "trials": 2}

    data = await ok(client, "verify", arguments, within=300)

    assert data["state"] == "rejected", (name, data.get("error"), data.get("mismatch"))
    [finding] = [f for f in data["findings"] if f["code"] == "torch_compute"]
    assert finding["blocking"] and "sigmoid" in finding["message"]


@needs_helion
@pytest.mark.anyio
async def test_a_helion_candidate_is_profiled_against_eager_with_the_interpreter_named_on_a_cpu_only_host(client: Client) -> None:
    arguments = {"backend": "helion", "reference": examples.source("elementwise", "reference"),
                 "candidate": examples.source("elementwise", "helion"), "baselines": ["eager"], "reps": 3, "warmup": 1, "trials": 1}

    data = await ok(client, "profile", arguments, within=300)

    assert data["state"] == "correct", (data.get("findings"), data.get("error"))
    assert data["candidate"]["n"] == 3 and data["eager"]["median_ms"] > 0
    if not torch.cuda.is_available():
        assert any("interpreter" in w for w in data["warnings"])
