#!/usr/bin/env bash
# GPU tests and benchmarks in one go; logs and JSON go to $OUT (default ./gpu-out).
#   benchmarks/gpu_run.sh [tests] [linear] [decode] [twogpu]     (no argument: all but twogpu)
# DECODE_ARGS adds options to decode.py (for example --profile).
# Optional wheels (bitsandbytes, torchao baselines) are installed from .whl/ when that folder exists.
# Each section's log is <section>.log inside $OUT/logs.tgz (with decode's per-kernel tables); the JSON results and
# the tuning cache land in $OUT itself.
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
sections=("$@")
[ ${#sections[@]} -eq 0 ] && sections=(tests linear decode)
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv > "$OUT/env.log" 2>&1
python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)" >> "$OUT/env.log" 2>&1
status=0
for s in "${sections[@]}"; do
  start=$(date +%s)
  case $s in
    tests)  python3 -m pytest tests/kernels/test_triton.py tests/test_generation.py -q -x -n 8 -p no:cacheprovider > "$OUT/tests.log" 2>&1 ;;
    linear) python3 benchmarks/gpu_linear.py --out "$OUT" > "$OUT/linear.log" 2>&1
            cp "$OUT"/tuned_*.json src/lowbit/kernels/triton/ 2>/dev/null ;;  # later sections use the fresh configs
    decode) python3 benchmarks/decode.py --out "$OUT" ${DECODE_ARGS:-} > "$OUT/decode.log" 2>&1 ;;
    twogpu) python3 benchmarks/two_gpu.py --out "$OUT" > "$OUT/twogpu.log" 2>&1 ;;
    *) echo "unknown section $s; expected tests, linear, decode or twogpu" >&2; exit 2 ;;
  esac
  rc=$?
  [ $rc -ne 0 ] && status=$rc
  echo "== $s: exit $rc in $(( $(date +%s) - start ))s"
  tail -n 25 "$OUT/$s.log"
done
# The logs and per-kernel tables go into one archive, so the JSON results and the tuning cache stay few files
# (a remote runner may return only a handful).
(cd "$OUT" && extra=$(ls *.log *.txt 2>/dev/null) && [ -n "$extra" ] && tar czf logs.tgz $extra && rm -f $extra)
ls "$OUT"
exit $status
