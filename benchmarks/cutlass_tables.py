"""Every compiled bucket table (mode) x every bucket-launch overlap of the CUTLASS backend, on the public
workloads, on one GPU: which table and which overlap to make the production default.

    PYTHONPATH=$PWD ES_DUAL_CACHE_DIR=$PWD/.cache/es_dual_tuning python benchmarks/cutlass_tables.py --csv tables.csv

Meant for a tuning build (ES_DUAL_TUNING=1 when it was built; set here unless the environment says
otherwise, since the variable selects the library's cache key). Modes are read from the loaded library.
Each (workload, mode, overlap) is checked once against the reference backend (bf16, both outputs
rounded), then timed: median µs, L2 flushed (es_dual.bench.timing.time_us). A cell ending in "!" failed
the check. The last line is, per column, the geometric mean over workloads of single / column (> 1:
faster than the single-configuration baseline, mode "single" with overlap 0). Single-bucket modes launch
the same thing under every overlap: their spread across overlaps is the timing noise.

time_us times eager calls, so where the host enqueues slower than the GPU runs, launch gaps count;
--graph times the replay of a CUDA graph of one call instead (GPU time only).
"""
from __future__ import annotations

import argparse
import csv
import functools
import math
import os
import sys
import time

os.environ.setdefault("ES_DUAL_TUNING", "1")  # before the library is first located

import torch  # noqa: E402

import es_dual  # noqa: E402
from es_dual.accuracy import relative_errors, tolerance  # noqa: E402
from es_dual.bench.timing import capture, copy_bandwidth, fp8_matmul_rate, time_us  # noqa: E402
from es_dual.bench.workloads import PUBLIC_WORKLOADS  # noqa: E402
from es_dual.cutlass import buckets, loader  # noqa: E402
from es_dual.cutlass.launch import grouped_gemm_cutlass  # noqa: E402

BASELINE = ("single", 0)
CSV_COLUMNS = ("workload", "mode", "overlap", "overlap_name", "us", "floor_us", "pct_floor", "max_rel_err",
               "rms_rel_err", "status", "device")


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", help="comma-separated workload names (default: all public ones)")
    parser.add_argument("--modes", help="comma-separated mode names (default: every mode of the library)")
    parser.add_argument("--overlaps", default=",".join(map(str, buckets.OVERLAPS)),
                        help="comma-separated overlap values (default: all)")
    parser.add_argument("--csv", help="write one row per (workload, mode, overlap) to this file")
    parser.add_argument("--graph", action="store_true", help="time CUDA graph replays instead of eager calls")
    return parser.parse_args(argv)


def _select(names: str | None, available: list[str], what: str) -> list[str]:
    if not names:
        return available
    chosen = names.split(",")
    unknown = [n for n in chosen if n not in available]
    if unknown:
        sys.exit(f"unknown {what} {', '.join(unknown)}; the choices are {', '.join(available)}")
    return chosen


def _geomean(values: list[float]) -> float:
    values = [v for v in values if math.isfinite(v) and v > 0]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else float("nan")


def _graphed(fn):
    """fn captured in a CUDA graph (warmed up first on a side stream, as capture requires)."""
    return capture(fn).replay


def _measure(inputs, out, ref, mode, overlap, device, graph: bool) -> dict:
    """Check one configuration once against the reference, then time it."""
    fn = functools.partial(grouped_gemm_cutlass, **inputs, out=out, mode=mode, overlap=overlap)
    max_tol, rms_tol = tolerance(torch.bfloat16, both_rounded=True)
    try:
        if graph:
            fn = _graphed(fn)
        out.fill_(float("nan"))  # unwritten rows show as NaN, which fails the check
        fn()
        max_rel, rms_rel = relative_errors(out, ref)
        ok = max_rel <= max_tol and rms_rel <= rms_tol
        return dict(us=time_us(fn, device), max_rel_err=max_rel, rms_rel_err=rms_rel,
                    status="ok" if ok else f"wrong (tolerance max {max_tol:.3g}, rms {rms_tol:.3g})")
    except RuntimeError as exc:  # a configuration the library refuses, or a failed launch
        return dict(us=float("nan"), max_rel_err=float("nan"), rms_rel_err=float("nan"), status=f"error: {exc}")


