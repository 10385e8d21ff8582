#!/usr/bin/env bash
# Set up (once) and run kernel-foundry from a checkout:
#   ./run.sh demo    start the MCP server over stdio and drive all five tools on a bundled problem
#   ./run.sh test    run the test suite
#   ./run.sh lint    ruff over the tree (CI runs it before the tests)
# Set-up makes .venv (seeing system packages, so a preinstalled CUDA torch is reused), installs
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
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  "$PY" -m pip install --quiet "torch==2.13.0"
fi
stamp="$VENV/.kfoundry-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  "$PY" -m pip install --quiet -e ".[test]"
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
