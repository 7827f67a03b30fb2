"""python -m es_dual.bench: every provider on the grouped-GEMM workloads, checked, timed, against the floor.

On a GPU: each provider gets its users' input layout (made outside the timed region) and its output is
checked against a float64 reference; a wrong one is not timed. Then every provider is timed in each mode
(es_dual/bench/timing.py says exactly what a number measures):
  kernel  one call captured in a CUDA graph, replayed, L2 flushed before each replay: GPU time only;
  eager   plain Python calls back to back, per call: host time included where it exceeds the GPU time.
Each provider is warmed up with 100 ms of back-to-back calls right before it is timed in a mode; the
provider list is timed in two rounds, the second in reverse order, and each provider's better round is
reported (the CSV keeps both). Floor = max(bytes / copy bandwidth, flops / FP8 matmul rate), both
ceilings measured in this run.

On a CPU-only machine times would say nothing about GPUs, so none are taken: the run reports each
backend's accuracy against a float64 reference on scaled-down workloads (the reference backend and the
Triton kernel in the Triton interpreter), and the GPU workloads' bytes, GFLOP and floors on an H100 SXM
and an H200 from their datasheet figures.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import textwrap
from pathlib import Path

import torch

from ..accuracy import relative_errors, tolerance
from ..info import driver_version, gpu_clocks
from ..problem import check_inputs
from ..quant import dequantize_per_block, dequantize_per_token_group
from .providers import DEFAULT_PROVIDERS, PEERS, PROVIDERS, Unavailable, add_peer_paths, describe
from .timing import DATASHEETS, MODES, L2Flush, better_round, capture, copy_bandwidth, fp8_matmul_rate, median_us
from .workloads import CPU_WORKLOADS, DISTRIBUTIONS, EXTRA_WORKLOADS, PUBLIC_WORKLOADS, WORKLOAD_SETS, Workload

COLUMNS = ("workload", "provider", "mode", "us", "us_round1", "us_round2", "tflops", "gbps", "pct_floor", "floor_us",
           "max_rel_err", "rms_rel_err", "status", "note", "device")
ALL_WORKLOADS = {w.name: w for w in (*PUBLIC_WORKLOADS, *EXTRA_WORKLOADS, *CPU_WORKLOADS)}
REPO = Path(__file__).resolve().parents[2]
REPS = {False: 200, True: 20}  # samples per (provider, mode, round); --quick: 20


def parse_modes(text: str) -> list[str]:
    modes = [m for m in text.split(",") if m]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise argparse.ArgumentTypeError(f"modes are among {', '.join(MODES)} (got {text!r})")
    return list(dict.fromkeys(modes))


def _default_peers() -> str | None:
    if os.environ.get("ES_DUAL_PEERS"):
        return os.environ["ES_DUAL_PEERS"]
    return str(REPO / ".peers") if (REPO / ".peers").is_dir() else None


def parse(argv):
    parser = argparse.ArgumentParser(prog="python -m es_dual.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", help=f"comma-separated names among {', '.join(ALL_WORKLOADS)}")
    parser.add_argument("--set", choices=sorted(WORKLOAD_SETS), default="public",
                        help="the GPU workloads when --workloads is not given (default: public)")
    parser.add_argument("--providers", help=f"comma-separated names among {', '.join(PROVIDERS)}")
    parser.add_argument("--modes", type=parse_modes, default=list(MODES),
                        help="comma-separated timing modes among kernel,eager (default: both)")
    parser.add_argument("--peers", default=_default_peers(),
                        help="folder of peers (seed_es/, peer_triton_moe/, deepgemm_build/) put on sys.path "
                             "(default: $ES_DUAL_PEERS, else .peers in the repository when it exists)")
    shape = parser.add_argument_group("a custom workload (replaces --workloads)")
    shape.add_argument("--n", type=int)
    shape.add_argument("--k", type=int)
    shape.add_argument("--experts", type=int)
    shape.add_argument("--tokens", type=int, default=32, help="mean tokens per expert (default 32)")
    shape.add_argument("--dist", choices=sorted(DISTRIBUTIONS), default="uniform")
    parser.add_argument("--quick", action="store_true", help="one small workload, short timing (a smoke test)")
    parser.add_argument("--csv", help="write one row per workload, provider and mode to this CSV file")
    parser.add_argument("--plot", help="write a PNG of %% of floor per workload, provider and mode")
    parser.add_argument("--layer", action="store_true", help="benchmark the fused MoE layer instead "
                        "(python -m es_dual.bench --layer --help for its options)")
    parser.add_argument("--ep", action="store_true", help="benchmark the expert-parallel round trip over one "
                        "process per GPU instead (python -m es_dual.bench --ep --help)")
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
    default = WORKLOAD_SETS[args.set] if device.type == "cuda" else CPU_WORKLOADS
    if args.quick:
        default = default[-1:]
    return _pick(args.workloads, ALL_WORKLOADS, [w.name for w in default])


def _header(device, peers) -> str:
    import triton

    parts = [f"torch {torch.__version__}", f"triton {triton.__version__}", f"peers {peers or '(none)'}"]
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        parts = [f"{p.name} (sm_{p.major}{p.minor}, {p.multi_processor_count} SMs)", f"driver {driver_version()}",
                 gpu_clocks(device.index or 0), f"CUDA {torch.version.cuda}", *parts]
    else:
        parts = ["CPU only: accuracy on scaled-down workloads and datasheet floors; no times", *parts]
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


# ---- checking ----

def reference_f64(a, a_scale, b, b_scale, expert_offsets) -> torch.Tensor:
    """float64 product of the dequantized inputs (as tests/support.py's reference64), rows of no expert 0."""
    x = dequantize_per_token_group(a, a_scale).double()
    out = torch.zeros(a.shape[0], b.shape[1], dtype=torch.float64, device=a.device)
    offs = expert_offsets.tolist()
    for e in range(b.shape[0]):
        if offs[e + 1] > offs[e]:
            out[offs[e] : offs[e + 1]] = x[offs[e] : offs[e + 1]] @ dequantize_per_block(b[e], b_scale[e]).double().T
    return out


def _prepare(provider, problem, inputs, references: dict):
    """(call, fields): the provider's prepared call (None if it cannot be timed) and its row's fields:
    relative errors against the float64 reference of its checked inputs, status, note."""
    try:
        call = provider.prepare(problem, inputs)
    except Unavailable as exc:
        return None, dict(status=f"unavailable: {exc}")
    except Exception as exc:  # a peer whose API or build differs from the one this adapter was written for
        return None, dict(status=f"failed: {describe(exc)}")
    key = id(call.checked)
    if key not in references:  # keyed by id: the entry keeps `checked` alive so the id is not reused
        references[key] = (call.checked, reference_f64(**call.checked))
    try:
        max_rel, rms_rel = relative_errors((call.output or call.run)(), references[key][1])
    except Exception as exc:
        return None, dict(status=f"failed: {describe(exc)}", note=call.note)
    fields = dict(max_rel_err=max_rel, rms_rel_err=rms_rel, note=call.note, status="ok")
    max_tol, rms_tol = tolerance(problem.out_dtype)
    if not (max_rel <= max_tol and rms_rel <= rms_tol):
        return None, dict(fields, status=f"WRONG: max rel err {max_rel:.3g}, rms {rms_rel:.3g}; not timed")
    return call, fields


def _row(w, provider, mode, device_name, floor_us=math.nan, **fields) -> dict:
    row = dict(workload=w.name, provider=provider.name, mode=mode, device=device_name, floor_us=floor_us, note="")
    row.update({c: math.nan for c in ("us", "us_round1", "us_round2", "tflops", "gbps", "pct_floor",
                                      "max_rel_err", "rms_rel_err")})
    return dict(row, **fields)


# ---- on a GPU ----

def _timed(provider, call, mode):
    """(what to time in this mode, or None; the status when None)."""
    if mode == "eager":
        return call.run, ""
    if provider.not_capturable:
        return None, f"unavailable: not graph-capturable ({provider.not_capturable})"
    try:
        return capture(call.run).replay, ""
    except Exception as exc:
        return None, f"unavailable: not graph-capturable (capture failed: {describe(exc)})"


def _measure_gpu(workloads, providers, modes, device, reps, bandwidth, rate, names) -> list[dict]:
    device_name = torch.cuda.get_device_name(device)
    flush = L2Flush(device)
    bar = _progress(len(workloads) * len(providers) * 3)
    rows = []
    for w in workloads:
        inputs = w.make_inputs(device)
        problem = check_inputs(**inputs)
        floor_us = max(w.bytes() / bandwidth, w.flops() / rate) * 1e6
        references, entries, mine = {}, [], []
        for p in providers:
            bar.set_description(f"{w.name} {p.name}: prepare, check")
            call, fields = _prepare(p, problem, inputs, references)
            by_mode, timed = {}, {}
            for mode in modes:
                fn, why = _timed(p, call, mode) if call else (None, "")
                by_mode[mode] = _row(w, p, mode, device_name, floor_us, **fields)
                if why:
                    by_mode[mode]["status"] = why
                if fn:
                    timed[mode] = fn
            entries.append((p, by_mode, timed))
            mine += by_mode.values()
            bar.update()
        del references
        for round_, order in ((1, entries), (2, entries[::-1])):  # the second round in reverse order
            for p, by_mode, timed in order:
                bar.set_description(f"{w.name} {p.name}: round {round_}")
                for mode, fn in timed.items():
                    try:
                        by_mode[mode][f"us_round{round_}"] = median_us(fn, mode, flush, reps)
                    except Exception as exc:
                        by_mode[mode]["status"] = f"failed while timed: {describe(exc)}"
                bar.update()
        for r in mine:
            if r["status"] == "ok":
                us = r["us"] = better_round(r["us_round1"], r["us_round2"])
                r.update(tflops=w.flops() / us / 1e6, gbps=w.bytes() / us / 1e3, pct_floor=100 * floor_us / us)
        _add_speedups(mine, names)
        for r in mine:  # as it comes: a run cut short still shows what it measured
            print(_line(r, names), flush=True)
        rows += mine
        del entries, inputs
    bar.close()
    return rows


def _add_speedups(rows, provider_names) -> None:
    """speedup_vs_<other> = other's time / this time, same workload and mode (> 1: this one is faster)."""
    by_key = {(r["workload"], r["mode"], r["provider"]): r for r in rows}
    for r in rows:
        for other in provider_names:
            if other == r["provider"]:
                continue
            o = by_key.get((r["workload"], r["mode"], other))
            ok = r["status"] == "ok" and o is not None and o["status"] == "ok"
            r[f"speedup_vs_{other}"] = o["us"] / r["us"] if ok else math.nan


def _geomean(values) -> float:
    values = [v for v in values if v == v and v > 0]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else math.nan


def _line(r, provider_names) -> str:
    head = f"{r['workload']:<26} {r['provider']:<20} {r['mode']:<6}"
    if r["status"] != "ok":
        return f"{head} {r['status'][:110]}"
    vs = ", ".join(f"{o} {r[f'speedup_vs_{o}']:.2f}x" for o in provider_names
                   if o != r["provider"] and r[f"speedup_vs_{o}"] == r[f"speedup_vs_{o}"])
    return f"{head} {r['us']:>9.1f} {r['tflops']:>7.1f} {r['gbps']:>6.0f} {r['pct_floor']:>6.1f}  {vs}"


def _table(rows, provider_names, mode) -> str:
    mine = [r for r in rows if r["mode"] == mode]
    lines = [f"mode {mode}: {MODES[mode]}; better of two rounds",
             f"{'workload':<26} {'provider':<20} {'mode':<6} {'us':>9} {'TFLOPS':>7} {'GB/s':>6} {'%floor':>6}  "
             "speed-up vs others (their us / this us)", "-" * 130]
    lines += [_line(r, provider_names) for r in mine]
    lines.append(f"geometric mean over workloads ({mode}):")
    for name in provider_names:
        ok = [r for r in mine if r["provider"] == name and r["status"] == "ok"]
        if ok:
            vs = ", ".join(f"{o} {g:.2f}x" for o in provider_names if o != name
                           for g in [_geomean(r[f"speedup_vs_{o}"] for r in ok)] if g == g)
            lines.append(f"  {name:<20} {_geomean(r['pct_floor'] for r in ok):6.1f} % of floor  {vs}")
    return "\n".join(lines)


def _summary(rows, mode) -> str:
    """Per workload: es_dual (cutlass, else auto) against the fastest peer that ran, and the geomean."""
    lines = [f"es_dual against the best peer, mode {mode} (best of {', '.join(PEERS)}; ratio = peer us / "
             "es_dual us, > 1: es_dual faster)",
             f"{'workload':<26} {'es_dual':<8} {'us':>9}  {'best peer':<20} {'us':>9}  {'ratio':>6}"]
    ratios = []
    for w in dict.fromkeys(r["workload"] for r in rows):
        ok = {r["provider"]: r for r in rows if r["workload"] == w and r["mode"] == mode and r["status"] == "ok"}
        es = ok.get("cutlass") or ok.get("auto")
        peers = [ok[p] for p in PEERS if p in ok]
        if not es or not peers:
            lines.append(f"{w:<26} n/a (es_dual {'ok' if es else 'missing'}, {len(peers)} peers ok)")
            continue
        best = min(peers, key=lambda r: r["us"])
        ratios.append(best["us"] / es["us"])
        lines.append(f"{w:<26} {es['provider']:<8} {es['us']:>9.1f}  {best['provider']:<20} {best['us']:>9.1f}  "
                     f"{ratios[-1]:>5.2f}x")
    lines.append(f"{'geometric mean':<26} {'':<8} {'':>9}  {'':<20} {'':>9}  {_geomean(ratios):>5.2f}x")
    return "\n".join(lines)


# ---- on a CPU-only machine ----

def _accuracy(workloads, providers) -> list[dict]:
    bar = _progress(len(workloads) * len(providers))
    rows = []
    for w in workloads:
        inputs = w.make_inputs(torch.device("cpu"))
        problem, references = check_inputs(**inputs), {}
        for p in providers:
            bar.set_description(f"{w.name} {p.name}")
            rows.append(_row(w, p, "accuracy", "cpu", **_prepare(p, problem, inputs, references)[1]))
            bar.update()
    bar.close()
    return rows


def _accuracy_table(rows) -> str:
    max_tol, rms_tol = tolerance(torch.bfloat16)
    lines = ["accuracy against a float64 reference on the dequantized inputs (relative to the reference's max and "
             f"norm; bf16 tolerance: max {max_tol:.2g}, rms {rms_tol:.2g}); the Triton kernel runs in the interpreter",
             f"{'workload':<26} {'provider':<20} {'max rel err':>11} {'rms rel err':>11}  status", "-" * 80]
    for r in rows:
        measured = r["max_rel_err"] == r["max_rel_err"]
        errors = f"{r['max_rel_err']:>11.2e} {r['rms_rel_err']:>11.2e}" if measured else f"{'':>23}"
        lines.append(f"{r['workload']:<26} {r['provider']:<20} {errors}  {r['status'][:100]}")
    return "\n".join(lines)


def _datasheet_table(workloads) -> str:
    """Bytes, GFLOP and floors from published figures: what a GPU run's % of floor will be measured against."""
    cards = "; ".join(f"{name} {bw / 1e12:.2f} TB/s, {fl / 1e12:.0f} TFLOP/s dense FP8"
                      for name, (bw, fl) in DATASHEETS.items())
    lines = [f"floors from datasheet figures, not measured ({cards}); floor = max(bytes / bandwidth, flops / FP8 peak)",
             f"{'workload':<26} {'n':>5} {'k':>5} {'E':>4} {'tokens':>6} {'MB':>8} {'GFLOP':>8}  "
             + "  ".join(f"{name + ' us':>14}" for name in DATASHEETS), "-" * 110]
    for w in workloads:
        floors = []
        for bandwidth, flops in DATASHEETS.values():
            mem, fp8 = w.bytes() / bandwidth * 1e6, w.flops() / flops * 1e6
            floors.append(f"{max(mem, fp8):>10.1f} {'mem' if mem >= fp8 else 'fp8'}")
        lines.append(f"{w.name:<26} {w.n:>5} {w.k:>5} {w.num_experts:>4} {w.total_m:>6} {w.bytes() / 1e6:>8.1f} "
                     f"{w.flops() / 1e9:>8.1f}  " + "  ".join(floors))
    return "\n".join(lines)


# ---- output files ----

def _write_csv(path, rows, provider_names) -> None:
    columns = list(COLUMNS) + [f"speedup_vs_{o}" for o in provider_names]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _plot(path, rows, key, ylabel, title, line) -> None:
    """One panel per mode: a bar per provider and workload, a horizontal line at `line`."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"--plot: matplotlib is not installed (pip install matplotlib); {path} not written", file=sys.stderr)
        return
    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    providers = list(dict.fromkeys(r["provider"] for r in rows if r["status"] == "ok"))  # one colour each, all panels
    width = 0.8 / max(len(providers), 1)
    fig, axes = plt.subplots(len(modes), 1, figsize=(max(8, 1.6 * len(workloads)), 4.2 * len(modes)), squeeze=False)
    for ax, mode in zip(axes[:, 0], modes):
        ok = {(r["workload"], r["provider"]): r[key] for r in rows if r["mode"] == mode and r["status"] == "ok"}
        for i, p in enumerate(providers):
            ax.bar([x + i * width for x in range(len(workloads))], [ok.get((w, p), 0) for w in workloads], width,
                   label=p)
        ax.axhline(line, color="black", linewidth=0.8)
        ax.set_xticks([x + width * (len(providers) - 1) / 2 for x in range(len(workloads))], workloads,
                      rotation=20, ha="right")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{mode}: {MODES[mode]}" if mode in MODES else mode, fontsize=8)
        ax.legend(fontsize=7, ncol=3)
    fig.suptitle(textwrap.fill(title, 100), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def run(argv=None) -> list[dict]:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--layer" in argv:  # the whole MoE layer instead of the grouped GEMM (es_dual/bench/layer.py)
        from .layer import run_layer

        return run_layer(argv)
    if "--ep" in argv:  # expert parallelism over several processes (es_dual/bench/ep.py)
        from .ep import run_ep

        return run_ep(argv)
    args = parse(argv)
    add_peer_paths(args.peers)
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before the Triton kernel is first imported
    workloads = _workloads(args, device)
    providers = _pick(args.providers, PROVIDERS, DEFAULT_PROVIDERS[device.type])
    names = [p.name for p in providers]
    header = _header(device, args.peers)
    print(header, flush=True)
    if device.type == "cpu":
        rows = _accuracy(workloads, providers)
        print(_accuracy_table(rows) + "\n\n" + _datasheet_table(WORKLOAD_SETS[args.set]))
        plot = ("rms_rel_err", "RMS relative error vs float64 (line: tolerance)", tolerance(torch.bfloat16)[1])
    else:
        bandwidth, rate = copy_bandwidth(device), fp8_matmul_rate(device)
        print(f"ceilings (this run): copy {bandwidth / 1e12:.2f} TB/s (read + write), "
              f"FP8 torch._scaled_mm 8192^3 {rate / 1e12:.0f} TFLOP/s", flush=True)
        rows = _measure_gpu(workloads, providers, args.modes, device, REPS[args.quick], bandwidth, rate, names)
        print("\nresults")
        print("\n\n".join([_table(rows, names, m) for m in args.modes] + [_summary(rows, m) for m in args.modes]))
        plot = ("pct_floor", "% of floor (higher is better)", 100)
    print("\nproviders:\n" + "\n".join(f"  {p.name:<22} {p.label}" for p in providers))
    if args.csv:
        _write_csv(args.csv, rows, names)
    if args.plot:
        _plot(args.plot, rows, *plot[:2], header, plot[2])
    return rows


if __name__ == "__main__":
    run()
