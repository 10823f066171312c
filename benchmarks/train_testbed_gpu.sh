#!/bin/bash
# Testbed v2 training on a GPU, as one call of a lent device machine: continue from the committed v2 stage
# (checkpoints/testbed-v2-stage5-pos by default, an exported model: the three families mixed, a position table
# that tells columns apart) with a fresh optimizer, write the run and the exported model under $OUT, and print the
# per-family accuracy of the result on 240 test questions.
#   OUT=/tmp/out STEPS=6000 bash benchmarks/train_testbed_gpu.sh
# On the CPU the same command runs with DEVICE=cpu (slowly), in fp32 unless AUTOCAST=bf16 (CPU bf16 pays only with
# AVX512-BF16 or AMX; docs/testbed.md).
set -euo pipefail
OUT=${OUT:?set OUT to a writable directory}
STEPS=${STEPS:-6000}
DEVICE=${DEVICE:-cuda}
INIT=${INIT:-checkpoints/testbed-v2-stage5-pos}
if [ "$DEVICE" = cpu ]; then AUTOCAST=${AUTOCAST:-none}; else AUTOCAST=${AUTOCAST:-bf16}; fi
python -c "import torch, sys; sys.exit(0 if '$DEVICE' == 'cpu' or torch.cuda.is_available() else 'no CUDA device')"
python -m flashu.testbed.train --model testbed-v2 --out "$OUT/run" --init "$INIT" --device "$DEVICE" --autocast "$AUTOCAST" \
    --steps "$STEPS" --lr 1e-3 --warmup 200 --gen-batch 32 --mmu-batch 32 --mmu-questions 9 --ce-weight 1.0 --answer-weighting answer \
    --seed 3 --checkpoint-every 500 --no-progress --export "$OUT/export" --export-dtype float16
flashu eval testbed --model "$OUT/export" --n-gen 100 --n-mmu 240 --accel none --no-progress --json "$OUT/eval.json"
