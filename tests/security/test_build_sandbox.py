"""Compilers run on a candidate's source inside a fresh sandbox with caps, and die whole at their timeout.

Findings of a security review, each replayed through the real build entry point (``gxx.build``, the
function the server calls for a worker's ``load_cpp``), and once through the MCP ``compile`` tool:
``#include "/dev/zero"`` ran cc1plus to 9.3 GB; a never-ending compile answered long after its
timeout and left cc1plus running; ``#include`` of a root-only file echoed it in the diagnostics.
A ``-D`` flag carrying a fresh marker names each build's compiler processes in ``/proc``.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from mcp import Client
from mcp_support import client, ok  # noqa: F401 - the in-memory MCP client fixture

from kfoundry import jail, toolrun
from kfoundry.backends.gxx import FlagError, build
from kfoundry.config import settings
from kfoundry.toolrun import LOG_LIMIT, ToolStatus, run_tool

needs_bubblewrap = pytest.mark.skipif(bool(jail.reason()), reason=f"needs a working bubblewrap: {jail.reason()}")

#: constant evaluations that each stay under gcc's limits but never run out (100k of them, ~1 s each)
NEVER_ENDS = r"""
#include <utility>
constexpr long spin(long n) {
  long s = 0;
  for (long i = 0; i < 4000; ++i)
    for (long j = 0; j < 4000; ++j) s += (i ^ j) + n;
  return s;
}
template <long N> struct S { static constexpr long v = spin(N); };
template <long... N> constexpr long total(std::integer_sequence<long, N...>) { return (S<N>::v + ...); }
extern "C" long x() { return total(std::make_integer_sequence<long, 100000>{}); }
"""


#: a candidate whose load_cpp source includes ``{path}``
CANDIDATE_INCLUDING = '''
import torch.nn as nn

from kfoundry.backends.cpp import load_cpp

_lib = load_cpp(r"""
#include "{path}"
extern "C" int f() {{ return 0; }}
""")


class ModelNew(nn.Module):
    def forward(self, x):
        return x
'''


def fresh_marker() -> str:
    return f"KF_BUILD_{uuid.uuid4().hex}"


def processes_with(marker: str, command: str = "") -> list[int]:
    """Live processes whose command line holds ``marker`` (and whose name is ``command``, when given)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker.encode() not in (entry / "cmdline").read_bytes():
                continue
            if command and (entry / "comm").read_text().strip() != command:
                continue
        except OSError:
            continue
        found.append(int(entry.name))
    return found


def wait_for(condition: Callable[[], object], within: float) -> object:
    until = time.monotonic() + within
    while not (seen := condition()) and time.monotonic() < until:
        time.sleep(0.02)
    return seen


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """A server home and a sandbox root of this test's own (settings re-read around it)."""
    monkeypatch.setenv("KFOUNDRY_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KFOUNDRY_SANDBOX_ROOT", str(tmp_path / "sandbox"))
    settings.cache_clear()
    yield tmp_path
    settings.cache_clear()


@pytest.fixture
def unsafe(monkeypatch: pytest.MonkeyPatch, isolated: Path) -> Path:
    """A host without bubblewrap whose operator opted into unconfined builds."""
    monkeypatch.setattr(jail, "_probe", lambda: ("", "bubblewrap (bwrap) is not installed", False))
    monkeypatch.setenv("KFOUNDRY_UNSAFE_NO_SANDBOX", "1")
    settings.cache_clear()
    return isolated


# -- memory and time ------------------------------------------------------------------------
def test_including_dev_zero_fails_at_the_memory_cap_within_the_timeout_and_leaves_no_compiler(isolated: Path) -> None:
    marker = fresh_marker()
    start = time.monotonic()

    outcome = build('#include "/dev/zero"\n', [f"-D{marker}"], timeout_s=30)

    assert not outcome.ok
    assert time.monotonic() - start < 30
    assert any(f"{settings().build_memory_mb} MiB address-space cap" in d.message for d in outcome.diagnostics), outcome.diagnostics
    assert processes_with(marker) == []


def test_a_compile_that_never_ends_answers_at_its_timeout_and_no_compiler_process_survives(isolated: Path) -> None:
    marker = fresh_marker()
    start = time.monotonic()
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(build, NEVER_ENDS, [f"-D{marker}"], timeout_s=4)
        running = wait_for(lambda: processes_with(marker, "cc1plus"), within=4)
        outcome = pending.result(timeout=4 + 5)

    assert running, "cc1plus never showed up, so its absence afterwards would prove nothing"
    assert not outcome.ok
    assert time.monotonic() - start < 4 + 5
    assert any("did not finish within 4 s" in d.message for d in outcome.diagnostics), outcome.diagnostics
    assert processes_with(marker) == []


