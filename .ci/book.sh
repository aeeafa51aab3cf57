#!/usr/bin/env bash
# The book's main job. Exits non-zero if any step fails.
#   0. tools: chromium + chromedriver (Debian, installed if missing), the python3 kernel, and the widget JS,
#      require.js and MathJax from the npm registry (.ci/offline_js.sh) into _build/offline_js. Then two checks
#      of the chapters' sources: every Colab badge and install cell matches _config.yml
#      (.ci/notebook_header.py --check), and code cells are at most 88 columns (ruff E501, notebooks/ruff.toml).
#   1. papermill (.ci/run_notebook.py): the answer-key edition of every notebooks/NN_*.ipynb
#      (.ci/student_edition.py --with-solutions, into _build/answer_key/), in order, top to bottom, at the defaults
#      of its `parameters` cell (the CI scale): the chapter, then each exercise's solution and check, so a solution
#      that fails after Run All fails CI. The exercise cells are then dropped (.ci/strip_answer_key.py) and the
#      chapter's own cells, with this run's outputs, go to _build/executed/ for the build. Seconds per notebook go
#      to the log and _build/notebook_times.tsv.
#   2. nbval (run beside step 1, both on one thread per process, so the 2 cores do both at once):
#      pytest --nbval-lax on the stored (committed) notebooks: re-runs them and compares the cells tagged
#      nbval-check-output with their stored outputs (notebooks/sanitize.cfg masks addresses and timings). It runs
#      with one thread (OMP_NUM_THREADS=1), while the stored outputs are written with PyTorch's default (all
#      cores): a checked cell prints only digits that this change, and other machines, cannot reach. Then
#      .ci/nbval_sensitivity.py proves the check can fail: with mse_loss perturbed by 1e-2 nbval must fail.
#   3. build: the papermill outputs go into the book's jupyter-cache (.ci/cache_executed.py), then
#      `jupyter-book build . --toc book/_toc.yml -W -n --keep-going`. With execute_notebooks: cache the build
#      reuses this run's outputs instead of executing a third time; a notebook missing from the cache is executed
#      by the build, and a failing cell or any warning fails it.
#   3b. Colab route: the package wheel into _build/html/_static/wheels (+ LATEST, its file name), then
#      .ci/colab_check.py runs a chapter's Colab install cell in a fresh venv against the locally served build.
#   4. browser: .ci/browser_check.py serves _build/html on 127.0.0.1 and checks every page in headless Chromium
#      (figures, widgets, equations, no errors, no CDN); screenshots in _build/screenshots/.
# Environment:
#   BOOK_PARAMS="-p device cuda -p seed 1"   parameters for step 1, as papermill -p (default: none). A notebook run
#       with injected parameters is not reused by the build (its code differs), so the book shows the defaults.
#   BOOK_PARAMS_FILE=configs/book_gpu.yaml   each chapter's parameters from that file's "full" section (the GPU
#       scale), before BOOK_PARAMS; the same caveat about the build applies.
#   BOOK_THREADS=1   PyTorch's CPU threads (OMP_NUM_THREADS) in steps 1 and 2 (default 1); a checked cell must
#       pass at any count: `BOOK_THREADS=2 bash .ci/book.sh` is the two-thread check of issue 22.
#   BOOK_CELL_TIMEOUT=600   seconds a cell may run in steps 1 and 2 before it counts as failed (hung).
set -uo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYDEVD_DISABLE_FILE_VALIDATION=1
unset MPLBACKEND  # the kernels must use matplotlib's inline backend, or figures vanish from the outputs
BUILD=_build
CELL_TIMEOUT=${BOOK_CELL_TIMEOUT:-600}
THREADS=${BOOK_THREADS:-1}
START=$(date +%s)
declare -A STAGE_SECONDS=()
now() { date +%s.%N; }
since() { python -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now)"; }
fail() { echo "book: FAILED: $*" >&2; [ -n "${nbval_pid:-}" ] && kill "$nbval_pid" 2>/dev/null; summary; exit 1; }
summary() {
  echo "== stage seconds:"; for k in tools papermill nbval build wheel colab browser; do
    [ -n "${STAGE_SECONDS[$k]:-}" ] && printf '   %-10s %8s s\n' "$k" "${STAGE_SECONDS[$k]}"; done
  echo "== total: $(( $(date +%s) - START )) s"
}

