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
    sandbox_uid_base: int = Field(default=61000, description="First uid used for worker sandboxes when running as root.")

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
    )
