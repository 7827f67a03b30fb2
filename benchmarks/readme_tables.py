"""Markdown tables for README.md from committed benchmark CSVs.

python benchmarks/readme_tables.py --bench benchmarks/results/bench_X.csv [--layer benchmarks/results/layer_X.csv]
"""
import argparse
import csv
import math

BENCH_COLUMNS = {"cutlass": "es_dual cutlass", "triton": "es_dual triton", "masked": "es_dual masked", "seed_es": "seed ES",
                 "deepgemm_contiguous": "DeepGEMM contiguous", "deepgemm_masked": "DeepGEMM masked",
                 "torch_grouped_rowwise": "torch grouped (rowwise)", "vllm_triton": "vLLM Triton"}
LAYER_COLUMNS = {"es_dual_auto": "es_dual auto", "es_dual_cutlass": "es_dual cutlass",
                 "es_dual_triton": "es_dual triton", "vllm_triton": "vLLM Triton",
                 "torch_scaled_grouped_mm": "torch._scaled_grouped_mm pipeline"}


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def bench_table(path, mode):
    rows = [r for r in _rows(path) if r["mode"] == mode and r["status"] == "ok"]
    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    cell = {(r["workload"], r["provider"]): r for r in rows}
    floor = mode == "kernel"
    columns = {p: name for p, name in BENCH_COLUMNS.items() if any(r["provider"] == p for r in rows)}
    out = ["| workload |" + (" floor µs |" if floor else "") + "".join(f" {v} |" for v in columns.values()),
           "| --- |" + (" --- |" if floor else "") + " --- |" * len(columns)]
    logs = {p: [] for p in columns}
    for w in workloads:
        present = {p: cell[(w, p)] for p in columns if (w, p) in cell}
        best = min(present, key=lambda p: float(present[p]["us"]))
        line = f"| {w} |" + (f" {float(next(iter(present.values()))['floor_us']):.0f} |" if floor else "")
        for p in columns:
            if p not in present:
                line += " n/a |"
                continue
            r = present[p]
            logs[p].append(math.log(float(r["pct_floor"])))
            text = f"{float(r['us']):.1f} ({float(r['pct_floor']):.0f} %)"
            line += f" **{text}** |" if p == best else f" {text} |"
        out.append(line)
    out.append("| geometric mean |" + (" |" if floor else "")
               + "".join(f" {math.exp(sum(v) / len(v)):.1f} % |" if v else " |" for v in logs.values()))
    return "\n".join(out)


def layer_table(path, mode):
    rows = [r for r in _rows(path) if r["mode"] == mode and r["status"] == "ok"]
    cell = {(r["model"], int(r["batch"]), r["provider"]): r for r in rows}
    keys = list(dict.fromkeys((r["model"], int(r["batch"])) for r in rows))
    present = [p for p in LAYER_COLUMNS if any(k[2] == p for k in cell)]
    out = ["| model | batch | floor µs |" + "".join(f" {LAYER_COLUMNS[p]} |" for p in present)
           + " es_dual auto / floor | vLLM / es_dual auto |",
           "| --- | --- | --- |" + " --- |" * (len(present) + 2)]
    for model, batch in keys:
        auto, vllm = cell.get((model, batch, "es_dual_auto")), cell.get((model, batch, "vllm_triton"))
        floor_us = float(next(r for k, r in cell.items() if k[:2] == (model, batch))["floor_us"])
        line = f"| {model} | {batch} | {floor_us:.1f} |"
        for p in present:
            r = cell.get((model, batch, p))
            line += f" {float(r['us']):.1f} |" if r else " n/a |"
        line += f" {float(auto['us']) / floor_us:.2f}x |" if auto else " |"
        line += f" {float(vllm['us']) / float(auto['us']):.2f}x |" if auto and vllm else " |"
        out.append(line)
    return "\n".join(out)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bench")
    parser.add_argument("--layer")
    args = parser.parse_args()
    for mode in ("kernel", "eager"):
        if args.bench:
            print(f"bench, {mode} mode\n\n" + bench_table(args.bench, mode) + "\n")
        if args.layer:
            print(f"layer, {mode} mode\n\n" + layer_table(args.layer, mode) + "\n")


if __name__ == "__main__":
    main()