# 0. tools ---------------------------------------------------------------------------------------------------------
t=$(now)
echo "== 0/4 tools"
if ! command -v chromium >/dev/null 2>&1 || [ ! -x /usr/bin/chromedriver ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
    || fail "apt-get install -y chromium chromium-driver"
fi
if ! command -v npm >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null) || fail "apt-get install npm"
fi
python -c "import selenium, papermill, nbval, jupyter_book" || fail "python packages missing: pip install -r requirements.txt"
jupyter kernelspec list 2>/dev/null | grep -qw python3 || python -m ipykernel install --user --name python3 \
  || fail "installing the python3 kernel"
bash .ci/offline_js.sh "$BUILD/offline_js" || fail "fetching widget JS / require.js / MathJax from npm"
shopt -s nullglob
notebooks=(notebooks/[0-9][0-9]_*.ipynb)
[ ${#notebooks[@]} -gt 0 ] || fail "no notebooks/NN_*.ipynb found"
python .ci/notebook_header.py --check || fail "a chapter's Colab header is stale: python .ci/notebook_header.py"
ruff check --config notebooks/ruff.toml --select E501 "${notebooks[@]}" \
  || fail "chapter code lines over 88 columns (the rendered page clips them)"
STAGE_SECONDS[tools]=$(since "$t")

# 2 runs beside 1: nbval on the stored notebooks while papermill writes its own copies, each on one thread
# (OMP_NUM_THREADS=1; the later chapters also set torch's threads from their `threads` parameter). They share no
# files: the chapters write only to temporary folders. nbval's output is printed after papermill's.
t_nbval=$(now)
rm -f "$BUILD/nbval.log" "$BUILD/nbval.rc"
mkdir -p "$BUILD"
( OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS python -m pytest --nbval-lax --nbval-current-env \
    --nbval-cell-timeout="$CELL_TIMEOUT" --sanitize-with notebooks/sanitize.cfg -p no:cacheprovider -q \
    "${notebooks[@]}" > "$BUILD/nbval.log" 2>&1; echo $? > "$BUILD/nbval.rc" ) &
nbval_pid=$!

# 1. papermill -----------------------------------------------------------------------------------------------------
t=$(now)
echo "== 1/4 papermill: ${#notebooks[@]} notebooks (answer-key edition), CI-scale parameters${BOOK_PARAMS:+ + $BOOK_PARAMS}"
rm -rf "$BUILD/executed" "$BUILD/executed_key" "$BUILD/answer_key" "$BUILD/.jupyter_cache"
mkdir -p "$BUILD/executed" "$BUILD/executed_key"
python .ci/student_edition.py --out "$BUILD/answer_key" --with-solutions "${notebooks[@]}" \
  || fail "writing the answer-key edition (.ci/student_edition.py --with-solutions)"
times="$BUILD/notebook_times.tsv"
printf 'notebook\tseconds\tstatus\n' > "$times"
read -r -a extra <<< "${BOOK_PARAMS:-}"
[ -n "${BOOK_PARAMS_FILE:-}" ] && extra=(-f "$BOOK_PARAMS_FILE" "${extra[@]}")
failed=()
for nb in "${notebooks[@]}"; do
  name=$(basename "$nb" .ipynb)
  t_nb=$(now)
  # papermill with a fix for a lost asyncio wake-up that can stall a finished cell until its timeout
  if OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS python .ci/run_notebook.py "$BUILD/answer_key/$name.ipynb" \
      "$BUILD/executed_key/$name.ipynb" -k python3 --cwd notebooks \
      --timeout "$CELL_TIMEOUT" "${extra[@]}" > "$BUILD/executed/$name.log" 2>&1 \
    && python .ci/strip_answer_key.py "$BUILD/executed_key/$name.ipynb" "$BUILD/executed/$name.ipynb" \
      >> "$BUILD/executed/$name.log" 2>&1; then
    status=ok
  else
    status=FAILED
    failed+=("$nb")
  fi
  secs=$(since "$t_nb")
  printf '%s\t%s\t%s\n' "$nb" "$secs" "$status" >> "$times"
  printf 'papermill %-42s %7s s  %s\n' "$nb" "$secs" "$status"
  if [ "$status" != ok ]; then
    grep -v "Kernel is running over TCP" "$BUILD/executed/$name.log" | tail -n 40 | sed 's/^/    | /'
  fi
done
STAGE_SECONDS[papermill]=$(since "$t")
echo "papermill: ${#failed[@]} failed; times in $times"

# 2. nbval on the stored notebooks (started before papermill, above) ----------------------------------------------
echo "== 2/4 nbval (pytest --nbval-lax) on the stored notebooks"
wait "$nbval_pid"
cat "$BUILD/nbval.log"
nbval_status=$(cat "$BUILD/nbval.rc" 2>/dev/null || echo 1)
python .ci/nbval_sensitivity.py || nbval_status=1
STAGE_SECONDS[nbval]=$(since "$t_nbval")

if [ ${#failed[@]} -gt 0 ]; then
  fail "papermill failed for: ${failed[*]} (skipping the build: it would execute them again and fail)"
fi

# 3. build the HTML from this run's papermill outputs ----------------------------------------------------------------
t=$(now)
echo "== 3/4 jupyter-book build (execute_notebooks: cache, filled with the papermill outputs)"
python .ci/cache_executed.py "$BUILD/executed" --cache "$BUILD/.jupyter_cache" --times "$times" \
  || fail "caching the papermill outputs"
jupyter-book build . --toc book/_toc.yml -W -n --keep-going > "$BUILD/book_build.log" 2>&1
build_status=$?
# The full log is in the file; the CI log gets warnings, errors, executions and the verdict.
grep -E "WARNING|ERROR|Executing notebook|Executed notebook|build succeeded|build finished" \
  "$BUILD/book_build.log" | grep -v "running over TCP" | sed 's/^/    | /'
executed_by_build=$(grep -c "Executing notebook using" "$BUILD/book_build.log" || true)
echo "build: exit $build_status; notebooks the build executed itself (cache misses): $executed_by_build"
STAGE_SECONDS[build]=$(since "$t")
[ "$build_status" -eq 0 ] || fail "jupyter-book build -W -n --keep-going (log: $BUILD/book_build.log)"

# 3b. the package wheel, served by the book for Colab ---------------------------------------------------------------
# Each chapter's setup cell, on Colab, reads <book url>/_static/wheels/LATEST (the wheel's file name) and
# pip-installs <book url>/_static/wheels/<name>, so the book installs its own library even when the git URL is
# unreachable. .ci/colab_check.py tests that route in a fresh venv against _build/html served on 127.0.0.1.
t=$(now)
wheels="$BUILD/html/_static/wheels"
rm -rf "$BUILD/wheel" "$wheels" && mkdir -p "$BUILD/wheel" "$wheels"
python -m pip wheel --quiet --no-deps -w "$BUILD/wheel" . > "$BUILD/wheel.log" 2>&1 \
  || { cat "$BUILD/wheel.log"; fail "python -m pip wheel --no-deps ."; }
wheel=$(cd "$BUILD/wheel" && ls searchmorph_lite-*.whl | head -n 1)
[ -n "$wheel" ] || fail "no searchmorph_lite-*.whl in $BUILD/wheel"
cp "$BUILD/wheel/$wheel" "$wheels/" && printf '%s\n' "$wheel" > "$wheels/LATEST"
echo "wheel: $wheels/$wheel ($(du -h "$wheels/$wheel" | cut -f1)), named in $wheels/LATEST"
STAGE_SECONDS[wheel]=$(since "$t")
t=$(now)
echo "== Colab route: a fresh venv with torch, google.colab faked, the setup cell against this build (.ci/colab_check.py)"
python .ci/colab_check.py "$BUILD/html" --workdir "$BUILD/colab_check"
colab_status=$?
STAGE_SECONDS[colab]=$(since "$t")

# 4. browser check ---------------------------------------------------------------------------------------------------
t=$(now)
echo "== 4/4 browser check (headless Chromium, offline)"
python .ci/browser_check.py "$BUILD/html" --toc book/_toc.yml --executed "$BUILD/executed" \
  --screenshots "$BUILD/screenshots"
browser_status=$?
STAGE_SECONDS[browser]=$(since "$t")

echo "== notebook seconds (papermill, CI scale):"
awk -F'\t' '{ printf "   %-44s %8s  %s\n", $1, $2, $3 }' "$times"
summary
[ "$nbval_status" -eq 0 ] || { echo "book: FAILED: nbval (pytest exit $nbval_status)" >&2; exit 1; }
[ "$browser_status" -eq 0 ] || { echo "book: FAILED: browser check" >&2; exit 1; }
[ "$colab_status" -eq 0 ] || { echo "book: FAILED: Colab route (.ci/colab_check.py)" >&2; exit 1; }
echo "book: OK"
