#!/bin/bash
# What each understanding technique and every token scorer costs on the trained testbed (docs/testbed.md): the same
# test questions for every configuration (240 = 80 per question family on testbed v2), importance calibrated once,
# 1 torch thread. Every scorer at rho 0.5 / 0.75 / 0.875, pruning after layer K = 2 and K = 4.
# Usage: bash benchmarks/testbed_understanding_sweep.sh [OUT.json] [MODEL]
set -euo pipefail
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
OUT=${1:-docs/results/testbed-understanding-sweep.json}
MODEL=${2:-testbed}
OFF="understanding.prune_ratio=0,understanding.layer_skip_ratio=0"
A=(--accel none,paper,plus)
A+=(--accel "paper:understanding.layer_skip_ratio=0,understanding.token_prune_ratio=0")
A+=(--accel "paper:understanding.prune_ratio=0,understanding.token_prune_ratio=0")
A+=(--accel "paper:$OFF,understanding.token_prune_ratio=0,understanding.speculative_decoding=true")
for k in 2 4; do for r in 0.5 0.75 0.875; do for s in vnorm knorm random attention query dart; do
A+=(--accel "paper:$OFF,understanding.token_prune_ratio=$r,understanding.token_scorer=$s,understanding.token_prune_layer=$k")
done; done; done
flashu eval testbed --model "$MODEL" --n-gen 0 --n-mmu 240 "${A[@]}" --no-progress --json "$OUT"
