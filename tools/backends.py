"""``backends``: what this host offers, why anything is missing, and the limits every job runs under."""

from __future__ import annotations

from kfoundry.artifacts import usage
from kfoundry.backends import names
from kfoundry.config import settings
from kfoundry.jail import describe
from kfoundry.runner.pool import WorkerPool
from kfoundry.runner.wire import MAX_FRAME
from kfoundry.schema import BackendsResult, Limits
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
    return BackendsResult(
        backends=infos, best=best, devices=devices, queues=pool.status() if pool is not None else {}, limits=limits(), sandbox=describe()
    )


def limits() -> Limits:
    """The caps in force, with the current caller's artifact usage."""
    s = settings()
    return Limits(
        worker_memory_mb=s.memory_limit_mb, file_mb=s.file_limit_mb, processes=s.max_processes, payload_bytes=s.max_payload_bytes,
        frame_bytes=MAX_FRAME, build_memory_mb=s.build_memory_mb, build_cpu_s=s.build_cpu_s,
        artifact_quota_mb=s.artifact_quota_mb, artifact_ttl_hours=s.artifact_ttl_hours, artifacts=usage(),
    )

