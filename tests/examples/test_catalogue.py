"""The problem catalogue: listing, reading and looking up bundled problems."""

from __future__ import annotations

import ast

import pytest

from kfoundry import examples

EXPECTED = {"elementwise", "softmax", "layernorm", "matmul_epilogue", "reduction", "rmsnorm_scale"}


def _top_level_names(text: str) -> set[str]:
    return {node.name for node in ast.parse(text).body if isinstance(node, (ast.ClassDef, ast.FunctionDef))}


def test_problems_lists_every_bundled_problem_with_cpp_triton_cuda_and_helion_solutions_and_gpu_dsls_for_two() -> None:
    found = {p.name: p for p in examples.problems()}

    assert EXPECTED <= set(found)
    for info in found.values():
        gpu_dsls = ["cute", "tilelang"] if info.name in ("elementwise", "matmul_epilogue") else []
        assert info.solutions == ["cpp", "triton", "cuda", "helion", *gpu_dsls], info.name


def test_every_problem_has_its_own_title_and_description() -> None:
    for info in examples.problems():
        assert info.title and info.title != info.name
        assert info.description


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_reference_is_in_kernelbench_format(name: str) -> None:
    text = examples.source(name)

    assert text.startswith("import torch\nimport torch.nn as nn\n")
    assert {"Model", "get_inputs", "get_init_inputs"} <= _top_level_names(text)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_solutions_define_model_new_and_use_their_backend(name: str) -> None:
    cpp = examples.source(name, "cpp")
    triton = examples.source(name, "triton")

    assert "ModelNew" in _top_level_names(cpp) and "load_cpp(" in cpp
    assert "ModelNew" in _top_level_names(triton) and "@triton.jit" in triton


def test_path_points_at_the_file_source_reads() -> None:
    assert examples.path("softmax", "triton").read_text(encoding="utf-8") == examples.source("softmax", "triton")


def test_unknown_problem_raises_key_error_listing_known_names() -> None:
    with pytest.raises(KeyError, match="softmax"):
        examples.source("no_such_problem")


def test_unknown_part_raises_key_error_listing_the_parts_that_exist() -> None:
    with pytest.raises(KeyError, match="reference, reference_gpu, cpp, triton, cuda"):
        examples.source("softmax", "hip")


def test_names_that_escape_the_examples_folder_are_unknown() -> None:
    with pytest.raises(KeyError):
        examples.path("../prompts", "reference")