def main(argv=None) -> int:
    args = _parse(argv)
    if not torch.cuda.is_available():
        sys.exit("needs a CUDA GPU (the CUTLASS library is sm_90a)")
    device = torch.device("cuda")
    by_name = {w.name: w for w in PUBLIC_WORKLOADS}
    workloads = [by_name[n] for n in _select(args.workloads, list(by_name), "workload(s)")]
    modes = _select(args.modes, list(loader.modes()), "mode(s)")
    overlaps = [int(o) for o in _select(args.overlaps, [str(o) for o in buckets.OVERLAPS], "overlap(s)")]
    columns = [(m, o) for m in modes for o in overlaps]

    props = torch.cuda.get_device_properties(device)
    bandwidth, fp8_rate = copy_bandwidth(device), fp8_matmul_rate(device)
    print(f"{props.name} ({props.multi_processor_count} SMs) | copy {bandwidth / 1e12:.2f} TB/s | "
          f"FP8 {fp8_rate / 1e15:.2f} PFLOP/s | library modes: {', '.join(loader.modes())} | "
          f"overlap {', '.join(f'{o}={n}' for o, n in buckets.OVERLAPS.items())} | "
          f"default overlap {buckets.DEFAULT_OVERLAP} | {'graph replays' if args.graph else 'eager calls'}")

    heads = [f"{m}/{o}" for m, o in columns]
    widths = [max(len(h), 7) for h in heads]
    name_width = max(len(w.name) for w in workloads)
    print(f"{'workload':<{name_width}} {'floor':>7} " + " ".join(f"{h:>{w}}" for h, w in zip(heads, widths)) + "  best")

    rows, start = [], time.monotonic()
    us = {}  # (workload, mode, overlap) -> µs
    for w in workloads:
        inputs = w.make_inputs("cuda")
        ref = es_dual.grouped_gemm_fp8(**inputs, backend="reference")
        out = torch.empty_like(ref)
        floor_us = 1e6 * max(w.bytes() / bandwidth, w.flops() / fp8_rate)
        cells = []
        for (mode, overlap), width in zip(columns, widths):
            r = _measure(inputs, out, ref, mode, overlap, device, args.graph)
            us[w.name, mode, overlap] = r["us"] if r["status"] == "ok" else float("nan")
            rows.append(dict(workload=w.name, mode=mode, overlap=overlap, overlap_name=buckets.OVERLAPS[overlap],
                             floor_us=round(floor_us, 2), pct_floor=round(100 * floor_us / r["us"], 1),
                             device=props.name, **r))
            cells.append(f"{r['us']:.1f}{'' if r['status'] == 'ok' else '!'}".rjust(width))
        finite = [(us[w.name, m, o], h) for h, (m, o) in zip(heads, columns) if math.isfinite(us[w.name, m, o])]
        best = min(finite)[1] if finite else "-"
        print(f"{w.name:<{name_width}} {floor_us:7.1f} " + " ".join(cells) + f"  {best}", flush=True)
        del inputs, ref, out
        torch.cuda.empty_cache()

    ratios = []
    base = [us.get((w.name, *BASELINE), float("nan")) for w in workloads]
    for (mode, overlap), width in zip(columns, widths):
        mine = [us[w.name, mode, overlap] for w in workloads]
        ratios.append(f"{_geomean([b / m for b, m in zip(base, mine)]):.3f}".rjust(width))
    print(f"{'geomean single/col':<{name_width + 8}} " + " ".join(ratios))
    for r in rows:
        if r["status"] != "ok":
            print(f"{r['workload']} {r['mode']}/{r['overlap']}: {r['status']} "
                  f"(max rel {r['max_rel_err']:.3g}, rms rel {r['rms_rel_err']:.3g})")
    print(f"{len(rows)} configurations in {time.monotonic() - start:.0f} s")

    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
