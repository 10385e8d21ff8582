"""Shared test setup: an isolated KFOUNDRY_HOME, and Triton's interpreter on hosts without a GPU."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Both must be decided before anything imports triton or reads settings.
_HOME = Path(tempfile.mkdtemp(prefix="kfoundry-test-"))
os.environ.setdefault("KFOUNDRY_HOME", str(_HOME))
if shutil.which("nvidia-smi") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU with CUDA (torch.cuda.is_available() is False here)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
