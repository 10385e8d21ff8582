#!/usr/bin/env bash
# Set up (once) and run kernel-foundry from a checkout:
#   ./run.sh demo    start the MCP server over stdio and drive all five tools on a bundled problem
#   ./run.sh test    run the test suite
#   ./run.sh lint    ruff over the tree (CI runs it before the tests)
# Set-up installs bubblewrap when it is missing (root with apt-get; otherwise it says how), makes .venv (seeing system packages, so a preinstalled CUDA torch is reused), installs
# torch==2.13.0 first when no torch is importable (a bare "torch" requirement would pull several GB
# of CUDA wheels onto a CPU-only machine), then installs this package in editable mode.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
VENV=${KFOUNDRY_VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
  # KFOUNDRY_ISOLATED=1 ignores system packages (what a machine without torch sees)
  if [ "${KFOUNDRY_ISOLATED:-0}" = "1" ]; then
    "$PYTHON" -m venv "$VENV"
  else
    "$PYTHON" -m venv --system-site-packages "$VENV"
  fi
fi
PY="$VENV/bin/python"
# Candidate code runs only inside bubblewrap sandboxes; without bwrap the server refuses it
# (unless KFOUNDRY_UNSAFE_NO_SANDBOX=1, for single-user machines).
if ! command -v bwrap >/dev/null 2>&1 && [ "${KFOUNDRY_UNSAFE_NO_SANDBOX:-0}" != "1" ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    apt-get install -y -qq bubblewrap >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq bubblewrap >/dev/null; }
  fi
  command -v bwrap >/dev/null 2>&1 || {
    echo "run.sh: bubblewrap (bwrap) is required to run candidate code: install the 'bubblewrap' package" >&2
    echo "        (or set KFOUNDRY_UNSAFE_NO_SANDBOX=1 on a single-user machine; candidates then run unconfined)" >&2
    exit 1
  }
fi
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  "$PY" -m pip install --quiet "torch==2.13.0"
fi
stamp="$VENV/.kfoundry-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  "$PY" -m pip install --quiet -e ".[test,helion]"
  touch "$stamp"
fi

command=${1:-demo}
shift || true
case "$command" in
  demo) exec "$VENV/bin/kfoundry" demo "$@" ;;
  test) exec "$PY" -m pytest -q "$@" ;;
  lint) exec "$PY" -m ruff check "$@" . ;;
  *) echo "usage: ./run.sh demo|test|lint" >&2; exit 2 ;;
esac
