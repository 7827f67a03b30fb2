"""The benchmark: its workloads match DESIGN.md, its options parse, and a quick run works end to end here."""
import csv
import math

import pytest
import torch

from es_dual.bench.__main__ import _datasheet_table, _workloads, parse, reference_f64, run
from es_dual.bench.timing import DATASHEETS, MODES, better_round
from es_dual.bench.workloads import CPU_WORKLOADS, EXTRA_WORKLOADS, PUBLIC_WORKLOADS, WORKLOAD_SETS, seed_skew

from support import make_inputs, reference64

# DESIGN.md's floors (µs) on an H200 at 4.25 TB/s and 1.43-1.47 PFLOP/s: the workloads' bytes and flops
# must reproduce them (same routing, same byte count).
DESIGN_FLOORS_US = {
    "ds_gateup_prefill": 249, "ds_down_prefill": 158, "qwen_gateup": 103, "qwen_down": 59,
    "ds_decode_ep8": 228, "ds_decode_ep16": 113, "balanced_big": 1345, "decode_uniform8": 223,
}
gpu_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-only report")


def test_seed_skew_is_the_seed_distribution():
    counts = seed_skew(256)
    assert len(counts) == 256 and sum(counts) == 13580 and min(counts) >= 1 and max(counts) <= 1024


@pytest.mark.parametrize("workload", PUBLIC_WORKLOADS, ids=lambda w: w.name)
def test_public_workload_floors_match_design(workload):
    floor_us = max(workload.bytes() / 4.25e12, workload.flops() / 1.43e15) * 1e6
    assert floor_us == pytest.approx(DESIGN_FLOORS_US[workload.name], rel=0.012)


def test_extra_workloads_are_well_formed():
    names = [w.name for w in (*PUBLIC_WORKLOADS, *EXTRA_WORKLOADS, *CPU_WORKLOADS)]
    assert len(names) == len(set(names))
    assert WORKLOAD_SETS["all"] == PUBLIC_WORKLOADS + EXTRA_WORKLOADS and WORKLOAD_SETS["extra"] == EXTRA_WORKLOADS
    for w in EXTRA_WORKLOADS:
        assert w.n > 0 and w.k > 0 and w.num_experts > 0 and min(w.counts) >= 0 and w.total_m > 0, w
    by_name = {w.name: w for w in EXTRA_WORKLOADS}
    assert by_name["ds_decode_ep8_one_hot512"].counts == (512,) + (0,) * 31
    assert by_name["ds_gateup_ones256"].counts == (1,) * 256
    assert by_name["mixtral_gateup_balanced512"].counts == (512,) * 8
    assert abs(by_name["qwen_gateup_zipf"].total_m - sum(seed_skew(128))) < 128  # qwen_gateup's token total
    assert {w.k for w in EXTRA_WORKLOADS} >= {512, 768}  # down projections with a short K


def test_sets_and_workload_names_select():
    gpu = torch.device("cuda")  # only its type is read
    assert _workloads(parse([]), gpu) == list(PUBLIC_WORKLOADS)
    assert _workloads(parse(["--set", "extra"]), gpu) == list(EXTRA_WORKLOADS)
    assert _workloads(parse(["--set", "all", "--quick"]), gpu) == [EXTRA_WORKLOADS[-1]]
    assert [w.name for w in _workloads(parse(["--workloads", "qwen3_30b_down,cpu_decode8"]), gpu)] == [
        "qwen3_30b_down", "cpu_decode8"]
    assert _workloads(parse([]), torch.device("cpu")) == list(CPU_WORKLOADS)


def test_modes_option_parses():
    assert parse([]).modes == list(MODES) == ["kernel", "eager"]
    assert parse(["--modes", "eager"]).modes == ["eager"]
    assert parse(["--modes", "eager,kernel,eager"]).modes == ["eager", "kernel"]
    with pytest.raises(SystemExit):
        parse(["--modes", "graph"])


def test_better_round_is_the_lower_time():
    assert better_round(12.5, 11.0) == 11.0 and better_round(9.0, 11.0) == 9.0
    assert better_round(math.nan, 7.0) == 7.0  # a round that did not measure does not count
    assert math.isnan(better_round(math.nan, math.nan))