@pytest.mark.slow
def test_a_compile_that_burns_cpu_is_stopped_at_the_cpu_cap(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KFOUNDRY_BUILD_CPU_S", "5")
    settings.cache_clear()
    marker = fresh_marker()

    outcome = build(NEVER_ENDS, [f"-D{marker}"], timeout_s=120)

    assert not outcome.ok
    assert any("used up its 5 s of CPU time" in d.message for d in outcome.diagnostics), outcome.diagnostics
    assert processes_with(marker) == []


def test_a_tool_writing_a_file_past_the_size_cap_is_stopped(isolated: Path) -> None:
    source = f'extern "C" {{ char big[{toolrun.MAX_FILE_MB + 64}L << 20] = {{1}}; }}\n'

    run = run_tool(["g++", "-fPIC", "-shared", "-o", "lib.so", "big.cpp"], files={"big.cpp": source}, outputs=["lib.so"], timeout_s=60)

    assert run.status is ToolStatus.killed_file_size, run.log
    assert run.outputs == {}


def test_what_a_tool_prints_is_kept_up_to_the_log_limit_with_its_last_lines(isolated: Path) -> None:
    script = f"head -c {3 * LOG_LIMIT} /dev/zero; echo; echo the-last-line"

    run = run_tool(["sh", "-c", script], files={}, timeout_s=30)

    assert run.ok
    assert len(run.stdout) < LOG_LIMIT + 100
    assert f"[{2 * LOG_LIMIT + len('the-last-line') + 2} bytes not kept]" in run.stdout
    assert run.stdout.endswith("\nthe-last-line\n")


# -- what the compiler can read -------------------------------------------------------------
@needs_bubblewrap
@pytest.mark.parametrize("path", ["/etc/shadow", "/root/.bashrc"])
def test_including_a_host_file_outside_the_sandbox_is_no_such_file(isolated: Path, path: str) -> None:
    if not os.path.exists(path):
        pytest.skip(f"{path} does not exist on this host")

    outcome = build(f'#include "{path}"\n', [f"-D{fresh_marker()}"])

    assert not outcome.ok
    assert f"{path}: No such file or directory" in outcome.log


@needs_bubblewrap
def test_including_a_file_in_the_servers_home_echoes_none_of_it(isolated: Path) -> None:
    secret = f"kfsecret-{uuid.uuid4().hex}"
    planted = settings().home / "planted.h"
    planted.parent.mkdir(parents=True)
    planted.write_text(f"{secret} {secret};\n")
    planted.chmod(0o644)  # readable by anyone: only the mount namespace keeps it out

    outcome = build(f'#include "{planted}"\n', [f"-D{fresh_marker()}"])

    assert not outcome.ok
    assert f"{planted}: No such file or directory" in outcome.log
    assert secret not in outcome.model_dump_json()


@needs_bubblewrap
def test_an_output_the_tool_left_as_a_link_is_not_followed(isolated: Path) -> None:
    secret = f"kfsecret-{uuid.uuid4().hex}"
    target = isolated / "outside.txt"
    target.write_text(secret)

    run = run_tool(["ln", "-s", str(target), "lib.so"], files={}, outputs=["lib.so"], timeout_s=30)

    assert run.ok
    assert run.outputs == {}


# -- what the compiler can write ------------------------------------------------------------
@pytest.mark.parametrize("flags", [["-o", "/tmp/elsewhere.so"], ["-o/tmp/elsewhere.so"], ["-fdump-tree-all=/tmp/dumps"], ["-I/etc"]])
def test_flags_naming_a_path_are_refused_before_any_compiler_runs(isolated: Path, flags: list[str]) -> None:
    with pytest.raises(FlagError):
        build('extern "C" int f() { return 1; }\n', flags)

    assert not (isolated / "sandbox").exists()


def test_a_build_that_dumps_every_pass_leaves_only_its_library_behind(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(isolated)
    source = f'extern "C" int f() {{ return {uuid.uuid4().int % 1000}; }}\n'

    outcome = build(source, ["-fdump-tree-all", "-fdump-rtl-all", "-fdump-ipa-all"])

    assert outcome.ok, outcome.log
    # the jail's passwd/group for the sandbox user are its own bookkeeping, not the build's
    written = sorted(str(p.relative_to(isolated)) for p in isolated.rglob("*") if p.is_file() and ".identity" not in p.parts)
    # the library and the compiler's own record of the options it used (kept with it), none of the dumps
    assert written == [f"home/cache/cpp/{outcome.key}/lib.so", f"home/cache/cpp/{outcome.key}/math_options.json"]


# -- without bubblewrap ---------------------------------------------------------------------
def test_without_bubblewrap_and_without_the_operators_consent_no_compiler_runs(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jail, "_probe", lambda: ("", "bubblewrap (bwrap) is not installed", False))

    with pytest.raises(jail.SandboxUnavailable):
        build('extern "C" int f() { return 2; }\n', [f"-D{fresh_marker()}"])


def test_an_unsafe_host_still_caps_memory_and_kills_a_never_ending_compile_whole(unsafe: Path) -> None:
    zero = build('#include "/dev/zero"\n', [f"-D{fresh_marker()}"], timeout_s=30)
    marker = fresh_marker()
    start = time.monotonic()

    endless = build(NEVER_ENDS, [f"-D{marker}"], timeout_s=3)

    assert any("address-space cap" in d.message for d in zero.diagnostics), zero.diagnostics
    assert any("did not finish within 3 s" in d.message for d in endless.diagnostics), endless.diagnostics
    assert time.monotonic() - start < 3 + 5
    assert processes_with(marker) == []
    assert os.listdir(unsafe / "sandbox") == []


# -- through the MCP tool (last: its server lives until the module ends) -----------------------
@pytest.mark.anyio
@needs_bubblewrap
async def test_the_compile_tool_reports_a_server_file_as_missing_and_echoes_none_of_it(client: Client) -> None:  # noqa: F811
    secret = f"kfsecret-{uuid.uuid4().hex}"
    planted = settings().home / f"planted-{uuid.uuid4().hex}.h"
    planted.parent.mkdir(parents=True, exist_ok=True)
    planted.write_text(f"{secret} {secret};\n")
    planted.chmod(0o644)
    candidate = CANDIDATE_INCLUDING.format(path=planted)

    data = await ok(client, "compile", {"backend": "cpp", "candidate": candidate, "timeout_s": 120}, within=180)

    assert data["state"] == "compilation_failure", data
    assert any("No such file or directory" in d for d in data["diagnostics"]), data["diagnostics"]
    assert secret not in str(data)
