"""``backends``: what this host offers and why anything is missing."""

from __future__ import annotations

from kfoundry.backends import names
from kfoundry.schema import BackendsResult
from kfoundry.runner.pool import WorkerPool
from kfoundry.tools.runtime import cuda_available, probe


def list_backends(pool: WorkerPool | None = None) -> BackendsResult:
    infos = [probe(name) for name in names()]
    devices = ["cpu"]
    if cuda_available():
        import torch

        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    available = {i.name: i for i in infos if i.available}
    gpu_native = [i.name for i in infos if i.available and i.device.startswith("cuda") and not i.interpreted]
    best = gpu_native[0] if gpu_native else ("cpp" if "cpp" in available else next(iter(available), "none"))
    return BackendsResult(backends=infos, best=best, devices=devices, queues=pool.status() if pool is not None else {})
