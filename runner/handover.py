"""The trusted side's part of the tensor exchange: handing a worker's shared file to the other worker.

Kept apart from ``exchange`` (which maps tensors and needs torch) so the server process can
relay references without importing torch.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from kfoundry.runner.wire import TensorRef, Value

FILE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,80}\.bin$")
#: a name the consumer opens: its own file, or one the trusted side linked in from the other worker
OPEN_NAME = re.compile(r"^(own|peer)/[a-z0-9][a-z0-9_-]{0,80}\.bin$")
PEER = "peer"
#: where a worker writes what it shares; the exchange folder itself and ``peer/`` belong to the trusted side
OWN = "own"


class ExchangeError(ValueError):
    """A reference that does not describe a tensor this process can map."""


def hand_over(value: Value, source: Path, target: Path) -> Value:
    """``value`` as the worker owning ``target`` opens it: a shared file is hard-linked into its ``peer/`` folder.

    Runs on the trusted side. The file is opened without following links and must be a regular
    file, so a producer cannot hand over a link to something only the consumer could reach.

    Raises:
        ExchangeError: the producer named a file that is missing, not a plain file, or badly named.
    """
    if not isinstance(value, TensorRef) or value.storage != "file":
        return value
    own, _, name = (value.file or "").partition("/")
    if own != OWN or not FILE_NAME.match(name):
        raise ExchangeError(f"bad exchange file name {value.file!r}")
    try:
        fd = os.open(source / OWN / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise ExchangeError(f"exchange file {value.file} cannot be opened: {exc.strerror}") from exc
    try:
        opened = os.fstat(fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(opened.st_mode):
        raise ExchangeError(f"exchange file {value.file} is not a regular file")
    linked = target / PEER / name
    try:
        linked.unlink(missing_ok=True)
        os.link(source / OWN / name, linked, follow_symlinks=False)
        made = os.lstat(linked)
    except OSError as exc:
        raise ExchangeError(f"exchange file {value.file} cannot be handed over: {exc.strerror}") from exc
    # The producer may have swapped the name between the check and the link: what was linked must be what was checked.
    if (made.st_dev, made.st_ino) != (opened.st_dev, opened.st_ino):
        linked.unlink(missing_ok=True)
        raise ExchangeError(f"exchange file {value.file} changed while it was handed over")
    return value.model_copy(update={"file": f"{PEER}/{name}"})


def exchange_root() -> Path:
    """Where a job's exchange folders live: RAM-backed ``/dev/shm`` where it exists."""
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(os.environ.get("TMPDIR", "/tmp"))
    root = base / f"kfoundry-x-{os.geteuid()}"
    root.mkdir(mode=0o700, exist_ok=True)
    return root