def test_the_check_uses_the_tests_float64_reference():
    inputs = make_inputs([5, 0, 37, 18], n=256, k=384, seed=3, device="cpu")
    assert torch.equal(reference_f64(**inputs), reference64(inputs))


def test_datasheet_floors():
    table = _datasheet_table(PUBLIC_WORKLOADS)
    assert "not measured" in table.splitlines()[0]
    bandwidth, peak = DATASHEETS["H200"]
    for w in PUBLIC_WORKLOADS:
        line = next(line for line in table.splitlines() if line.startswith(w.name + " "))
        assert f"{max(w.bytes() / bandwidth, w.flops() / peak) * 1e6:.1f}" in line.split()[-2:]


@cpu_only
def test_cpu_report(tmp_path, capsys):
    csv_path, png_path = tmp_path / "bench.csv", tmp_path / "bench.png"
    rows = run(["--quick", "--csv", str(csv_path), "--plot", str(png_path)])
    assert [(r["provider"], r["mode"], r["status"]) for r in rows] == [
        ("reference", "accuracy", "ok"), ("triton", "accuracy", "ok")]
    assert all(0 < r["rms_rel_err"] <= r["max_rel_err"] <= 2**-7 for r in rows)  # bf16 rounding, nothing more
    printed = capsys.readouterr().out
    assert "float64 reference" in printed and "from datasheet figures, not measured" in printed
    assert "nan" not in printed and all(w.name in printed for w in PUBLIC_WORKLOADS)
    with open(csv_path) as f:
        written = list(csv.DictReader(f))
    assert len(written) == len(rows) and {"workload", "provider", "mode", "us_round1", "us_round2"} <= set(written[0])
    pytest.importorskip("matplotlib")
    assert png_path.stat().st_size > 1000


@cpu_only
def test_missing_peers_report_unavailable(tmp_path):
    peers = "seed_es,deepgemm_contiguous,deepgemm_masked,vllm_triton,torch_grouped_rowwise"
    rows = run(["--quick", "--providers", "reference," + peers, "--peers", str(tmp_path)])
    assert rows[0]["status"] == "ok"
    assert all(r["status"].startswith("unavailable: ") for r in rows[1:]), rows


def test_custom_workload():
    rows = run(["--n", "128", "--k", "256", "--experts", "4", "--tokens", "3", "--dist", "zipf", "--quick",
                "--providers", "reference", "--modes", "eager"])
    assert [r["workload"] for r in rows] == ["custom_n128_k256_e4_zipf3"] and rows[0]["status"] == "ok"


def test_masked_provider_checks_out():
    """es_dual's masked entry point as a provider: the routed rows laid out (E, max_m, k), the output
    read back at those rows, checked against the float64 reference like every provider."""
    rows = run(["--n", "128", "--k", "256", "--experts", "4", "--tokens", "3", "--dist", "zipf", "--quick",
                "--providers", "reference,masked", "--modes", "eager"])
    assert [(r["provider"], r["status"]) for r in rows] == [("reference", "ok"), ("masked", "ok")]
    assert rows[1]["max_rel_err"] == rows[0]["max_rel_err"]


@gpu_only
def test_gpu_quick_run_times_both_modes(tmp_path):
    csv_path = tmp_path / "bench.csv"
    rows = run(["--quick", "--providers", "triton,reference,auto", "--csv", str(csv_path)])
    by = {(r["provider"], r["mode"]): r for r in rows}
    assert set(by) == {(p, m) for p in ("triton", "reference", "auto") for m in MODES}
    assert by["reference", "kernel"]["status"].startswith("unavailable: not graph-capturable")
    for key in (("triton", "kernel"), ("triton", "eager"), ("reference", "eager")):
        r = by[key]
        assert r["status"] == "ok" and r["max_rel_err"] <= 2**-7, r
        assert 0 < r["us"] == min(r["us_round1"], r["us_round2"]), r
    with open(csv_path) as f:
        assert len(list(csv.DictReader(f))) == len(rows)
