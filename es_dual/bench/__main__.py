"""python -m es_dual.bench: every provider on the public workloads, checked, timed, against the floor.

On a CPU-only machine it runs a scaled-down set with the reference and the Triton interpreter.
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import sys

import torch

from ..accuracy import relative_errors, tolerance
from ..problem import check_inputs
from .providers import DEFAULT_PROVIDERS, PROVIDERS, Unavailable
from .timing import copy_bandwidth, fp8_matmul_rate, time_us
from .workloads import CPU_WORKLOADS, PUBLIC_WORKLOADS

CSV_COLUMNS = ("workload", "provider", "us", "tflops", "gbps", "pct_floor", "floor_us", "max_rel_err", "rms_rel_err", "status", "device")


def _parse(argv):
    parser = argparse.ArgumentParser(prog="python -m es_dual.bench", description=__doc__)
    parser.add_argument("--workloads", help="comma-separated workload names (default: all)")
    parser.add_argument("--providers", help=f"comma-separated providers among {', '.join(PROVIDERS)}")
    parser.add_argument("--csv", help="write the rows to this CSV file")
    return parser.parse_args(argv)


def _pick(names: str | None, table: dict, default) -> list:
    if not names:
        return [table[n] for n in default]
    unknown = [n for n in names.split(",") if n not in table]
    if unknown:
        sys.exit(f"unknown name(s) {', '.join(unknown)}; choose among {', '.join(table)}")
    return [table[n] for n in names.split(",")]


def _header(device) -> str:
    import triton

    parts = [f"es_dual benchmark on {platform.node()}", f"torch {torch.__version__}", f"triton {triton.__version__}"]
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        parts.insert(1, f"{props.name} (sm_{props.major}{props.minor}, {props.multi_processor_count} SMs)")
        parts.append(f"CUDA {torch.version.cuda}")
    else:
        parts.insert(1, "CPU only: scaled-down workloads, reference and Triton interpreter")
    return " | ".join(parts)


def run(argv=None) -> list[dict]:
    args = _parse(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before the Triton kernel is first imported
    workloads = _pick(args.workloads, {w.name: w for w in (*PUBLIC_WORKLOADS, *CPU_WORKLOADS)},
                      [w.name for w in (PUBLIC_WORKLOADS if device.type == "cuda" else CPU_WORKLOADS)])
    providers = _pick(args.providers, PROVIDERS, DEFAULT_PROVIDERS[device.type])
    print(_header(device), flush=True)

    bandwidth = rate = None
    if device.type == "cuda":
        bandwidth, rate = copy_bandwidth(device), fp8_matmul_rate(device)
        print(f"ceilings: copy {bandwidth / 1e12:.2f} TB/s (read + write), FP8 matmul {rate / 1e12:.0f} TFLOP/s", flush=True)

    rows = []
    for w in workloads:
        inputs = w.make_inputs(device)
        problem = check_inputs(**inputs)
        reference = PROVIDERS["reference"].prepare(problem, inputs)()
        floor_us = max(w.bytes() / bandwidth, w.flops() / rate) * 1e6 if bandwidth else float("nan")
        max_tol, rms_tol = tolerance(problem.out_dtype, both_rounded=True)
        for p in providers:
            row = dict(workload=w.name, provider=p.name, device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                       floor_us=floor_us, us=float("nan"), tflops=float("nan"), gbps=float("nan"), pct_floor=float("nan"),
                       max_rel_err=float("nan"), rms_rel_err=float("nan"))
            try:
                fn = p.prepare(problem, inputs)
            except Unavailable as exc:
                rows.append(dict(row, status=f"unavailable: {exc}"))
                continue
            max_rel, rms_rel = relative_errors(fn(), reference)
            row.update(max_rel_err=max_rel, rms_rel_err=rms_rel)
            if not (max_rel <= max_tol and rms_rel <= rms_tol):
                rows.append(dict(row, status="WRONG: differs from the reference, not timed"))
                continue
            us = time_us(fn, device)
            row.update(us=us, tflops=w.flops() / us / 1e6, gbps=w.bytes() / us / 1e3, pct_floor=100 * floor_us / us, status="ok")
            rows.append(row)
            print(_format(row), flush=True)
        del inputs, reference
    print()
    print(_table(rows))
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            writer.writerows({c: r[c] for c in CSV_COLUMNS} for r in rows)
    return rows


def _format(row) -> str:
    if row["status"] != "ok":
        return f"{row['workload']:<20} {row['provider']:<16} {row['status']}"
    return (f"{row['workload']:<20} {row['provider']:<16} {row['us']:>10.1f} {row['tflops']:>8.1f} {row['gbps']:>8.0f} "
            f"{row['pct_floor']:>7.1f} {row['floor_us']:>9.1f}")


def _table(rows) -> str:
    head = f"{'workload':<20} {'provider':<16} {'us':>10} {'TFLOPS':>8} {'GB/s':>8} {'%floor':>7} {'floor us':>9}"
    return "\n".join([head, "-" * len(head), *(_format(r) for r in rows)])


if __name__ == "__main__":
    run()
