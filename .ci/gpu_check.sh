#!/usr/bin/env bash
# The book's GPU path in one script, one JSON report (issue 22). Exits non-zero when a part fails.
#   1. tests/test_devices.py: CPU-vs-device forward/backward, two training steps, register, on every device torch
#      sees (cpu always, cuda when present).
#   2. chapters 10-12 at the short GPU scale of configs/book_gpu.yaml (section "short": training on the GPU for a
#      few minutes), with papermill (.ci/run_notebook.py), into OUT/; skipped without a CUDA device.
#   3. training-step and forward timings of SearchMorph and VoxelMorph, CUDA synchronised (.ci/gpu_timings.py):
#      192 x 160, batch 8 on a GPU, the training step also with mixed precision (TrainConfig.amp bf16 and fp16);
#      a small size in float32 on a CPU (CI runs this script on its CPU: parts 1 and 3).
# Usage: bash .ci/gpu_check.sh [OUT]   (default _build/gpu_check; the report is OUT/report.json)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-_build/gpu_check}
mkdir -p "$OUT"
status=0
cuda=$(python -c "import torch; print(int(torch.cuda.is_available()))") || exit 1
echo "== gpu_check: CUDA available: $cuda"

# 1. device tests
t=$(date +%s)
python -m pytest -q -p no:cacheprovider tests/test_devices.py --junitxml="$OUT/test_devices.xml" > "$OUT/test_devices.log" 2>&1
tests_rc=$?
tail -n 3 "$OUT/test_devices.log"
tests_s=$(( $(date +%s) - t ))
[ "$tests_rc" -eq 0 ] || status=1

# 2. chapters 10-12 at the short GPU scale
printf 'chapter\tseconds\tstatus\n' > "$OUT/chapters.tsv"
for name in 10_training 11_brain_evaluation 12_echocardiography; do
  if [ "$cuda" != 1 ]; then
    printf '%s\t0\tskipped: no CUDA device\n' "$name" >> "$OUT/chapters.tsv"
    continue
  fi
  t=$(date +%s)
  if python .ci/run_notebook.py "notebooks/$name.ipynb" "$OUT/$name.ipynb" -k python3 --cwd notebooks \
      -f configs/book_gpu.yaml --section short > "$OUT/$name.log" 2>&1; then
    st=ok
  else
    st=FAILED; status=1
    grep -v "running over TCP" "$OUT/$name.log" | tail -n 20 | sed 's/^/    | /'
  fi
  printf '%s\t%s\t%s\n' "$name" "$(( $(date +%s) - t ))" "$st" >> "$OUT/chapters.tsv"
  echo "chapter $name: $st"
done

# 3. timings
if [ "$cuda" = 1 ]; then sizes=(--device cuda --size 192 160 --batch 8 --steps 5 --amp bf16 fp16)
else sizes=(--device cpu --size 64 48 --batch 2 --steps 2); fi
python .ci/gpu_timings.py "${sizes[@]}" --out "$OUT/timings.json" > "$OUT/timings.log" 2>&1 || { status=1; tail -n 20 "$OUT/timings.log"; }

# the report
python - "$OUT" "$cuda" "$tests_rc" "$tests_s" "$status" <<'PY'
import csv, json, platform, sys
from pathlib import Path

import torch

out, cuda, tests_rc, tests_s, status = Path(sys.argv[1]), sys.argv[2] == "1", *map(int, sys.argv[3:])
timings = out / "timings.json"
report = {
    "cuda": cuda,
    "device": torch.cuda.get_device_name(0) if cuda else f"cpu: {platform.processor() or platform.machine()}",
    "torch": torch.__version__,
    "device_tests": {"exit": tests_rc, "seconds": tests_s, "log": str(out / "test_devices.log")},
    "chapters": list(csv.DictReader((out / "chapters.tsv").open(), delimiter="\t")),
    "timings": json.loads(timings.read_text()) if timings.exists() else None,
    "ok": status == 0,
}
(out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
print(f"gpu_check report: {out / 'report.json'} (ok: {report['ok']})")
PY
exit "$status"
