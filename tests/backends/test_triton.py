"""The Triton backend: which kernels are a candidate's own, and libdevice under the interpreter (which lacks it)."""

from __future__ import annotations

import pytest
from mcp import Client
from mcp_support import ok

from kfoundry import examples
from kfoundry.backends import triton as triton_backend

# The bundled elementwise solution with sigmoid spelled through libdevice.exp, as generated code spells it.
_LIBDEVICE = examples.source("elementwise", "triton").replace(
    "import triton.language as tl\n", "import triton.language as tl\nfrom triton.language.extra import libdevice\n",
).replace("y = x * tl.sigmoid(x) * scale", "y = x / (1.0 + libdevice.exp(-x)) * scale")


@pytest.mark.anyio
async def test_a_triton_kernel_calling_libdevice_exp_is_verified_correct(client: Client) -> None:
    assert "libdevice.exp(-x)" in _LIBDEVICE
    arguments = {"backend": "triton", "reference": examples.source("elementwise", "reference"), "candidate": _LIBDEVICE, "trials": 2}

    data = await ok(client, "verify", arguments, within=300)

    assert data["state"] == "correct", (data.get("error"), data.get("mismatch"), data.get("findings"))


def test_a_launched_kernel_owns_its_symbol_and_older_tritons_specialisations_but_not_library_kernels_sharing_its_prefix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(triton_backend, "_launched", {"ampere": object(), "add_kernel": object()})
    backend = triton_backend.TritonBackend()

    assert backend.is_own_kernel("add_kernel") and backend.is_own_kernel("add_kernel_0d1d2d3de")
    assert backend.is_own_kernel("triton::ampere")
    assert not backend.is_own_kernel("ampere_sgemm_128x64_nn")  # cuBLAS, whatever the candidate named its kernel
    assert not backend.is_own_kernel("add_kernel_fused")
