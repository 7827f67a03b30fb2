#!/usr/bin/env bash
# ncu on the MoE layer's decode kernels at one batch (default 1 token, DeepSeek-R1 TP8): speed of light,
# memory, occupancy, launch and warp-state sections, and the bytes read from DRAM against those requested
# (with the L2 hit rate: whether pairs sharing an expert already share its reads there), printed.
# Usage: bash benchmarks/ncu_decode.sh [batch] [model index in es_dual.bench.layer.MODELS]
batch=${1:-1}
model=${2:-0}
cat > /tmp/decode_once.py <<PY
import torch
from es_dual.bench.layer import MODELS, make_batch, make_weights
from es_dual.moe import fused_moe_fp8
model = MODELS[$model]
print(model, "batch", $batch)
w = make_weights(model, "cuda")
hidden, topk_weights, topk_ids = make_batch(model, $batch, "cuda")
for _ in range(3):
    fused_moe_fp8(hidden, *w, topk_weights, topk_ids)
torch.cuda.synchronize()
PY
ncu --kernel-name regex:decode_ --launch-skip 3 --launch-count 3 --cache-control all --clock-control none \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats \
    --section WarpStateStats --section SchedulerStats \
    --metrics dram__bytes_read.sum,lts__t_sector_hit_rate.pct,l1tex__t_bytes_pipe_lsu_mem_global_op_ld.sum \
    python3 /tmp/decode_once.py
