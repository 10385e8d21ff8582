"""Triton candidates that call libdevice run under the interpreter too (it lacks libdevice; the worker maps it onto tl)."""

from __future__ import annotations

import pytest
from mcp import Client
from mcp_support import ok

from kfoundry import examples

pytestmark = pytest.mark.anyio

# The bundled elementwise solution with sigmoid spelled through libdevice.exp, as generated code spells it.
_LIBDEVICE = examples.source("elementwise", "triton").replace(
    "import triton.language as tl\n", "import triton.language as tl\nfrom triton.language.extra import libdevice\n",
).replace("y = x * tl.sigmoid(x) * scale", "y = x / (1.0 + libdevice.exp(-x)) * scale")


async def test_a_triton_kernel_calling_libdevice_exp_is_verified_correct(client: Client) -> None:
    assert "libdevice.exp(-x)" in _LIBDEVICE
    arguments = {"backend": "triton", "reference": examples.source("elementwise", "reference"), "candidate": _LIBDEVICE, "trials": 2}

    data = await ok(client, "verify", arguments, within=300)

    assert data["state"] == "correct", (data.get("error"), data.get("mismatch"), data.get("findings"))
