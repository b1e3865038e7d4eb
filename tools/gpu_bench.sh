#!/usr/bin/env bash
# The GPU rows of the benchmark, as one prepared run for a lent GPU (about 15 minutes of device
# time, start-up included): the CUDA tests first (the CUDA-graph sampler against the eager loop),
# then `bench/bench.py --device cuda --quick` (30 timed training steps after 20 warm-up steps,
# 200 timed sampling steps, 2 alternated repeats), then the full run if the cap allows.
# Usage: tools/gpu_bench.sh OUT   (writes OUT/bench_gpu_quick.json, OUT/bench_gpu.json, OUT/*.log)
# The device image has torch but not diffusers/mlxtend: their wheels travel in .gpuwheels/, made with
#   pip download --no-deps -d .gpuwheels diffusers==0.42.1 mlxtend==0.25.0 importlib_metadata
set -u -o pipefail
OUT=$1
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}  # DEVICE=cpu: a smoke run of this script on a machine without a GPU
[ -d .gpuwheels ] && $PY -m pip install -q --no-deps --no-index .gpuwheels/*.whl 2>&1 | tail -2
$PY -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'cuda', torch.cuda.is_available())"
start=$(date +%s)
$PY -m pytest -q -p no:cacheprovider tests/test_sampling.py -k cuda -rs 2>&1 | tail -3 | tee "$OUT/cuda_tests.log"
timeout "${QUICK_CAP:-300}" $PY bench/bench.py --device "$DEVICE" --quick --json "$OUT/bench_gpu_quick.json" 2>&1 \
  | tail -12 | tee "$OUT/bench_quick.log"
echo "quick run done after $(( $(date +%s) - start )) s"
timeout "${FULL_CAP:-240}" $PY bench/bench.py --device "$DEVICE" --json "$OUT/bench_gpu.json" 2>&1 \
  | tail -12 | tee "$OUT/bench_full.log" || echo "full run stopped by its cap (FULL_CAP)"
echo "all done after $(( $(date +%s) - start )) s"
