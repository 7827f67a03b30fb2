#!/usr/bin/env bash
# benchmarks/native_ablate.cu, one binary per set of ablation bits (csrc/native_gemm.cuh's Ablate):
#   bash benchmarks/native_ablate.sh build               (here)  -> .cache/es_dual/native_ablate/bits-N
#   bash benchmarks/native_ablate.sh run [E m n k]       (GPU machine, carry .cache/es_dual/native_ablate):
#     each binary's time (clocks as the card sets them; ABLATE_TIMES=0: skipped), then its cycles under ncu.
# Cycles on two k (or two m) of one shape separate the cost per K block from the cost per tile (docs/perf-notes.md,
# 2026-12-07): cycles = tiles per CTA x (per tile + K blocks x per block).
set -e -o pipefail
SETS=${ABLATE_SETS:-"0 24 222 256 478"}
dir=${ES_DUAL_CACHE_DIR:-$PWD/.cache/es_dual}/native_ablate
case "$1" in
  build)
    mkdir -p "$dir"; rm -f "$dir"/bits-*  # (other binaries there, e.g. an earlier revision's, stay)
    for bits in $SETS; do
      PROBE_FLAGS="-DES_DUAL_NATIVE_ABLATE=$bits" PROBE_SUFFIX="/bits-$bits" bash benchmarks/probe.sh build native_ablate
    done ;;
  run)
    shift
    [ "${ABLATE_TIMES:-1}" = 0 ] || for bin in "$dir"/*; do "$bin" "$@"; done
    for bin in "$dir"/*; do
      cycles=$(ABLATE_ONCE=1 ncu --clock-control none -k regex:grouped_gemm --launch-skip 1 --launch-count 1 \
               --metrics gpc__cycles_elapsed.max --csv "$bin" "$@" 2>/dev/null | awk -F'","' 'END{gsub(/[",]/, "", $NF); print $NF}')
      echo "${bin##*/} cycles $cycles"
    done ;;
  *)
    echo "usage: $0 build | run [E m n k]" >&2; exit 2 ;;
esac
