"""Prompts for backends this host cannot run (HIP, SYCL, Metal) carry their notes and one-shot, and CUDA-to-HIP guidance."""

from __future__ import annotations

import pytest

from kfoundry import examples, prompts
from kfoundry.backends import get_backend
from kfoundry.errors import BadRequest
from kfoundry.tools.translate import prompt_target, render_prompt

LAYERNORM = examples.source("layernorm")


@pytest.mark.parametrize("name", ["hip", "sycl", "metal"])
def test_the_generate_prompt_holds_the_backends_marker_notes_and_one_shot(name: str) -> None:
    backend = get_backend(name)
    oneshot_reference, oneshot_solution = prompts.oneshot(name)

    text = render_prompt(LAYERNORM, name)

    assert text.startswith(f"You are an expert performance engineer who writes {name} kernels.")
    assert f"A {name} candidate must contain: {backend.marker}." in text
    assert backend.notes in text
    assert oneshot_reference.strip() in text and oneshot_solution.strip() in text


def test_translating_cuda_to_hip_adds_what_the_port_must_change() -> None:
    text = render_prompt(LAYERNORM, "hip", "cuda", examples.source("layernorm", "cuda"))

    assert text.startswith("You are an expert in both cuda and hip kernels. Translate the working cuda candidate below into hip")
    assert get_backend("hip").translate_from["cuda"] in text
    assert "warpSize is 64" in text


def test_translating_cuda_to_sycl_adds_no_hip_guidance() -> None:
    text = render_prompt(LAYERNORM, "sycl", "cuda", examples.source("layernorm", "cuda"))

    assert "warpSize is 64" not in text
    assert get_backend("cuda").notes in text


@pytest.mark.parametrize("name", ["hip", "sycl", "metal"])
def test_a_prompt_may_target_a_backend_this_host_cannot_run(name: str) -> None:
    assert prompt_target(f" {name.upper()} ").name == name


def test_an_unknown_prompt_target_is_a_bad_request_listing_the_backends() -> None:
    with pytest.raises(BadRequest, match="Known backends: cpp, cuda, cute, helion, hip, metal, sycl, tilelang, triton"):
        prompt_target("vulkan")


def test_the_metal_one_shot_launches_every_kernel_its_shader_defines() -> None:
    _, solution = prompts.oneshot("metal")

    assert "kernel void add_tanh(" in solution
    assert "_lib.add_tanh(a, b, y, float(self.alpha), n, threads=n, group_size=256)" in solution


def test_the_sycl_one_shot_declares_in_cpp_sources_what_sycl_sources_defines() -> None:
    _, solution = prompts.oneshot("sycl")

    assert 'CPP_SOURCE = "torch::Tensor add_tanh(torch::Tensor a, torch::Tensor b, double alpha);"' in solution
    assert "torch::Tensor add_tanh(torch::Tensor a, torch::Tensor b, double alpha) {" in solution
    assert 'functions=["add_tanh"]' in solution
