"""How many bytes one job may move, derived from what the reference itself moves.

A candidate is hostile until judged, so the parent bounds what it can make the host hold:
the tensors it hands back from one call, and the job's exchange folder (``/dev/shm`` on most
hosts, so RAM). The caps scale with the problem, so large problems work and a small one
cannot be used to fill the box.

Use, in the parent::

    budget = job_budget(input_bytes=..., output_bytes=..., parameter_bytes=..., slots=MAX_SLOTS)
    # each Returned message from the candidate:
    reason = check_reply(returned.outputs, budget)          # None, or why it is refused
    # now and then (e.g. after each call):
    reason = check_exchange(directory_usage(exchange_dir, budget.exchange_entries), budget)

``value_bytes`` / ``tensor_bytes`` size the reference's own inputs, parameters and outputs (a
``TensorRef`` or anything with ``dtype`` and ``shape``). Everything here is a pure function of
its arguments except ``directory_usage``, which reads the folder.
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol, TypeGuard

from pydantic import BaseModel, ConfigDict, Field

MIB = 1 << 20
#: a reply may always be this large, whatever the reference returns
REPLY_FLOOR = MIB
#: room in the exchange folder beyond the tensors themselves (see ``job_budget``)
EXCHANGE_FACTOR = 2
EXCHANGE_SLACK = 64 * MIB
#: files and folders ``directory_usage`` walks before it stops counting
MAX_ENTRIES = 10_000

#: bytes per element of torch's dtypes, by the name a ``TensorRef`` carries (``str(dtype)`` without "torch.")
ITEMSIZE = {
    "bool": 1, "uint8": 1, "int8": 1, "quint8": 1, "qint8": 1, "quint4x2": 1, "quint2x4": 1,
    "float8_e4m3fn": 1, "float8_e4m3fnuz": 1, "float8_e5m2": 1, "float8_e5m2fnuz": 1, "float8_e8m0fnu": 1, "float4_e2m1fn_x2": 1,
    "bits8": 1, "bits1x8": 1, "bits2x4": 1, "bits4x2": 1,
    **{f"{sign}int{n}": 1 for sign in ("", "u") for n in range(1, 8)},
    "float16": 2, "bfloat16": 2, "int16": 2, "uint16": 2, "bits16": 2,
    "float32": 4, "int32": 4, "uint32": 4, "qint32": 4, "complex32": 4,
    "float64": 8, "int64": 8, "uint64": 8, "complex64": 8,
    "complex128": 16,
}
#: an unknown dtype counts as the widest there is, so a made-up name never shrinks a reply
WIDEST = max(ITEMSIZE.values())


class Shaped(Protocol):
    """A tensor's description: ``runner.wire.TensorRef`` is one."""

    @property
    def dtype(self) -> str: ...

    @property
    def shape(self) -> Sequence[int]: ...


class JobBudget(BaseModel):
    """Byte caps for one job."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    reply_bytes: int = Field(description="Tensor bytes the candidate may hand back from one call.")
    exchange_bytes: int = Field(description="Disk (or shm) bytes the job's exchange folder may use.")
    exchange_entries: int = Field(default=MAX_ENTRIES, description="Files and folders the exchange folder may hold.")


class DirectoryUsage(BaseModel):
    """What a folder holds, as ``directory_usage`` found it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bytes: int = Field(description="Allocated bytes (st_blocks * 512) of the entries counted.")
    entries: int = Field(description="Files, folders and links below the folder that were counted.")
    truncated: bool = Field(default=False, description="The walk stopped at its entry limit: there are more.")
    unreadable: int = Field(default=0, description="Folders that could not be listed (their contents are not counted).")


def tensor_bytes(dtype: str, shape: Sequence[int]) -> int:
    """Bytes of a dense tensor; an unknown dtype counts as the widest. Negative sizes count as 0."""
    return math.prod(max(0, n) for n in shape) * ITEMSIZE.get(dtype, WIDEST)


