#!/usr/bin/env bash
# benchmarks/wgmma_probe.cu: build here (CUTLASS headers, nvcc), run on the GPU machine (carry .cache/es_dual).
#   bash benchmarks/wgmma_probe.sh build   ->  .cache/es_dual/wgmma_probe
#   bash benchmarks/wgmma_probe.sh run
set -e -o pipefail
bin=${ES_DUAL_CACHE_DIR:-$PWD/.cache/es_dual}/wgmma_probe
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
         -Icsrc -I"$gen" $includes -o "$bin" benchmarks/wgmma_probe.cu
    rm -rf "$gen"; echo "$bin" ;;
  run)
    "$bin" ;;
  *)
    echo "usage: $0 build | run" >&2; exit 2 ;;
esac
