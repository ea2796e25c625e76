#!/usr/bin/env bash
# The GPU measurements quoted in docs/performance.md, on a lent GPU (H100 or H200):
# profile_gpu.py eager and compiled, then bench_gpu.py eager and compiled at B = 64 and 128, fp16.
# Each table is also written to OUTDIR (its log beside it). All four steps took about 4.5 minutes
# on an H200 and an H100 (2026-11-27: 16 s, 27 s, 125 s and 97 s, the first run on a fresh
# machine also building the checkpoint); pass a subset of profile,profile-compile,bench,
# bench-compile as STEPS to run fewer.
# A failing step is reported and the next steps still run; the exit code says whether any failed.
#
#   bash benchmarks/gpu_suite.sh OUTDIR [STEPS]        # $PYTHON: the interpreter (python3)
set -uo pipefail
out=${1:?usage: gpu_suite.sh OUTDIR [profile,profile-compile,bench,bench-compile]}
steps=${2:-profile,profile-compile,bench,bench-compile}
python=${PYTHON:-python3}
mkdir -p "$out" && out=$(cd "$out" && pwd) || exit 2
cd "$(dirname "$0")/.." || exit 2
failed=0

run() {  # run NAME ARGS...: one step, its table to OUTDIR/NAME.md, its log to OUTDIR/NAME.log
  local name=$1
  shift
  [[ ",$steps," == *",$name,"* ]] || return 0
  echo "== $name: $*"
  if "$python" "$@" >"$out/$name.md" 2>"$out/$name.log"; then
    cat "$out/$name.md"
  else
    echo "== $name FAILED (exit $?); the end of $out/$name.log:"
    tail -n 20 "$out/$name.log"
    failed=1
  fi
}

run profile benchmarks/profile_gpu.py
run profile-compile benchmarks/profile_gpu.py --compile
run bench benchmarks/bench_gpu.py --dtypes fp16 --batches 64 128 --ks 1 5 20 --repeats 5
run bench-compile benchmarks/bench_gpu.py --compile --dtypes fp16 --batches 64 128 --ks 5 --repeats 5
exit "$failed"
