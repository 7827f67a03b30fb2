"""Graphs of two bucket-table modes in one process: capture mode A's call, run mode B (eager, then
captured), replay A's graph, synchronizing and checking after every step, so that a fault names the step
that first shows it. python benchmarks/graph_interplay.py WORKLOAD MODE_A MODE_B"""
import sys

import torch
import triton.testing

from es_dual.accuracy import relative_errors
from es_dual.bench.timing import capture
from es_dual.bench.workloads import EXTRA_WORKLOADS, PUBLIC_WORKLOADS
from es_dual.cutlass.launch import grouped_gemm_cutlass
from es_dual.reference import run_reference

name, mode_a, mode_b = sys.argv[1:4]
like_ab = "--like-ab" in sys.argv  # the order of benchmarks/mode_ab.py: both captured, then timed
late_out = "--late-out" in sys.argv  # like-ab, and mode B's output allocated after mode A's capture
w = next(w for w in PUBLIC_WORKLOADS + EXTRA_WORKLOADS if w.name == name)
device = torch.device("cuda", 0)
inputs = w.make_inputs(device)
ref = torch.empty(w.total_m, w.n, dtype=torch.bfloat16, device=device)
run_reference(**inputs, out=ref)
def new_out():
    return torch.full((w.total_m, w.n), float("nan"), dtype=torch.bfloat16, device=device)


outs = {mode_a: new_out(), mode_b: None if late_out else new_out()}


def call(mode):
    grouped_gemm_cutlass(**inputs, out=outs[mode], mode=None if mode == "es" else mode)


def step(label, fn, mode):
    outs[mode].fill_(float("nan"))
    fn()
    torch.cuda.synchronize()
    print(f"{label:<40} ok, max rel error {relative_errors(outs[mode], ref)[0]:.3g}", flush=True)


def timed(label, graph, mode):
    if not late_out:  # late-out: nothing between the captures and the first replay, as in mode_ab.py
        outs[mode].fill_(float("nan"))
    us = 1e3 * triton.testing.do_bench(graph.replay, warmup=100, rep=300, return_mode="median")
    torch.cuda.synchronize()
    print(f"{label:<40} ok, {us:.1f} us, max rel error {relative_errors(outs[mode], ref)[0]:.3g}", flush=True)


if like_ab or late_out:
    step(f"{mode_a} eager", lambda: call(mode_a), mode_a)
    graph_a = capture(lambda: call(mode_a))
    if late_out:
        outs[mode_b] = new_out()
    step(f"{mode_b} eager", lambda: call(mode_b), mode_b)
    graph_b = capture(lambda: call(mode_b))
else:
    step(f"{mode_a} eager", lambda: call(mode_a), mode_a)
    graph_a = capture(lambda: call(mode_a))
    step(f"{mode_a} graph replay", graph_a.replay, mode_a)
    step(f"{mode_b} eager", lambda: call(mode_b), mode_b)
    step(f"{mode_a} graph replay after {mode_b} eager", graph_a.replay, mode_a)
    graph_b = capture(lambda: call(mode_b))
    step(f"{mode_b} graph replay", graph_b.replay, mode_b)
    step(f"{mode_a} graph replay after {mode_b} graph", graph_a.replay, mode_a)
if not late_out:
    step(f"{mode_a} graph replay, once", graph_a.replay, mode_a)
timed(f"{mode_a} graph, do_bench", graph_a, mode_a)
timed(f"{mode_b} graph, do_bench", graph_b, mode_b)
