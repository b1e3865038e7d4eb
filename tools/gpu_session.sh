#!/usr/bin/env bash
# What ran on the lent GPU to train the shipped unet2d checkpoint (ddpm_lib/weights/) and run the
# GPU checks (tools/gpu_checks.py). (The shipped basic-fixed was later retrained on a 2-core CPU with unet2d's budget,
# 6000 x 256: its command is in MANIFEST.json; tools/ship_model.py exported it.) Usage: tools/gpu_session.sh OUT [smoke]. The device image has torch but not
# diffusers/mlxtend: their wheels travel in .gpuwheels/.
set -u
OUT=$1; SMOKE=${2:-}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
PY=${PY:-python3}
[ -d .gpuwheels ] && $PY -m pip install -q --no-deps --no-index .gpuwheels/*.whl 2>&1 | tail -2
$PY -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'cuda', torch.cuda.is_available())"
RUNS=/tmp/ddpm_runs; rm -rf $RUNS
if [ -n "$SMOKE" ]; then U=(--steps 4 --checkpoint-every 2); B=(--steps 4 --checkpoint-every 2); C=; else
  U=(--steps 6000 --checkpoint-every 1000); B=(--steps 6000 --checkpoint-every 1000); C=--compile; fi
# a cap on wall time: if it is hit, the newest atomic checkpoint is what gets exported
CAP=${CAP:-400}
start=$(date +%s)
timeout $CAP $PY -m ddpm_lib train --model unet2d "${U[@]}" --batch-size 256 --lr 1e-3 --seed 0 --out $RUNS/unet2d \
    --precision bf16 --channels-last $C --no-progress \
  || [ -f $RUNS/unet2d/latest ] || $PY -m ddpm_lib train --model unet2d "${U[@]}" --batch-size 256 --lr 1e-3 --seed 0 --out $RUNS/unet2d-nocompile \
    --precision bf16 --channels-last --no-progress
echo "unet2d done after $(( $(date +%s) - start )) s"
$PY -m ddpm_lib train --model basic-fixed "${B[@]}" --batch-size 256 --lr 1e-3 --seed 0 --out $RUNS/basic-fixed \
    --precision bf16 --channels-last --no-progress
echo "basic-fixed done after $(( $(date +%s) - start )) s"
U2D=$RUNS/unet2d; [ -f $RUNS/unet2d/latest ] || U2D=$RUNS/unet2d-nocompile
$PY tools/gpu_checks.py $OUT unet2d=$U2D basic-fixed=$RUNS/basic-fixed $SMOKE
echo "all done after $(( $(date +%s) - start )) s"
