#!/usr/bin/env bash
# The CUDA tests and the benchmark on a GPU machine, in 6 minutes at most (docs/speed.md, "Measuring on the GPU").
# From the repository root:
#   bash experiments/gpu_check.sh --dry-run    # on any machine: the plan, each step's seconds and the total
#   bash experiments/gpu_check.sh              # on the GPU machine (OUT=<folder> for its files)
#   make bench-wheels                          # first, on a machine with a package index, when the GPU machine has
#                                              # none: what its Python lacks, as wheels in .whl/ (copy them along)
# Steps run in order of value, each under its own `timeout` (its projected seconds are that cap, so the total is a
# bound, not a guess): smoke (environment, install, CUDA tests of the captured step), then the benchmark's main
# rows at the paper's batch, the compile variant, batch 512, and the remaining variants. Everything lands in $OUT:
# env.txt, pytest_cuda.log, bench-<step>.log and bench-<gpu>-<date>-<step>.json (+ .details.json).
# The W&B logger is never built here: the tests use logger=False and the benchmark passes --trainer.logger=false.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; shift; fi
OUT="${OUT:-$PWD/runs/gpu_check}"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 WANDB_MODE=disabled
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# The device's python3 holds its torch; a CPU dry-run uses the checkout's venv when there is one.
if [[ -z "${PY:-}" && $DRY -eq 1 && -x .venv/bin/python ]]; then PY=.venv/bin/python; fi
PY=${PY:-python3}
BENCH=(experiments/benchmark.py --copy-to "$OUT")

# name | cap in seconds | command. The caps add up to under 6 minutes (checked below), leaving time for a rerun.
STEPS=(
  "env|5|nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv; \
$PY -c 'import torch, pytorch_lightning as pl; print(\"torch\", torch.__version__, \"lightning\", pl.__version__, \
torch.cuda.get_device_name(0))'; nproc"
  "install|20|install_project"
  "cuda-tests|80|$PY -m pytest -q -p no:cacheprovider tests/test_fast_path.py tests/test_fast_trace.py \
tests/test_nonfinite_check.py -k 'cuda or captured'"
  "bench-64|105|$PY ${BENCH[*]} --tag b64 --batches 64 --no-variants --budget-s 90"
  "compile|70|$PY ${BENCH[*]} --tag compile --batches 64 --no-rows --variants compile --compile-reserve-s 0 \
--budget-s 40"
  "bench-512|45|$PY ${BENCH[*]} --tag b512 --batches 512 --no-variants --budget-s 30"
  "variants|30|$PY ${BENCH[*]} --tag variants --batches 64 --no-rows --variants k1 nograph --budget-s 15"
)

install_project() {
  # Only what the image lacks travels (make bench-wheels); the project itself goes in with --no-deps, so pip never
  # tries to replace the GPU machine's own torch / torchvision / Lightning (a machine without a package index).
  if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      || { echo "gpu_check: installing the carried wheels failed" >&2; return 1; }
  fi
  "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . \
    || echo "gpu_check: editable install failed; running from PYTHONPATH=$PWD"
  "$PY" -c "import jsonargparse, submitit, typeshed_client, docstring_parser" \
    || { echo "gpu_check: a carried package is missing: run 'make bench-wheels' here and carry .whl" >&2; return 1; }
}
export PYTHONPATH="$PYTHONPATH:/tmp/site"

total=0
echo "gpu_check plan (seconds are each step's timeout cap):"
for step in "${STEPS[@]}"; do
  IFS='|' read -r name cap cmd <<<"$step"
  total=$((total + cap))
  printf '  %-11s %4d s  %s\n' "$name" "$cap" "${cmd:0:110}"
done
printf '  %-11s %4d s  (%d min %02d s; limit 360 s)\n' total "$total" $((total / 60)) $((total % 60))
if (( total > 360 )); then echo "gpu_check: the plan exceeds 6 minutes" >&2; exit 2; fi
if (( DRY )); then  # what each benchmark step would measure, parsed by the benchmark itself
  for step in "${STEPS[@]}"; do
    IFS='|' read -r name cap cmd <<<"$step"
    if [[ "$cmd" == *benchmark.py* ]]; then echo -n "  $name: "; bash -c "$cmd --dry-run" || exit 1; fi
  done
  exit 0
fi

mkdir -p "$OUT"
status=0
for step in "${STEPS[@]}"; do
  IFS='|' read -r name cap cmd <<<"$step"
  echo "== $name (at most $cap s)"
  start=$SECONDS
  if [[ "$cmd" == install_project ]]; then
    timeout "$cap" bash -c "$(declare -f install_project); PY=$PY install_project" 2>&1 | tee "$OUT/$name.log" | tail -20
  else
    timeout "$cap" bash -c "$cmd" 2>&1 | tee "$OUT/$name.log" | grep -v "Warning\|warn(" | tail -40
  fi
  rc=${PIPESTATUS[0]}
  echo "   $name: exit $rc after $((SECONDS - start)) s"
  if (( rc != 0 )); then status=$rc; fi
  if [[ "$name" == install && $rc -ne 0 ]]; then exit "$rc"; fi
done
ls -la "$OUT"
exit "$status"
