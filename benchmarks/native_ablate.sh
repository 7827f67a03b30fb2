#!/usr/bin/env bash
# benchmarks/native_ablate.cu, one binary per set of ablation bits (csrc/native_gemm.cuh's Ablate):
#   bash benchmarks/native_ablate.sh build               (here)  -> .cache/es_dual/native_ablate/bits-N
#   bash benchmarks/native_ablate.sh run [E m n k]       (GPU machine, carry .cache/es_dual/native_ablate):
#     each binary's time (clocks as the card sets them), then each one's cycles under ncu
set -e -o pipefail
SETS=${ABLATE_SETS:-"0 24 26 28 88 94 152 222"}
dir=${ES_DUAL_CACHE_DIR:-$PWD/.cache/es_dual}/native_ablate
case "$1" in
  build)
    rm -rf "$dir"; mkdir -p "$dir"
    for bits in $SETS; do
      PROBE_FLAGS="-DES_DUAL_NATIVE_ABLATE=$bits" PROBE_SUFFIX="/bits-$bits" bash benchmarks/probe.sh build native_ablate
    done ;;
  run)
    shift
    for bin in "$dir"/bits-*; do "$bin" "$@"; done
    for bin in "$dir"/bits-*; do
      cycles=$(ABLATE_ONCE=1 ncu --clock-control none -k regex:grouped_gemm --launch-skip 1 --launch-count 1 \
               --metrics gpc__cycles_elapsed.max --csv "$bin" "$@" 2>/dev/null | awk -F'","' 'END{gsub(/[",]/, "", $NF); print $NF}')
      echo "${bin##*/} cycles $cycles"
    done ;;
  *)
    echo "usage: $0 build | run [E m n k]" >&2; exit 2 ;;
esac
