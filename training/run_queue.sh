#!/usr/bin/env bash
# Train the given configs one after the other on one CPU thread: training/<config name>/checkpoint.pt + train.log.
# Usage: bash training/run_queue.sh configs/echo2d_searchmorph.yaml configs/brain2d_ablation_no_context.yaml ...
set -euo pipefail
cd "$(dirname "$0")/.."
for cfg in "$@"; do
  name=$(basename "$cfg" .yaml)
  mkdir -p "training/$name"
  start=$(date +%s)
  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python -m searchmorph_lite train --config "$cfg" --out "training/$name" \
    --device cpu --resume > "training/$name/train.log" 2>&1
  echo "wall_time_s $(( $(date +%s) - start ))" >> "training/$name/train.log"
done
