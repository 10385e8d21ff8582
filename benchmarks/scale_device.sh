#!/usr/bin/env bash
# Runs benchmarks/scale.py on the device machine, from the repository root.
#   benchmarks/scale_device.sh ROOT LABEL [scale.py arguments ...]
# ROOT: the kfoundry checkout to measure (.bench-before for the old engine, . for the working tree).
# Needs carried: .whl (wheels from /work/shared/tools/gpu-prep: mcp, pydantic, anthropic and their needs)
# and .bench-kb (KernelBench tree), plus ROOT if it is git-ignored. Writes $OUT/scale-LABEL.{json,log}.
set -euo pipefail
root=$(cd "${1:?usage: scale_device.sh ROOT LABEL [args]}" && pwd); label=${2:?label}; shift 2
out=${OUT:-/tmp/scale-out}; mkdir -p "$out"
if [ ! -f /tmp/site/.done ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  touch /tmp/site/.done
fi
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
# package-dir mapping (kfoundry.server -> server/ ...): a plain PYTHONPATH is not enough, install ROOT editable.
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e "$root"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 benchmarks/scale.py --kfoundry-root "$root" --label "$label" --out "$out/scale-$label.json" "$@" 2>&1 | tee "$out/scale-$label.log"
