#!/usr/bin/env bash
# The GPU measurements quoted in docs/performance.md, in one run on a lent GPU (H100 or H200):
# profile_gpu.py eager and compiled, then bench_gpu.py eager and compiled at B = 64 and 128, fp16.
# Each table is also written to OUTDIR. About 8 minutes on an H200; pass a subset of
# profile,profile-compile,bench,bench-compile as the second argument to run fewer.
#
#   bash benchmarks/gpu_suite.sh OUTDIR [STEPS]
set -euo pipefail
out=${1:?usage: gpu_suite.sh OUTDIR [profile,profile-compile,bench,bench-compile]}
steps=${2:-profile,profile-compile,bench,bench-compile}
mkdir -p "$out"
cd "$(dirname "$0")/.."

run() {  # run NAME ARGS...: one step, its table to OUTDIR/NAME.md, its log to OUTDIR/NAME.log
  local name=$1
  shift
  [[ ",$steps," == *",$name,"* ]] || return 0
  echo "== $name: $*"
  python "$@" >"$out/$name.md" 2>"$out/$name.log"
  cat "$out/$name.md"
}

run profile benchmarks/profile_gpu.py
run profile-compile benchmarks/profile_gpu.py --compile
run bench benchmarks/bench_gpu.py --dtypes fp16 --batches 64 128 --ks 1 5 20 --repeats 5
run bench-compile benchmarks/bench_gpu.py --compile --dtypes fp16 --batches 64 128 --ks 5 --repeats 5
