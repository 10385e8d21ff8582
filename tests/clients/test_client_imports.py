"""The client reaches the server only over MCP: importing it loads no torch, no toolchain and no server-side package."""

from __future__ import annotations

import subprocess
import sys
import textwrap

BLOCKED = (
    "torch", "triton", "kfoundry.server", "kfoundry.tools", "kfoundry.backends", "kfoundry.verify", "kfoundry.runner",
    "kfoundry.profilers",
)

# Runs in a fresh interpreter: this one has long since imported the server for the other tests.
# A blocked import raises, and is also recorded, so an import some module swallows with
# `except ImportError` still fails the test.
PROBE = textwrap.dedent('''
    import importlib, pkgutil, sys

    BLOCKED = {blocked!r}
    attempts = []

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if any(name == b or name.startswith(b + ".") for b in BLOCKED):
                attempts.append(name)
                raise ImportError(f"the client imported {{name}}")
            return None

    sys.meta_path.insert(0, Blocker())
    import kfoundry.clients
    names = sorted(m.name for m in pkgutil.walk_packages(kfoundry.clients.__path__, "kfoundry.clients."))
    for name in names:
        importlib.import_module(name)
    assert not attempts, f"blocked imports attempted: {{attempts}}"
    loaded = [m for m in sys.modules if any(m == b or m.startswith(b + ".") for b in BLOCKED)]
    assert not loaded, f"loaded anyway: {{loaded}}"
    print("\\n".join(names))
''').format(blocked=BLOCKED)


def test_importing_every_client_module_loads_nothing_from_the_server_side_or_torch() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stderr
    imported = set(done.stdout.split())
    assert {"kfoundry.clients.runner", "kfoundry.clients.cli", "kfoundry.clients.prompting", "kfoundry.clients.providers.scripted",
            "kfoundry.clients.providers.anthropic", "kfoundry.clients.providers.openai_compatible"} <= imported, imported
