#!/usr/bin/env bash
# The one script a session with a GPU runs (docs/speed.md, "Measuring on the GPU"). From the repository root:
#   make bench-wheels        # here, once: the Python packages the device image lacks, as wheels in .whl/
#   device tool: run(command="bash experiments/gpu_check.sh", carry=[".whl"], timeout_s=570)
# It installs the carried wheels, checks the fast path against the standard path on the GPU (CUDA tests), runs the
# benchmark (main rows first, then variants while its time budget lasts), and writes everything to $OUT:
# bench-<gpu>-<date>.json (+ .details.json), pytest_cuda.log, bench.log, env.txt. Ends within 8 minutes (tests at most
# 100 s, the benchmark stops starting measurements after 270 s and is killed at 360 s). A short rerun:
#   bash experiments/gpu_check.sh --no-variants
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/runs/gpu_check}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 WANDB_MODE=disabled
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PY:-python3}

if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "gpu_check: installing the carried wheels failed" >&2; exit 1; }
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
"$PY" -c "import jsonargparse" 2>/dev/null \
  || { echo "gpu_check: jsonargparse is missing: run 'make bench-wheels' here and carry .whl" >&2; exit 1; }

{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>&1
  "$PY" -c "import torch, pytorch_lightning as pl; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'lightning', pl.__version__, 'gpu', torch.cuda.get_device_name(0))"
  nproc; } 2>&1 | tee "$OUT/env.txt"

echo "== CUDA tests: the captured step against the standard path"
timeout 100 "$PY" -m pytest tests/test_fast_path.py -q -p no:cacheprovider -k "cuda or captured" 2>&1 \
  | tee "$OUT/pytest_cuda.log" | tail -15

# Arguments of this script go to the benchmark (e.g. --no-variants for a short rerun).
echo "== benchmark"
timeout 360 "$PY" experiments/benchmark.py --copy-to "$OUT" --budget-s 270 "$@" 2>&1 | tee "$OUT/bench.log" \
  | grep -v "Warning\|warn(" | tail -60
status=${PIPESTATUS[0]}
ls -la "$OUT"
exit "$status"