def value_bytes(values: Iterable[object]) -> int:
    """Tensor bytes among ``values`` (wire values: ``TensorRef``s count, plain values are free)."""
    return sum(tensor_bytes(v.dtype, v.shape) for v in values if _is_shaped(v))


def _is_shaped(value: object) -> TypeGuard[Shaped]:
    return isinstance(getattr(value, "dtype", None), str) and isinstance(getattr(value, "shape", None), (list, tuple))


def job_budget(*, input_bytes: int, output_bytes: int, parameter_bytes: int = 0, slots: int = 1) -> JobBudget:
    """The caps for a job whose reference takes ``input_bytes`` (one call's inputs) and returns ``output_bytes``.

    ``parameter_bytes`` is the model's weights, shared once; ``slots`` is how many calls' inputs
    the reference keeps in the exchange folder at once.
    """
    # A correct reply is exactly output_bytes. Twice that still lets a candidate that returns a
    # wider dtype (float32 for bfloat16) reach the verdict, which names the real mistake; the
    # floor keeps scalar or tiny outputs, and outputs whose size varies a little by seed, clear.
    reply = max(2 * output_bytes, REPLY_FLOOR)
    # Each slot may hold its inputs and a reply at the cap. The factor covers what is not
    # counted one by one (a slot's old files beside the next call's, copies the reference
    # keeps) and the slack covers block rounding and small files: an honest job never comes
    # near it, and being generous by a factor of two is harmless against filling the host.
    tensors = parameter_bytes + slots * (input_bytes + reply)
    return JobBudget(reply_bytes=reply, exchange_bytes=EXCHANGE_FACTOR * tensors + EXCHANGE_SLACK)


def check_reply(outputs: Iterable[object], budget: JobBudget) -> str | None:
    """None if the tensors among ``outputs`` fit ``budget.reply_bytes``, else why they do not."""
    shaped = [v for v in outputs if _is_shaped(v)]
    for index, tensor in enumerate(shaped):
        if any(n < 0 for n in tensor.shape):
            return f"output {index} has a negative size in its shape {list(tensor.shape)}"
    total = value_bytes(shaped)
    if total > budget.reply_bytes:
        return f"the outputs hold {total} bytes, over this job's cap of {budget.reply_bytes} bytes for one call (twice the reference's outputs, at least {REPLY_FLOOR})"
    return None


def check_exchange(usage: DirectoryUsage, budget: JobBudget) -> str | None:
    """None if the exchange folder is within ``budget``, else why it is not."""
    if usage.truncated or usage.entries > budget.exchange_entries:
        return f"the exchange folder holds over {budget.exchange_entries} files and folders"
    if usage.unreadable:
        # What it holds cannot be measured, so it cannot be allowed.
        return f"the exchange folder holds {usage.unreadable} folder(s) the parent cannot read"
    if usage.bytes > budget.exchange_bytes:
        return f"the exchange folder uses {usage.bytes} bytes, over this job's cap of {budget.exchange_bytes}"
    return None


def directory_usage(path: Path, max_entries: int = MAX_ENTRIES) -> DirectoryUsage:
    """Allocated bytes below ``path``, counting at most ``max_entries`` entries.

    Symlinks are counted as themselves, never followed, so a link to ``/`` costs one entry.
    Entries vanishing during the walk are skipped: the workers may be writing meanwhile.
    """
    used = entries = unreadable = 0
    pending = [path]
    while pending:
        try:
            found = os.scandir(pending.pop())
        except FileNotFoundError:
            continue
        except OSError:
            unreadable += 1
            continue
        # Read lazily: a folder of millions of names must cost no more than max_entries of them.
        with found:
            for entry in found:
                if entries >= max_entries:
                    return DirectoryUsage(bytes=used, entries=entries, truncated=True, unreadable=unreadable)
                try:
                    info = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISDIR(info.st_mode):
                    pending.append(Path(entry.path))
                used += info.st_blocks * 512
                entries += 1
    return DirectoryUsage(bytes=used, entries=entries, unreadable=unreadable)
