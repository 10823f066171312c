#!/bin/bash
# What each understanding technique and every token scorer costs on the trained testbed (docs/testbed.md):
# 200 test questions per configuration, importance calibrated once, 1 torch thread.
# Usage: bash benchmarks/testbed_understanding_sweep.sh [OUT.json]
set -euo pipefail
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
OUT=${1:-docs/results/testbed-understanding-sweep.json}
A=(--accel none --accel paper)
A+=(--accel "paper:understanding.layer_skip_ratio=0,understanding.token_prune_ratio=0")
A+=(--accel "paper:understanding.prune_ratio=0,understanding.token_prune_ratio=0")
A+=(--accel "paper:understanding.prune_ratio=0,understanding.layer_skip_ratio=0,understanding.token_prune_ratio=0,understanding.speculative_decoding=true")
for r in 0.25 0.5 0.75; do for s in vnorm knorm random attention query dart; do
A+=(--accel "paper:understanding.prune_ratio=0,understanding.layer_skip_ratio=0,understanding.token_prune_ratio=$r,understanding.token_scorer=$s")
done; done
flashu eval testbed --n-gen 0 --n-mmu 200 "${A[@]}" --no-progress --json "$OUT"
