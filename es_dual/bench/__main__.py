"""python -m es_dual.bench: every provider on the public workloads, checked, timed, against the floor.

On a GPU: the public workloads of DESIGN.md. On a CPU-only machine: a scaled-down set with the reference
and the Triton interpreter (the times then say nothing about GPUs; the run checks that everything works).
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import sys

import torch

from ..accuracy import relative_errors, tolerance
from ..api import grouped_gemm_fp8
from ..info import gpu_clocks, driver_version
from ..problem import check_inputs
from .providers import DEFAULT_PROVIDERS, PROVIDERS, Unavailable
from .timing import copy_bandwidth, fp8_matmul_rate, time_us
from .workloads import CPU_WORKLOADS, DISTRIBUTIONS, PUBLIC_WORKLOADS, Workload

BASE_COLUMNS = ("workload", "provider", "us", "tflops", "gbps", "pct_floor", "floor_us", "max_rel_err",
                "rms_rel_err", "status", "device")


def _parse(argv):
    parser = argparse.ArgumentParser(prog="python -m es_dual.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    names = [w.name for w in (*PUBLIC_WORKLOADS, *CPU_WORKLOADS)]
    parser.add_argument("--workloads", help=f"comma-separated names among {', '.join(names)}")
    parser.add_argument("--providers", help=f"comma-separated names among {', '.join(PROVIDERS)}")
    shape = parser.add_argument_group("a custom workload (replaces --workloads)")
    shape.add_argument("--n", type=int)
    shape.add_argument("--k", type=int)
    shape.add_argument("--experts", type=int)
    shape.add_argument("--tokens", type=int, default=32, help="mean tokens per expert (default 32)")
    shape.add_argument("--dist", choices=sorted(DISTRIBUTIONS), default="uniform")
    parser.add_argument("--quick", action="store_true", help="one small workload, short timing (a smoke test)")
    parser.add_argument("--csv", help="write one row per workload and provider to this CSV file")
    parser.add_argument("--plot", help="write a PNG of %% of floor per workload and provider")
    parser.add_argument("--layer", action="store_true", help="benchmark the fused MoE layer instead "
                        "(python -m es_dual.bench --layer --help for its options)")
    return parser.parse_args(argv)


def _pick(names: str | None, table: dict, default) -> list:
    if not names:
        return [table[n] for n in default]
    unknown = [n for n in names.split(",") if n not in table]
    if unknown:
        sys.exit(f"unknown name(s) {', '.join(unknown)}; choose among {', '.join(table)}")
    return [table[n] for n in names.split(",")]


def _workloads(args, device) -> list[Workload]:
    if args.n or args.k or args.experts:
        if not (args.n and args.k and args.experts):
            sys.exit("a custom workload needs --n, --k and --experts")
        counts = DISTRIBUTIONS[args.dist](args.experts, args.tokens)
        name = f"custom_n{args.n}_k{args.k}_e{args.experts}_{args.dist}{args.tokens}"
        return [Workload(name, args.n, args.k, tuple(counts))]
    default = PUBLIC_WORKLOADS if device.type == "cuda" else CPU_WORKLOADS
    if args.quick:
        default = default[-1:]
    table = {w.name: w for w in (*PUBLIC_WORKLOADS, *CPU_WORKLOADS)}
    return _pick(args.workloads, table, [w.name for w in default])


def _header(device) -> str:
    import triton

    parts = [f"torch {torch.__version__}", f"triton {triton.__version__}"]
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        parts = [f"{p.name} (sm_{p.major}{p.minor}, {p.multi_processor_count} SMs)", f"driver {driver_version()}",
                 gpu_clocks(device.index or 0), f"CUDA {torch.version.cuda}", *parts]
    else:
        parts = ["CPU only: scaled-down workloads, the reference and the Triton interpreter; "
                 "times say nothing about GPUs", *parts]
    return "es_dual benchmark | " + " | ".join(parts)


def _progress(total: int):
    try:
        from tqdm import tqdm

        return tqdm(total=total, file=sys.stderr, leave=False)
    except ImportError:
        class Counter:
            done = 0

            def set_description(self, text):
                print(f"[{self.done + 1}/{total}] {text}", file=sys.stderr, flush=True)

            def update(self, n=1):
                self.done += n

            def close(self):
                pass

        return Counter()


def _measure(workloads, providers, device, quick, bandwidth, rate) -> list[dict]:
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    bar = _progress(len(workloads) * len(providers))
    rows = []
    for w in workloads:
        inputs = w.make_inputs(device)
        problem = check_inputs(**inputs)
        floor_us = max(w.bytes() / bandwidth, w.flops() / rate) * 1e6 if bandwidth else float("nan")
        max_tol, rms_tol = tolerance(problem.out_dtype, both_rounded=True)
        references = {}
        for p in providers:
            bar.set_description(f"{w.name} {p.name}")
            row = dict(workload=w.name, provider=p.name, device=device_name, floor_us=floor_us, us=math.nan,
                       tflops=math.nan, gbps=math.nan, pct_floor=math.nan, max_rel_err=math.nan, rms_rel_err=math.nan)
            try:
                fn, checked = p.prepare(problem, inputs)
            except Unavailable as exc:
                rows.append(dict(row, status=f"unavailable: {exc}"))
                bar.update()
                continue
            key = id(checked)
            if key not in references:
                references[key] = grouped_gemm_fp8(**checked, backend="reference")
            max_rel, rms_rel = relative_errors(fn(), references[key])
            row.update(max_rel_err=max_rel, rms_rel_err=rms_rel)
            if not (max_rel <= max_tol and rms_rel <= rms_tol):
                rows.append(dict(row, status=f"WRONG: max rel err {max_rel:.3g}, rms {rms_rel:.3g}; not timed"))
                bar.update()
                continue
            us = time_us(fn, device, quick)
            row.update(us=us, tflops=w.flops() / us / 1e6, gbps=w.bytes() / us / 1e3,
                       pct_floor=100 * floor_us / us, status="ok")
            rows.append(row)
            bar.update()
            del fn, checked
        del inputs, references
    bar.close()
    return rows


def _add_speedups(rows, provider_names) -> None:
    """speedup_vs_<other> = other's time / this time, on the same workload (> 1: this one is faster)."""
    by_key = {(r["workload"], r["provider"]): r for r in rows}
    for r in rows:
        for other in provider_names:
            if other == r["provider"]:
                continue
            o = by_key.get((r["workload"], other))
            ok = r["status"] == "ok" and o is not None and o["status"] == "ok"
            r[f"speedup_vs_{other}"] = o["us"] / r["us"] if ok else math.nan


