"""``backends``: what this host offers and why anything is missing."""

from __future__ import annotations

from kfoundry.backends import names
from kfoundry.runner.pool import WorkerPool
from kfoundry.schema import BackendsResult
from kfoundry.tools.runtime import cuda_available, probe


def list_backends(pool: WorkerPool | None = None) -> BackendsResult:
    infos = [probe(name) for name in names()]
    devices = ["cpu"]
    if cuda_available():
        import torch

        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    available = [i for i in infos if i.available]
    # A kernel on the device beats one on the host, which beats an interpreted one.
    ranked = sorted(available, key=lambda i: (not (i.device.startswith("cuda") and not i.interpreted), i.interpreted))
    best = ranked[0].name if ranked else "none"
    return BackendsResult(backends=infos, best=best, devices=devices, queues=pool.status() if pool is not None else {})
