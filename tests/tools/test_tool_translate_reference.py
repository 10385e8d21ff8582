"""`translate_reference` over MCP: the rendered prompt, the problem analysis, and the client-sampled translation."""

from __future__ import annotations

import anyio
import pytest
from mcp import Client
from mcp.client.context import ClientRequestContext
from mcp.types import CreateMessageRequestParams, CreateMessageResult, TextContent
from mcp_support import ok

from kfoundry import examples, prompts
from kfoundry.server.app import build_server

pytestmark = pytest.mark.anyio

MATMUL = examples.source("matmul_epilogue")
M, K, N = 128, 256, 256  # batch_size, in_features, out_features in examples/matmul_epilogue/reference.py
SAMPLED = "class ModelNew:  # written by the client's own model\n    pass\n"


async def test_the_prompt_holds_the_reference_and_the_backends_one_shot_example(client: Client) -> None:
    data = await ok(client, "translate_reference", {"reference": MATMUL, "target_backend": "cpp"})

    oneshot_reference, oneshot_solution = prompts.oneshot("cpp")
    assert MATMUL.strip() in data["prompt"]
    assert oneshot_reference.strip() in data["prompt"]
    assert oneshot_solution.strip() in data["prompt"]
    assert (data["target_backend"], data["source_backend"]) == ("cpp", "pytorch")


async def test_the_analysis_counts_two_m_n_k_flops_for_the_matmul_epilogue(client: Client) -> None:
    data = await ok(client, "translate_reference", {"reference": MATMUL, "target_backend": "cpp"})

    analysis = data["analysis"]
    assert analysis is not None, data["analysis_error"]
    assert analysis["flops"] == 2 * M * N * K
    assert analysis["input_shapes"] == [[M, K]] and analysis["output_shapes"] == [[M, N]]
    assert analysis["bytes"] > 0


async def test_a_triton_source_kernel_is_rendered_with_the_translate_template(client: Client) -> None:
    source = examples.source("matmul_epilogue", "triton")
    arguments = {"reference": MATMUL, "target_backend": "cpp", "source_backend": "triton", "source_code": source}

    data = await ok(client, "translate_reference", arguments)

    assert data["source_backend"] == "triton"
    assert data["prompt"].startswith("You are an expert in both triton and cpp kernels. Translate")
    assert source.strip() in data["prompt"]


async def test_without_a_sampling_callback_sample_true_gives_no_translation_and_no_error(client: Client) -> None:
    data = await ok(client, "translate_reference", {"reference": MATMUL, "target_backend": "cpp", "sample": True})

    assert data["translation"] is None
    assert data["translation_source"] == "none"
    assert MATMUL.strip() in data["prompt"]


async def test_with_a_sampling_callback_sample_true_returns_the_clients_translation() -> None:
    asked: list[str] = []

    async def sampling_callback(ctx: ClientRequestContext, params: CreateMessageRequestParams) -> CreateMessageResult:
        asked.extend(block.text for message in params.messages for block in message.content_as_list if block.type == "text")
        return CreateMessageResult(role="assistant", content=TextContent(type="text", text=SAMPLED), model="scripted", stop_reason="endTurn")

    with anyio.fail_after(120):
        async with Client(build_server(), sampling_callback=sampling_callback) as sampling_client:
            data = await ok(sampling_client, "translate_reference", {"reference": MATMUL, "target_backend": "cpp", "sample": True})

    assert data["translation"] == SAMPLED
    assert data["translation_source"] == "sampling"
    assert asked and MATMUL.strip() in asked[0]
