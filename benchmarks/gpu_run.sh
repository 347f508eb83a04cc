#!/usr/bin/env bash
# The GPU check in one call on the GPU machine (no network; its image has torch, transformers, ... but not
# DeepSpeed): installs the carried wheels into a target folder, runs benchmarks/gpu_check.py unbuffered, and
# writes gpu-check.json + gpu-check.log into the output folder. From a session with the device tool:
#
#   bash benchmarks/gpu_wheels.sh         # here, once: .whl/gpu/ (~4.8 MiB; with the tree ~6 MiB of 64)
#   run(command="bash benchmarks/gpu_run.sh",         carry=[".whl/gpu"], timeout_s=600)   # full: <= 8 min
#   run(command="bash benchmarks/gpu_run.sh --quick", carry=[".whl/gpu"], timeout_s=300)   # quick: <= 3 min
#
# Options: --quick | --tiny (tiny shapes; implies --allow-cpu: the CPU dry run CI runs), --out DIR (default
# $OUT, the device tool's folder that comes back, else benchmarks/results/gpu-run), --wheels DIR (default
# .whl/gpu; "none": use what is importable), --limit-s S (the whole call, install included: 480 full, 180
# quick, 900 tiny); anything else goes to gpu_check.py. The check gets what is left of the limit minus 30 s
# as its --budget-s: rows that would not fit are skipped and say so. Exit: gpu_check's (0 ok, 1 a row
# failed, 2 no GPU), 3 when the wheels do not install or DeepSpeed does not import.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 3
T0=$SECONDS
PROFILE=full OUT_DIR=${OUT:-benchmarks/results/gpu-run} WHEELS=.whl/gpu LIMIT= EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) PROFILE=quick ;;
    --tiny) PROFILE=tiny ;;
    --out) OUT_DIR=$2; shift ;;
    --wheels) WHEELS=$2; shift ;;
    --limit-s) LIMIT=$2; shift ;;
    *) EXTRA+=("$1") ;;
  esac
  shift
done
case $PROFILE in full) : "${LIMIT:=480}" ;; quick) : "${LIMIT:=180}" ;; tiny) : "${LIMIT:=900}" ;; esac
PY=${PYTHON:-python3}
mkdir -p "$OUT_DIR" || exit 3

main() {
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
echo "[gpu_run] $(date -u +%FT%TZ) profile $PROFILE, limit ${LIMIT} s, out $OUT_DIR, python $("$PY" -V 2>&1)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm \
  --format=csv,noheader

if [ "$WHEELS" != none ]; then
  SITE=${GPU_SITE:-/tmp/adept-gpu-site}
  if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    echo "error: no wheels in $WHEELS: run 'bash benchmarks/gpu_wheels.sh' where pip works and name $WHEELS" \
         "in the call's carry" >&2
    return 3
  fi
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$WHEELS"/*.whl || return 3
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  if ! "$PY" -c "import deepspeed" >/dev/null 2>&1 && ls "$WHEELS"/fallback/*.whl >/dev/null 2>&1; then
    echo "[gpu_run] deepspeed does not import with the image's packages: adding $WHEELS/fallback"
    "$PY" -c "import deepspeed" 2>&1 | tail -3
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      "$WHEELS"/fallback/*.whl || return 3
  fi
fi
"$PY" - <<'PY' || return 3
import importlib.metadata as md
import deepspeed  # noqa: F401  (the check's one carried import: fail here, clearly, rather than mid-run)
print("[gpu_run] " + ", ".join(f"{n} {md.version(n)}" for n in ("torch", "transformers", "deepspeed", "pydantic")))
PY
ELAPSED=$((SECONDS - T0))
ARGS=()
case $PROFILE in quick) ARGS+=(--quick) ;; tiny) ARGS+=(--tiny --allow-cpu) ;; esac
echo "[gpu_run] installed in ${ELAPSED} s; the check gets $((LIMIT - ELAPSED - 30)) s for its rows"
timeout -k 10 $((LIMIT - ELAPSED)) "$PY" benchmarks/gpu_check.py "${ARGS[@]}" --budget-s $((LIMIT - ELAPSED - 30)) \
  --out "$OUT_DIR/gpu-check.json" "${EXTRA[@]}"
rc=$?
[ $rc -eq 124 ] && echo "[gpu_run] the check ran past ${LIMIT} s and was stopped; gpu-check.json holds the rows done"
echo "[gpu_run] exit $rc after $((SECONDS - T0)) s: $OUT_DIR/gpu-check.json, $OUT_DIR/gpu-check.log"
return $rc
}

main 2>&1 | tee -a "$OUT_DIR/gpu-check.log"  # the pipeline waits for tee: the log is whole when this returns
exit "${PIPESTATUS[0]}"