def _geomean(values) -> float:
    values = [v for v in values if v == v and v > 0]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else math.nan


def _table(rows, provider_names) -> str:
    lines = [f"{'workload':<20} {'provider':<22} {'us':>9} {'TFLOPS':>7} {'GB/s':>6} {'%floor':>6}  speed-up vs others"]
    lines.append("-" * 118)
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"{r['workload']:<20} {r['provider']:<22} {r['status'][:80]}")
            continue
        vs = ", ".join(f"{o} {r[f'speedup_vs_{o}']:.2f}x" for o in provider_names
                       if o != r["provider"] and r[f"speedup_vs_{o}"] == r[f"speedup_vs_{o}"])
        lines.append(f"{r['workload']:<20} {r['provider']:<22} {r['us']:>9.1f} {r['tflops']:>7.1f} {r['gbps']:>6.0f} "
                     f"{r['pct_floor']:>6.1f}  {vs}")
    lines.append("")
    lines.append("geometric mean over workloads:")
    for name in provider_names:
        mine = [r for r in rows if r["provider"] == name and r["status"] == "ok"]
        if not mine:
            continue
        speedups = {o: _geomean(r[f"speedup_vs_{o}"] for r in mine) for o in provider_names if o != name}
        vs = ", ".join(f"{o} {g:.2f}x" for o, g in speedups.items() if g == g)
        lines.append(f"  {name:<22} {_geomean(r['pct_floor'] for r in mine):6.1f} % of floor  {vs}")
    return "\n".join(lines)


def _write_csv(path, rows, provider_names) -> None:
    columns = list(BASE_COLUMNS) + [f"speedup_vs_{o}" for o in provider_names]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _plot(path, rows, title) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"--plot: matplotlib is not installed (pip install matplotlib); {path} not written", file=sys.stderr)
        return
    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    providers = list(dict.fromkeys(r["provider"] for r in rows if r["status"] == "ok"))
    width = 0.8 / max(len(providers), 1)
    fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(workloads)), 4.8))
    for i, p in enumerate(providers):
        values = [next((r["pct_floor"] for r in rows if r["workload"] == w and r["provider"] == p and r["status"] == "ok"), 0)
                  for w in workloads]
        ax.bar([x + i * width for x in range(len(workloads))], values, width, label=p)
    ax.axhline(100, color="black", linewidth=0.8)
    ax.set_xticks([x + width * (len(providers) - 1) / 2 for x in range(len(workloads))], workloads, rotation=20, ha="right")
    ax.set_ylabel("% of floor (higher is better)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def run(argv=None) -> list[dict]:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--layer" in argv:  # the whole MoE layer instead of the grouped GEMM (es_dual/bench/layer.py)
        from .layer import run_layer

        return run_layer(argv)
    args = _parse(argv)
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before the Triton kernel is first imported
    workloads = _workloads(args, device)
    providers = _pick(args.providers, PROVIDERS, DEFAULT_PROVIDERS[device.type])
    header = _header(device)
    print(header, flush=True)
    bandwidth = rate = None
    if device.type == "cuda":
        bandwidth, rate = copy_bandwidth(device), fp8_matmul_rate(device)
        print(f"ceilings (this run): copy {bandwidth / 1e12:.2f} TB/s (read + write), "
              f"FP8 torch._scaled_mm 8192^3 {rate / 1e12:.0f} TFLOP/s", flush=True)
    names = [p.name for p in providers]
    rows = _measure(workloads, providers, device, args.quick, bandwidth, rate)
    _add_speedups(rows, names)
    print(_table(rows, names))
    print("\nproviders:\n" + "\n".join(f"  {p.name:<22} {p.label}" for p in providers))
    if args.csv:
        _write_csv(args.csv, rows, names)
    if args.plot:
        _plot(args.plot, rows, header)
    return rows


if __name__ == "__main__":
    run()
