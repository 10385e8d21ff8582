"""Over MCP: `backends` lists hip, sycl and metal honestly, `compile` checks a HIP candidate, `verify` refuses it, prompts come anyway."""

from __future__ import annotations

import shutil
import uuid

import pytest
from mcp import Client
from mcp_support import call, error_text, ok

from kfoundry import examples, prompts

pytestmark = pytest.mark.anyio


async def test_backends_lists_hip_sycl_and_metal_as_unavailable_with_reasons(client: Client) -> None:
    data = await ok(client, "backends", {})

    by_name = {b["name"]: b for b in data["backends"]}
    for name in ("hip", "sycl", "metal"):
        assert by_name[name]["available"] is False and by_name[name]["reason"], name
    if shutil.which("hipcc"):
        assert by_name["hip"]["compile_only"] is True and by_name["hip"]["version"].startswith("HIP version:")
    assert data["best"] not in ("hip", "sycl", "metal")


@pytest.mark.skipif(shutil.which("hipcc") is None, reason="hipcc is not installed (Debian: apt-get install hipcc)")
async def test_compile_checks_a_kernelbench_hip_candidate_without_an_amd_gpu(client: Client) -> None:
    candidate = prompts.oneshot("hip")[1] + f"# {uuid.uuid4().hex}\n"

    data = await ok(client, "compile", {"candidate": candidate, "backend": "hip"}, within=400)

    assert data["state"] == "compiled", data["diagnostics"]
    assert [k["name"] for k in data["kernels"]] == ["add_tanh_kernel"]
    assert data["next_step"] == "Built (compile-only). verify and profile need a host with a device for hip."


async def test_verify_of_a_hip_candidate_is_refused_with_the_reason(client: Client) -> None:
    reference = examples.source("layernorm")

    result = await call(client, "verify", {"candidate": prompts.oneshot("hip")[1], "reference": reference, "backend": "hip"})

    assert result.is_error
    assert "backend 'hip' is unavailable on this host" in error_text(result)


async def test_translate_reference_writes_a_metal_prompt_on_a_host_without_a_mac(client: Client) -> None:
    reference = examples.source("layernorm")

    data = await ok(client, "translate_reference", {"reference": reference, "target_backend": "metal"})

    assert data["target_backend"] == "metal"
    assert prompts.oneshot("metal")[1].strip() in data["prompt"]
    assert data["analysis"] is not None, data["analysis_error"]
