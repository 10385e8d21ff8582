"""Every bundled solution matches its reference, with the reference's parameters copied in by name."""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path
from types import ModuleType

import pytest
import torch

from kfoundry import examples
from kfoundry.backends import get_backend

ATOL = RTOL = 1e-4
_HELION = pytest.mark.skipif(importlib.util.find_spec("helion") is None, reason="helion is not installed (pip install 'kernel-foundry[helion]')")
_CUTE = pytest.mark.skipif(importlib.util.find_spec("cutlass") is None, reason="the CuTe DSL is not installed (pip install 'kernel-foundry[cute]')")
_TILELANG = pytest.mark.skipif(importlib.util.find_spec("tilelang") is None, reason="tilelang is not installed (pip install 'kernel-foundry[tilelang]')")
# CuTe DSL and TileLang kernels have no CPU interpreter: they run on a GPU only
_MARKS = {"cuda": [pytest.mark.gpu], "helion": [_HELION], "cute": [pytest.mark.gpu, _CUTE], "tilelang": [pytest.mark.gpu, _TILELANG]}
_CASES = [
    pytest.param(p.name, backend, marks=_MARKS.get(backend, []), id=f"{p.name}-{backend}")
    for p in examples.problems()
    for backend in p.solutions
]
_counter = itertools.count()


def _load(path: Path) -> ModuleType:
    # A fresh module name per load: two candidates for one problem must not share globals.
    spec = importlib.util.spec_from_file_location(f"_kf_example_{next(_counter)}_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _device(backend: str) -> str:
    # Triton (and Helion, which generates Triton) runs on CPU tensors only under its interpreter, i.e. on hosts without a GPU.
    return "cuda" if backend in ("cuda", "cute", "tilelang") or (backend in ("triton", "helion") and torch.cuda.is_available()) else "cpu"


def _build_pair(name: str, backend: str) -> tuple[ModuleType, torch.nn.Module, torch.nn.Module]:
    kernels = get_backend(backend)
    if kernels.probe().interpreted:
        # As a worker does before importing a candidate (the interpreter lacks libdevice, which generated code calls).
        kernels.prepare_worker()
    reference = _load(examples.path(name, "reference"))
    candidate = _load(examples.path(name, backend))
    init = reference.get_init_inputs()
    torch.manual_seed(0)
    model = reference.Model(*init).to(_device(backend))
    torch.manual_seed(0)
    model_new = candidate.ModelNew(*init).to(_device(backend))
    return reference, model, model_new


@pytest.mark.parametrize(("name", "backend"), _CASES)
def test_solution_matches_reference_with_perturbed_parameters(name: str, backend: str) -> None:
    reference, model, model_new = _build_pair(name, backend)
    # Default inits (ones/zeros) would hide a kernel that ignores its parameters.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    own = model_new.state_dict()
    shared = {k: v for k, v in model.state_dict().items() if k in own and own[k].shape == v.shape}
    model_new.load_state_dict(shared, strict=False)

    torch.manual_seed(1234)
    inputs = [t.to(_device(backend)) for t in reference.get_inputs()]
    with torch.no_grad():
        expected = model(*[t.clone() for t in inputs])
        got = model_new(*inputs)

    assert got.shape == expected.shape
    assert got.dtype == expected.dtype
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize(("name", "backend"), _CASES)
def test_solution_exposes_the_reference_parameter_names_and_shapes(name: str, backend: str) -> None:
    _, model, model_new = _build_pair(name, backend)

    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in model_new.state_dict().items()}

    assert got == expected
