"""Entry point of a sandboxed worker process: ``python -m kfoundry.runner.entry``.

The process limits itself before anything else runs, warms torch (so a spare is ready the
moment a job arrives), announces itself, serves exactly one job in the role the job names
(reference or candidate) and exits.
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import sys
from pathlib import Path


def _limit(kind: int, value: int) -> None:
    soft, hard = resource.getrlimit(kind)
    cap = value if hard == resource.RLIM_INFINITY else min(value, hard)
    resource.setrlimit(kind, (cap, cap))


def _confine(args: argparse.Namespace) -> None:
    _limit(resource.RLIMIT_CORE, 0)
    _limit(resource.RLIMIT_FSIZE, args.file_mb << 20)
    _limit(resource.RLIMIT_NOFILE, 4096)
    if args.memory_mb > 0:
        _limit(resource.RLIMIT_AS, args.memory_mb << 20)
    if args.nproc > 0:
        _limit(resource.RLIMIT_NPROC, args.nproc)
    os.umask(0o077)


def _warm(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.init()
        torch.zeros(1, device=device)
    from kfoundry.backends import all_backends

    for backend in all_backends():
        backend.warm(device)  # imports (triton, ...) a job would otherwise pay for
    # Both roles and the first use of a dispatch mode import a second or more of torch
    # internals; a spare pays that while it waits, not the job.
    from kfoundry.runner import candidate, reference  # noqa: F401
    from kfoundry.verify.compare import compare_tensor
    from kfoundry.verify.runtime_checks import OpTrace

    probe = torch.ones(4, device=device)
    with torch.no_grad(), OpTrace():
        compare_tensor(probe, probe + 0, None, None)


def main() -> None:
    parser = argparse.ArgumentParser()
    channel_arg = parser.add_mutually_exclusive_group(required=True)
    channel_arg.add_argument("--fd", type=int)
    channel_arg.add_argument("--connect", type=Path, help="socket file to dial (workers started under a wrapper such as ncu)")
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--memory-mb", type=int, default=0)
    parser.add_argument("--file-mb", type=int, default=2048)
    parser.add_argument("--nproc", type=int, default=0)
    parser.add_argument("--drop", action="store_true", help="become the sandbox user (a root-built sandbox)")
    args = parser.parse_args()

    _confine(args)
    if args.drop:
        from kfoundry.jail import drop_privileges

        drop_privileges()
    os.chdir(args.dir)
    if args.connect is not None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(args.connect))
    else:
        sock = socket.socket(fileno=args.fd)
    os.set_inheritable(sock.fileno(), False)

    from kfoundry.runner.wire import CandidateJob, Channel, Done, Failed, Ready, ReferenceJob

    channel = Channel(sock)
    from kfoundry.runner import exchange

    channel.outgoing, channel.incoming = exchange.outgoing, exchange.incoming
    _warm(args.device)
    channel.send(Ready(pid=os.getpid()))
    try:
        job = channel.recv()
    except EOFError:
        os._exit(0)
    from kfoundry.backends.base import attach_trusted_side

    attach_trusted_side(channel)

    from kfoundry.runner import candidate, reference
    from kfoundry.runner.loading import JobFailed, error_detail
    from kfoundry.schema import State

    try:
        if isinstance(job, ReferenceJob):
            reference.serve(job, channel, args.dir)
        elif isinstance(job, CandidateJob):
            candidate.serve(job, channel, args.dir)
        else:
            os._exit(3)
        channel.send(Done())
    except JobFailed as failed:
        channel.send(Failed(state=failed.state, error=failed.error, diagnostics=failed.diagnostics))
    except (EOFError, ConnectionError):
        os._exit(0)  # the parent hung up: nobody to tell
    except Exception as exc:  # noqa: BLE001 - out of memory in a comparison, a tensor that cannot be shared: a typed failure
        channel.send(Failed(state=State.runtime_error, error=error_detail(exc, f"{type(job).__name__.removesuffix('Job').lower()} worker")))
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: user objects' finalizers must not run after the facts are sent.
    os._exit(0)


if __name__ == "__main__":
    main()
