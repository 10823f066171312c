#!/bin/bash
# The candidates for `plus`'s understanding, measured on a trained VQA-world testbed with more questions than the
# full sweep (benchmarks/testbed_understanding_sweep.sh): `plus` alone (the understanding FFN + lossless
# speculative decoding), `plus` with the FFN pruned less, and `plus` with each of the scorers that kept most answers
# in the full sweep (random, attention, dart) at rho 0.5 / 0.75 / 0.875 after layer K = 2 and K = 4. 720 test
# questions (240 per family), importance calibrated once, 1 torch thread. Then the ranking:
#   python benchmarks/understanding_choice.py OUT.json
# Usage: bash benchmarks/understanding_choice_sweep.sh [OUT.json] [MODEL] [QUESTIONS]
set -euo pipefail
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
OUT=${1:-docs/results/testbed-v2-understanding-choice.json}
MODEL=${2:-checkpoints/testbed-v2-stage5-pos}
N=${3:-720}
A=(--accel none,paper,plus --accel "plus:understanding.prune_ratio=0.1")
for k in 2 4; do for r in 0.5 0.75 0.875; do for s in random attention dart; do
A+=(--accel "plus:understanding.token_prune_ratio=$r,understanding.token_scorer=$s,understanding.token_prune_layer=$k")
done; done; done
flashu eval testbed --model "$MODEL" --n-gen 0 --n-mmu "$N" "${A[@]}" --no-progress --json "$OUT"
