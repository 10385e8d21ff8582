"""Warm spare workers per device, and per-device admission (exclusive while timing)."""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType

import anyio
from anyio.abc import TaskGroup

from kfoundry.config import settings
from kfoundry.jail import sandbox_root
from kfoundry.runner.process import Worker
from kfoundry.runner.sandbox import cgroup_parents, sweep_leftovers
from kfoundry.runner.scheduler import DeviceQueue, PositionFn

logger = logging.getLogger(__name__)


def gpu_count() -> int:
    """GPUs this process's CUDA sees (imports torch: called when a GPU job arrives)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def driver_gpus() -> int:
    """GPUs the NVIDIA driver reports (NVML), within ``CUDA_VISIBLE_DEVICES``; 0 without a driver.

    Start-up uses this rather than ``gpu_count``: importing torch takes seconds, and a server must
    answer ``initialize`` before any job needs torch.
    """
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
        if nvml.nvmlInit_v2() != 0:
            return 0
        count = ctypes.c_uint(0)
        found = count.value if nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) == 0 else 0
        nvml.nvmlShutdown()
    except (OSError, AttributeError):
        return 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return found
    # CUDA stops at the first entry it cannot use ("-1", an empty list): count up to there.
    entries = []
    for entry in visible.split(","):
        if not entry.strip() or entry.strip().startswith("-"):
            break
        entries.append(entry)
    return min(found, len(entries))


class _Device:
    def __init__(self, name: str, jobs: int) -> None:
        self.name = name
        self.queue = DeviceQueue(jobs, settings().per_owner_jobs)
        self.spares: list[Worker] = []
        self.starting = 0
        #: spares still starting, which a timing job stops rather than waits for
        self.booting: set[Worker] = set()


class WorkerPool:
    """Hands out fresh workers (one job each) and keeps ``spares`` warm per device.

    Use as an async context manager; leaving it kills every worker it still holds.
    """

    def __init__(self, spares: int | None = None) -> None:
        self.spare_count = settings().spares if spares is None else spares
        # verify takes two workers and compile one: a compile-verify-profile round needs five
        self.gpu_spare_count = settings().gpu_spares if spares is None else spares
        self._devices: dict[str, _Device] = {}
        self._tg: TaskGroup | None = None
        self._live: set[Worker] = set()

    async def __aenter__(self) -> WorkerPool:
        from kfoundry.runner.handover import exchange_root

        await anyio.to_thread.run_sync(lambda: sweep_leftovers(sandbox_root(), exchange_root(), *cgroup_parents()))
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        return self

    async def __aexit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        assert self._tg is not None
        self._tg.cancel_scope.cancel()
        await self._tg.__aexit__(et, ev, tb)
        with anyio.CancelScope(shield=True):
            for worker in list(self._live):
                await worker.dispose()
            self._live.clear()

    def device(self, name: str) -> _Device:
        dev = self._devices.get(name)
        if dev is None:
            jobs = settings().cpu_jobs if name == "cpu" else settings().gpu_jobs
            dev = self._devices[name] = _Device(name, jobs)
        return dev

    def warm(self, device: str = "cpu") -> None:
        """Start spares for ``device`` in the background (a no-op when enough are warm or starting)."""
        dev = self.device(device)
        assert self._tg is not None
        wanted = self.spare_count if device == "cpu" else self.gpu_spare_count
        while len(dev.spares) + dev.starting < wanted:
            dev.starting += 1
            self._tg.start_soon(self._spawn_spare, dev)

    async def _spawn_spare(self, dev: _Device) -> None:
        assert self._tg is not None
        try:
            async with dev.queue.background():
                worker = Worker(dev.name, self._tg)
                self._live.add(worker)
                dev.booting.add(worker)
                try:
                    await worker.start()
                except Exception:  # noqa: BLE001 - a spare that fails to start is dropped; acquire() starts its own
                    if worker in dev.booting:
                        logger.exception("spare worker failed to start")
                    self._live.discard(worker)
                    await worker.dispose()
                    return
                finally:
                    stopped = worker not in dev.booting
                    dev.booting.discard(worker)
                if stopped:
                    await self.release(worker)
                    return
        finally:
            dev.starting -= 1
        dev.spares.append(worker)

    def pick(self, kind: str) -> str:
        """The device for a new job: ``cpu``, or the least busy GPU for ``cuda``."""
        if not kind.startswith("cuda"):
            return "cpu"
        names = [f"cuda:{i}" for i in range(max(1, gpu_count()))]
        return min(names, key=lambda n: (self.device(n).queue.depth() + self.device(n).queue.shared + int(self.device(n).queue.exclusive), n))

    async def acquire(self, device: str = "cpu", wrapper: list[str] | None = None) -> Worker:
        """A ready worker: a warm spare when one is there, else a freshly started one.

        ``wrapper`` (e.g. an ncu command line) always gets a fresh worker started under it.
        """
        dev = self.device(device)
        worker = dev.spares.pop(0) if dev.spares and not wrapper else None
        self.warm(device)
        if worker is not None and worker.process is not None and worker.process.returncode is None:
            return worker
        if worker is not None:
            await self.release(worker)
        assert self._tg is not None
        worker = Worker(device, self._tg, wrapper)
        self._live.add(worker)
        try:
            await worker.start()
        except BaseException:
            await self.release(worker)
            raise
        return worker

    async def release(self, worker: Worker, keep: Path | None = None) -> None:
        self._live.discard(worker)
        with anyio.CancelScope(shield=True):
            await worker.dispose(keep)

    @asynccontextmanager
    async def slot(self, device: str, exclusive: bool, owner: str = "local", on_position: PositionFn | None = None) -> AsyncIterator[None]:
        """Admission to a device: shared for correctness work, exclusive while anything is timed."""
        async with self.device(device).queue.hold(exclusive, owner, on_position):
            yield
        if exclusive and self._tg is not None:
            self.warm(device)  # spares a timing job stopped start again

    async def quiesce(self, device: str) -> None:
        """Before timing: spares still starting are stopped (a worker start takes seconds of CPU and a CUDA
        context); they start again once the timing job has left the device."""
        dev = self.device(device)
        booting, dev.booting = list(dev.booting), set()
        for worker in booting:
            await worker.kill()
        await dev.queue.quiesce()

    def status(self) -> dict[str, dict[str, int | bool]]:
        """Per device: jobs running, queued, exclusive (timing) now, warm spares."""
        return {
            name: {
                "running": dev.queue.shared + int(dev.queue.exclusive),
                "queued": dev.queue.depth(),
                "timing": dev.queue.exclusive,
                "spares": len(dev.spares),
            }
            for name, dev in self._devices.items()
        }
