"""`verify` over MCP: correct candidates of every accepted shape, and every kind of mismatch."""

from __future__ import annotations

import pytest
from candidates import (
    COLS,
    CORRECT_CPP,
    CORRECT_TRITON,
    KERNELBENCH_LOAD_INLINE,
    NAN_OUTPUT,
    NEWMODEL_CPP,
    REFERENCE,
    ROWS,
    WRONG_DTYPE,
    WRONG_SHAPE,
    WRONG_VALUES,
)
from mcp import Client
from mcp_support import ok, verify

pytestmark = pytest.mark.anyio


async def test_the_bundled_cpp_solution_is_correct_on_every_trial(client: Client) -> None:
    data = await verify(client, CORRECT_CPP, trials=3)

    assert data["state"] == "correct", data
    assert (data["trials_passed"], data["trials"]) == (3, 3)
    assert data["mismatch"] is None and data["error"] is None
    assert data["interpreted"] is False
    assert (data["atol"], data["rtol"]) == (1e-4, 1e-4)
    assert data["run_id"].startswith("verify-")
    # On the CPU, sampling measures where forward's time goes; the device share is a GPU measurement.
    assert data["own_kernel_share"] is None and data["cpu_time"] is not None


async def test_the_bundled_triton_solution_is_correct_under_the_interpreter(client: Client) -> None:
    arguments = {"backend": "triton", "reference": REFERENCE, "candidate": CORRECT_TRITON, "trials": 2, "timeout_s": 180}

    data = await ok(client, "verify", arguments, within=200)

    assert data["state"] == "correct", data
    assert data["trials_passed"] == 2
    assert data["interpreted"] is True


async def test_a_candidate_class_named_newmodel_is_accepted(client: Client) -> None:
    data = await verify(client, NEWMODEL_CPP)

    assert data["state"] == "correct", data


@pytest.mark.slow
async def test_a_kernelbench_load_inline_candidate_builds_and_is_correct(client: Client) -> None:
    data = await verify(client, KERNELBENCH_LOAD_INLINE, timeout_s=400, within=420)

    assert data["state"] == "correct", data
    assert "swish_scale" in [k["name"] for k in data["kernels"]]


async def test_wrong_values_are_a_mismatch_that_locates_the_first_bad_element(client: Client) -> None:
    data = await verify(client, WRONG_VALUES)

    assert data["state"] == "mismatch", data
    assert data["trials_passed"] == 0
    detail = data["mismatch"]
    assert detail["reason"] == "values"
    assert detail["first_bad_index"] == [0, 5]
    assert detail["bad_fraction"] == pytest.approx(5 / (ROWS * COLS))
    assert detail["max_abs_error"] == pytest.approx(0.5, abs=1e-4)
    assert [s["index"] for s in detail["samples"]] == [[0, 5], [0, 6], [0, 7], [0, 8], [0, 9]]
    assert all(s["got"] - s["expected"] == pytest.approx(0.5, abs=1e-4) for s in detail["samples"])


async def test_a_wrong_shape_is_a_mismatch_naming_both_shapes(client: Client) -> None:
    data = await verify(client, WRONG_SHAPE)

    assert data["state"] == "mismatch", data
    detail = data["mismatch"]
    assert detail["reason"] == "shape"
    assert (detail["expected_shape"], detail["got_shape"]) == ([ROWS, COLS], [ROWS, COLS - 1])


async def test_a_wrong_dtype_is_a_mismatch_naming_both_dtypes(client: Client) -> None:
    data = await verify(client, WRONG_DTYPE)

    assert data["state"] == "mismatch", data
    detail = data["mismatch"]
    assert detail["reason"] == "dtype"
    assert (detail["expected_dtype"], detail["got_dtype"]) == ("float32", "float64")


async def test_nan_where_the_reference_is_finite_is_a_mismatch(client: Client) -> None:
    data = await verify(client, NAN_OUTPUT)

    assert data["state"] == "mismatch", data
    detail = data["mismatch"]
    assert detail["reason"] == "nonfinite"
    assert detail["first_bad_index"] == [3, 7]
    assert detail["samples"][0]["got"] == "nan"
