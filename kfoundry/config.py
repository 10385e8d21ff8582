"""Server-wide settings, read once from the environment (``KFOUNDRY_*``)."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

from pydantic import BaseModel, Field


def _home() -> Path:
    explicit = os.environ.get("KFOUNDRY_HOME")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kfoundry"


class Settings(BaseModel):
    home: Path = Field(description="Root for caches and run artifacts.")
    spares: int = Field(default=2, ge=0, le=16, description="Pre-started worker processes kept for the CPU.")
    gpu_spares: int = Field(default=4, ge=0, le=16, description="Pre-started worker processes kept per GPU.")
    cpu_jobs: int = Field(default=2, ge=1, description="Concurrent non-timing jobs on the CPU device.")
    gpu_jobs: int = Field(default=2, ge=1, description="Concurrent non-timing jobs per GPU.")
    per_owner_jobs: int = Field(default=0, ge=0, description="Running jobs per token and device (0: no cap).")
    memory_limit_mb: int = Field(default=8192, ge=256, description="Address-space cap of a CPU worker.")
    file_limit_mb: int = Field(default=2048, ge=1, description="Largest file a worker may write (RLIMIT_FSIZE).")
    max_processes: int = Field(default=256, ge=16, description="Process/thread cap of one worker's sandbox user.")
    max_payload_bytes: int = Field(default=4 << 20, description="Largest reference/candidate source accepted.")
    sandbox_uid: int = Field(default=61000, description="Uid (outside the sandbox) that workers and builds run as when the server is root.")
    unsafe_no_sandbox: bool = Field(
        default=False, description="Run untrusted code without bubblewrap namespaces (KFOUNDRY_UNSAFE_NO_SANDBOX=1): single-user hosts only."
    )
    build_memory_mb: int = Field(default=4096, ge=256, description="Address-space cap of one compiler process.")
    build_cpu_s: int = Field(default=300, ge=5, description="CPU-time cap of one compiler process.")
    artifact_quota_mb: int = Field(default=2048, ge=1, description="Artifact bytes one token may keep; its oldest runs go first.")
    artifact_ttl_hours: float = Field(default=168.0, gt=0, description="Runs older than this are removed.")

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    @property
    def shared_cache_dir(self) -> Path:
        """Caches workers write themselves (Triton, inductor, torch extensions)."""
        return self.home / "worker-cache"

    @property
    def scratch_dir(self) -> Path:
        return self.home / "scratch"


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return int(raw) if raw else default


@cache
def settings() -> Settings:
    return Settings(
        home=_home(),
        spares=_int_env("KFOUNDRY_SPARES", 2),
        gpu_spares=_int_env("KFOUNDRY_GPU_SPARES", 4),
        cpu_jobs=_int_env("KFOUNDRY_CPU_JOBS", 2),
        gpu_jobs=_int_env("KFOUNDRY_GPU_JOBS", 2),
        per_owner_jobs=_int_env("KFOUNDRY_PER_TOKEN_JOBS", 0),
        memory_limit_mb=_int_env("KFOUNDRY_MEMORY_LIMIT_MB", 8192),
        file_limit_mb=_int_env("KFOUNDRY_FILE_LIMIT_MB", 2048),
        max_processes=_int_env("KFOUNDRY_MAX_PROCESSES", 256),
        sandbox_uid=_int_env("KFOUNDRY_SANDBOX_UID", 61000),
        unsafe_no_sandbox=os.environ.get("KFOUNDRY_UNSAFE_NO_SANDBOX", "") == "1",
        build_memory_mb=_int_env("KFOUNDRY_BUILD_MEMORY_MB", 4096),
        build_cpu_s=_int_env("KFOUNDRY_BUILD_CPU_S", 300),
        artifact_quota_mb=_int_env("KFOUNDRY_ARTIFACT_QUOTA_MB", 2048),
        artifact_ttl_hours=float(os.environ.get("KFOUNDRY_ARTIFACT_TTL_HOURS") or 168.0),
    )
