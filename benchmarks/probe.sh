#!/usr/bin/env bash
# The CUDA probes in benchmarks/ (wgmma_probe.cu, native_ablate.cu): built here (CUTLASS headers, nvcc) into
# .cache/es_dual/NAME, run on the GPU machine (carry .cache/es_dual/NAME).
#   bash benchmarks/probe.sh build wgmma_probe   ->  .cache/es_dual/wgmma_probe
#   bash benchmarks/probe.sh run wgmma_probe [arguments]
# PROBE_FLAGS: more nvcc flags; PROBE_SUFFIX: appended to the binary's name.
set -e -o pipefail
name=${2:?usage: $0 build|run NAME [arguments]}
bin=${ES_DUAL_CACHE_DIR:-$PWD/.cache/es_dual}/$name
case "$1" in
  build)
    gen=$(mktemp -d)
    # the generated headers native_gemm.cuh includes, and CUTLASS's include directories
    includes=$(python3 - "$gen" <<'PY'
import sys
from pathlib import Path
from es_dual.cutlass import build, generate
for name, text in generate.generate(tuning=False).items():
    if name.endswith(".h"):
        (Path(sys.argv[1]) / name).write_text(text)
print(" ".join(f"-I{d}" for d in build.cutlass_include_dirs() or []))
PY
)
    mkdir -p "$(dirname "$bin")"
    nvcc -gencode arch=compute_90a,code=sm_90a -O3 -std=c++17 --expt-relaxed-constexpr -DNDEBUG -diag-suppress 177 \
         $PROBE_FLAGS -Icsrc -I"$gen" $includes -o "$bin$PROBE_SUFFIX" "benchmarks/$name.cu"
    rm -rf "$gen"; echo "$bin$PROBE_SUFFIX" ;;
  run)
    shift 2; "$bin" "$@" ;;
  *)
    echo "usage: $0 build|run NAME [arguments]" >&2; exit 2 ;;
esac
