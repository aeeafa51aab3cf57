#!/usr/bin/env bash
# Issue 21's last steps, once both 3D runs (training/brain3d_searchmorph, training/brain3d_voxelmorph) have spent
# their 12,000 CPU seconds: choose brain3d's refinement, ship both models, run the volumes benchmark against ANTs,
# re-execute chapters 14 and 10, regenerate the book's numbers and check the two chapters with nbval at 1 and 2
# threads. Run it from the repository root with the README's .venv active, on an idle machine (no training
# beside it: the benchmark times against ANTs). Stops at the first failing step; each step's output is in
# _build/finish_brain3d/<step>.log. Takes about 40 minutes on the project's 2-core CPU.
#
#   bash training/finish_brain3d.sh            # every step
#   bash training/finish_brain3d.sh ship       # from the step named "ship" on (ship, search, volumes, beyond,
#                                              # chapters, numbers, nbval)
set -euo pipefail
cd "$(dirname "$0")/.."
LOG=_build/finish_brain3d
mkdir -p "$LOG"
# ship_pretrained.py puts the CPU, its cores and torch's version before this
HARDWARE="an AMD EPYC; one thread \
per training (OMP_NUM_THREADS=1); SearchMorph-3D and VoxelMorph-3D trained side by side on the 2 cores over three \
sessions, paused (SIGSTOP, which stops their CPU-second budgets too) while anything was timed"
STEPS=(budget choose ship search volumes beyond chapters numbers nbval)
from=${1:-budget}
[[ " ${STEPS[*]} " == *" $from "* ]] || { echo "unknown step '$from' (one of: ${STEPS[*]})" >&2; exit 2; }
if pgrep -f "searchmorph_lite train" > /dev/null; then
  echo "a training is running (pgrep -f 'searchmorph_lite train'): stop it first, the benchmark times against ANTs" >&2
  exit 1
fi

run() {  # run STEP COMMAND...: skip steps before $from; log each
  local step=$1; shift
  if [ -n "${started:-}" ] || [ "$step" = "$from" ]; then started=1; else return 0; fi
  echo "== $step: $*"
  local t0; t0=$(date +%s)
  if ! "$@" > "$LOG/$step.log" 2>&1; then
    tail -n 30 "$LOG/$step.log" >&2
    echo "finish_brain3d: step '$step' failed (log: $LOG/$step.log)" >&2
    exit 1
  fi
  tail -n 3 "$LOG/$step.log"
  echo "   $(( $(date +%s) - t0 )) s"
}

budget_spent() {  # both runs at their max_cpu_seconds
  python - <<'EOF'
import sys
import torch
for run in ("brain3d_searchmorph", "brain3d_voxelmorph"):
    ckpt = torch.load(f"training/{run}/checkpoint.pt", map_location="cpu", weights_only=False)
    history, budget = ckpt["history"], ckpt["metadata"]["train_config"]["max_cpu_seconds"]
    spent = sum(history["cpu_seconds"])  # per epoch
    print(f"{run}: epoch {history['epoch'][-1]}, {spent:.0f} of {budget:.0f} CPU s, val Dice {history['val_dice'][-1]:.3f}")
    if spent < budget:
        sys.exit(f"{run} has not spent its budget: resume it (training/BRAIN3D_STATUS.md)")
EOF
}

chapters() {
  OMP_NUM_THREADS=1 python .ci/run_notebook.py notebooks/14_three_d.ipynb notebooks/14_three_d.ipynb --cwd notebooks
  OMP_NUM_THREADS=1 python .ci/run_notebook.py notebooks/10_training.ipynb notebooks/10_training.ipynb --cwd notebooks
}

nbval_both() {
  for threads in 1 2; do
    echo "nbval at $threads thread(s)"
    OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads python -m pytest --nbval-lax --nbval-current-env \
      --sanitize-with notebooks/sanitize.cfg -p no:cacheprovider -q notebooks/14_three_d.ipynb \
      notebooks/10_training.ipynb
  done
}

run budget budget_spent
# the refinement is chosen where register uses it: validation pairs as NIfTI files at 2 mm, scored on the fixed grid
run choose python training/choose_refinement.py --checkpoint training/brain3d_searchmorph/checkpoint.pt --files \
  --pairs 3 --lrs 1 0.5 0.25 --levels 1 2 --steps 50 100 --threads 2 --out training/refinement_brain3d.json
run ship bash -c "python training/ship_pretrained.py --run training/brain3d_searchmorph --name brain3d \
  --hardware '$HARDWARE' --refinement training/refinement_brain3d.json && python training/ship_pretrained.py \
  --run training/brain3d_voxelmorph --name brain3d-voxelmorph --hardware '$HARDWARE'"
run search python training/search_use.py --checkpoint searchmorph_lite/pretrained/brain3d.pt --pairs 8
run volumes python -m benchmarks --suite volumes
run beyond python -m benchmarks --suite beyond --part 3d   # the book's 3D array table, on the new weights
run chapters chapters
run numbers python .ci/book_numbers.py
run nbval nbval_both
echo "finish_brain3d: done. Next: git diff --stat; pytest -q tests/test_beyond.py tests/test_pipeline.py; commit;"
echo "then bash .ci/run from a fresh clone (idle)."
