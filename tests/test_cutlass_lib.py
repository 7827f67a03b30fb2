"""The CUTLASS library without a GPU: it builds, loads with ctypes, exports the C API and nothing else,
links neither libtorch, libpython nor libcuda, holds sm_90a code only, reports the bucket table of
es_dual/cutlass/buckets.py, sizes its workspace sanely and fails with readable messages.

Building takes minutes the first time (cached under $ES_DUAL_CACHE_DIR, default ~/.cache/es_dual).
"""
from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from es_dual.cutlass import build, buckets, generate, launch, loader

NVCC_MISSING = build.find_nvcc() is None
# The tests hold for the build the environment selects (production, or ES_DUAL_TUNING=1).
TUNING = generate.tuning_requested()
COMPILED_MODES = generate.compiled_modes(TUNING)


def _native_code() -> int:
    """The mode argument of the production native mode."""
    return [name for name, _ in COMPILED_MODES].index("native")


@pytest.fixture(scope="session")
def library_file() -> Path:
    try:
        return build.library_path(build=True)
    except FileNotFoundError as exc:
        if NVCC_MISSING:
            pytest.skip(f"nvcc not found and no prebuilt library: {exc}")
        raise


@pytest.fixture(scope="session")
def lib(library_file) -> ctypes.CDLL:
    return loader.load_library()


# --- the shared object -------------------------------------------------------------------------------

def test_exports_exactly_the_c_api(lib, library_file):
    for name in loader.SIGNATURES:
        assert hasattr(lib, name), f"{name} is not exported"
    if shutil.which("nm") is None:
        pytest.skip("nm not available to list the dynamic symbols")
    listing = subprocess.run(["nm", "-D", "--defined-only", str(library_file)], capture_output=True, text=True, check=True)
    exported = {line.split()[-1] for line in listing.stdout.splitlines() if line.split()[1:2] == ["T"]}
    assert exported == set(loader.SIGNATURES), f"unexpected exported functions: {exported ^ set(loader.SIGNATURES)}"


def test_links_no_torch_python_or_cuda_driver(library_file):
    if shutil.which("ldd") is None:
        pytest.skip("ldd not available")
    ldd = subprocess.run(["ldd", str(library_file)], capture_output=True, text=True, check=True).stdout
    for forbidden in ("libtorch", "libc10", "libpython", "libcuda.so", "libcudart.so"):
        assert forbidden not in ldd, f"{library_file.name} links {forbidden}:\n{ldd}"


def test_holds_sm90a_code_only(library_file):
    tool = build.find_cuobjdump()
    if tool is None:
        pytest.skip("no cuobjdump (neither in triton's wheel nor on PATH)")
    elves = subprocess.run([tool, "--list-elf", str(library_file)], capture_output=True, text=True, check=True).stdout
    lines = [line for line in elves.splitlines() if "ELF file" in line]
    # one cubin per compiled unit that holds device code: api.cu (the preparation kernel) and every kernel unit
    units = 1 + len(generate.kernel_units(TUNING))
    # Recent cuobjdump releases name the cubins sm_90a, older ones (CUDA 12.x, in some triton wheels)
    # sm_90 for both; the FP8 warpgroup MMA (QGMMA) exists only in sm_90a code, so the SASS settles it.
    assert len(lines) >= units and all("sm_90" in line for line in lines), elves
    sass = subprocess.run([tool, "-sass", str(library_file)], capture_output=True, text=True, check=True).stdout
    assert "QGMMA" in sass, "no FP8 warpgroup MMA in the SASS: not sm_90a code"
    ptx = subprocess.run([tool, "--list-ptx", str(library_file)], capture_output=True, text=True)
    assert ".ptx" not in ptx.stdout, f"PTX embedded (would JIT on other GPUs): {ptx.stdout}"


# --- one table -----------------------------------------------------------------------------------------

def test_library_reports_the_python_table(lib):
    reported = json.loads(lib.es_dual_table_json().decode())
    assert reported == json.loads(generate.table_json(TUNING))
    assert [m["mode"] for m in reported] == [mode for mode, _ in COMPILED_MODES]
    for m, (_, rows) in zip(reported, buckets.MODES):  # production modes: every output dtype
        assert [r["name"] for r in m["buckets"]] == [b.name for b in rows]
        assert [r["max_tokens"] for r in m["buckets"]] == [b.max_tokens for b in rows]
        assert [r["swap_ab"] for r in m["buckets"]] == [b.config.swap_ab for b in rows]
        for r, b in zip(m["buckets"], rows):
            kernel = buckets.kernel_of(rows, b)  # a native mode's buckets all name its one fused kernel
            assert r["kernels"] == [f"{kernel.name}_{d}" for d, _ in buckets.OUT_DTYPES]
    assert loader.mode_codes(lib) == {mode: i for i, (mode, _) in enumerate(COMPILED_MODES)} == loader.modes()
    assert list(loader.modes())[:2] == ["es", "single"]


def test_generated_units_match_the_table(library_file):
    generated = generate.generate(TUNING)
    units = sorted(n for n in generated if n.endswith(".cu"))
    expected = sorted(generate.kernel_unit_name(c, d) for c in buckets.kernel_configs() for d, _ in buckets.OUT_DTYPES)
    assert units == expected or TUNING
    # every bucket of every production mode has its unit for every output dtype; tuning modes for bf16
    for modes, dtypes in ((buckets.MODES, buckets.OUT_DTYPES), (COMPILED_MODES, buckets.OUT_DTYPES[:1])):
        for _, rows in modes:
            for b in rows:
                for d, _ in dtypes:
                    assert generate.kernel_unit_name(buckets.kernel_of(rows, b), d) in units
    # the library was built from exactly this text
    on_disk = {p.name: p.read_text() for p in (library_file.parent / "gen").iterdir()}
    assert on_disk == generated


def test_table_invariants():
    buckets.check_table()
    bounds = buckets.boundaries()
    assert list(bounds) == sorted(bounds) and all(b >= 1 for b in bounds)
    with pytest.raises(ValueError, match="tile_k"):
        buckets.KernelConfig(128, 128, 64, 1, 1, "cooperative", swap_ab=False)
    with pytest.raises(ValueError, match="weights' tile side"):
        buckets.KernelConfig(128, 64, 128, 1, 1, "cooperative", swap_ab=False)
    with pytest.raises(ValueError, match="without swap-AB tile_n"):
        buckets.coop(128, 256)
    assert buckets.DEFAULT_OVERLAP in buckets.OVERLAPS


def test_es_mode_by_shape():
    """The production mode for a shape: at k <= 256 the native mode below WIDE_MIN_MEAN_TOKENS tokens per
    expert (known: the contiguous layout), else es_small_k; the native mode at 256 < k <= 4096 when its
    kernels take the shape (else the es table), es above."""
    assert buckets.es_mode(4096, 7168, 256, 256) == "native"  # k <= 256, below WIDE_MIN_MEAN_TOKENS
    assert buckets.es_mode(4096, 7168, 256, 256, tokens_known=False) == "es_small_k"
    assert buckets.es_mode(512 * 128, 7168, 256, 128) == "es_small_k"  # compute-bound small k
    assert buckets.es_mode(4096, 4096, 384, 128) == "native"
    assert buckets.es_mode(4096, 768, 4096, 128) == "native"
    assert buckets.es_mode(4096, 4096, 7168, 32) == "es"
    # compute-bound: experts of 512 tokens or more on average take the wide 2-CTA tiles, whatever k
    assert buckets.es_mode(32768, 4096, 7168, 8) == "native_mc"
    assert buckets.es_mode(512 * 8, 14336, 4096, 8) == "native_mc"
    assert buckets.es_mode(512 * 8 - 1, 14336, 4096, 8) == "native"
    assert buckets.es_mode(256 * 128, 768, 4096, 128) == "native"  # the Qwen3-235B layer at 4096 tokens
    # the masked layout's E x max_m rows tell only the largest expert's size: routed by k alone
    assert buckets.es_mode(32768, 4096, 7168, 8, tokens_known=False) == "es"
    assert buckets.es_mode(1024 * 256, 512, 4096, 256, tokens_known=False) == "native"
    assert buckets.es_mode(32768, 4096, 256, 8) == "es_small_k"
    assert buckets.es_mode(4096, 4096, 384, buckets.NATIVE_MAX_EXPERTS + 1) == "es"  # schedule in smem
    assert buckets.es_mode(4096, 2**24, 384, 128) == "es"  # (E + 1) * n past 32-bit TMA rows
    assert buckets.native_fits(4096, 4096, 128) and not buckets.native_fits(2**22, 8192, 128)
    # any k: the weight scales of each K block come with its pipeline stage
    assert buckets.es_mode(32768, 4096, 65536, 8) == "native_mc"


def test_native_table_rules(monkeypatch):
    """Native kinds: a tile's weight rows in at most two weight scale blocks (one for swap-AB kinds),
    no wider than the registers hold; a mode is all native (one fused kernel, named by every bucket) or
    all CUTLASS, and its kinds share the math warp groups."""
    buckets.NativeConfig(128, 192, swap_ab=False)  # two scale blocks per tile: accepted
    buckets.NativeConfig(128, 160, swap_ab=False)
    with pytest.raises(ValueError, match="span three"):
        buckets.NativeConfig(128, 176, swap_ab=False)  # a tile at column 176 ends in block 2
    with pytest.raises(ValueError, match="<= 192"):
        buckets.NativeConfig(128, 256, swap_ab=False)
    with pytest.raises(ValueError, match="tile_m must be 64, 128 or 192"):
        buckets.NativeConfig(96, 32, swap_ab=True)
    buckets.NativeConfig(192, 128, swap_ab=False, cluster=2)  # three math warp groups
    with pytest.raises(ValueError, match="only without swap-AB"):
        buckets.NativeConfig(192, 32, swap_ab=True)
    with pytest.raises(ValueError, match="tile_n must be <= 128"):
        buckets.NativeConfig(192, 192, swap_ab=False)
    buckets.NativeConfig(192, 128, swap_ab=False, cluster=2, multicast_tokens=True)
    with pytest.raises(ValueError, match="multicast_tokens needs cluster 2"):
        buckets.NativeConfig(192, 128, swap_ab=False, multicast_tokens=True)
    with pytest.raises(ValueError, match="multicast_tokens needs cluster 2"):
        buckets.NativeConfig(128, 32, swap_ab=True, cluster=2, multicast_tokens=True)
    with pytest.raises(ValueError, match="cluster must be 1 or 2"):
        buckets.NativeConfig(128, 128, swap_ab=False, cluster=4)
    with pytest.raises(ValueError, match="half of tile_n"):
        buckets.NativeConfig(128, 40, swap_ab=False, cluster=2)
    native = dict(buckets.MODES)["native"]
    fused = buckets.fused_kernel(native)
    assert fused is not None and all(buckets.kernel_of(native, b) == fused for b in native)
    assert buckets.fused_kernel(buckets.BUCKETS) is None and buckets.kernel_of(buckets.BUCKETS, buckets.BUCKETS[0]) == buckets.BUCKETS[0].config
    mixed = buckets.table(("decode", 32, buckets.NativeConfig(128, 32, swap_ab=True), ""),
                          ("large", None, buckets.coop(128, 128), ""))
    monkeypatch.setattr(buckets, "TUNING_MODES", (("mixed", mixed),))
    with pytest.raises(ValueError, match="all native kernels or all CUTLASS"):
        buckets.check_table()
    uneven = buckets.table(("decode", 32, buckets.NativeConfig(64, 32, swap_ab=True), ""),
                           ("large", None, buckets.NativeConfig(128, 128, swap_ab=False), ""))
    monkeypatch.setattr(buckets, "TUNING_MODES", (("uneven", uneven),))
    with pytest.raises(ValueError, match="share tile_m"):
        buckets.check_table()
    clusters = buckets.table(("decode", 32, buckets.NativeConfig(128, 32, swap_ab=True), ""),
                             ("large", None, buckets.NativeConfig(128, 128, swap_ab=False, cluster=2), ""))
    monkeypatch.setattr(buckets, "TUNING_MODES", (("clusters", clusters),))
    with pytest.raises(ValueError, match="share the cluster size"):
        buckets.check_table()


# --- tuning tables ---------------------------------------------------------------------------------------

def test_tuning_build_generates_its_own_units_and_key(monkeypatch):
    """ES_DUAL_TUNING=1 adds the tuning modes after the production ones, compiles their extra kernels for
    bf16 only, and gets its own cache key; without it the text and key ignore the tuning tables."""
    production, tuning = generate.generate(tuning=False), generate.generate(tuning=True)
    extra = {n: t for n, t in tuning.items() if n not in production}
    assert all(tuning[n] == t for n, t in production.items() if n != generate.HEADER)
    tuning_only = [c for c in buckets.kernel_configs(buckets.TUNING_MODES) if c not in buckets.kernel_configs()]
    assert tuning_only and sorted(extra) == sorted(generate.kernel_unit_name(c, "bf16") for c in tuning_only)
    header = tuning[generate.HEADER]
    for name, text in extra.items():
        symbol = name.removesuffix(".cu")
        # a CUTLASS kernel (GroupedGemm<...>) or a native one (native::GroupedGemm<native::Mode<...>>)
        assert re.search(rf"const KernelEntry {symbol} = make_entry<(native::)?GroupedGemm<", text)
        assert f"extern const KernelEntry {symbol};" in header
    # every bucket of every mode names a kernel the build compiles, or nullptr for fp16 of tuning-only ones
    modes = json.loads(generate.table_json(tuning=True))
    assert [m["mode"] for m in modes] == [m for m, _ in (*buckets.MODES, *buckets.TUNING_MODES)]
    compiled = {n.removeprefix("kernel_").removesuffix(".cu") for n in tuning if n.endswith(".cu")}
    for m in modes:
        for bucket in m["buckets"]:
            bf16, fp16 = bucket["kernels"]
            assert bf16 in compiled and (fp16 is None or fp16 in compiled)
    assert f"constexpr int kNumModes = {len(modes)};" in header
    # distinct keys; the environment picks one; the production key does not see the tuning tables
    assert build.source_key(tuning=True) != build.source_key(tuning=False)
    monkeypatch.delenv(generate.TUNING_ENV, raising=False)
    key = build.source_key()
    assert key == build.source_key(tuning=False)
    monkeypatch.setenv(generate.TUNING_ENV, "1")
    assert build.source_key() == build.source_key(tuning=True)
    monkeypatch.setattr(buckets, "TUNING_MODES", ())
    build._source_key.cache_clear()
    try:
        assert build.source_key(tuning=False) == key and generate.generate(tuning=False) == production
    finally:
        build._source_key.cache_clear()


class _FakeLibrary:
    """Reports a table the way the C API does, in an order that is not the production one."""

    def __init__(self, modes):
        self.text = json.dumps([{"mode": m, "buckets": []} for m in modes]).encode()

    def es_dual_table_json(self):
        return self.text


def test_python_maps_mode_names_through_the_library_table(monkeypatch):
    from es_dual.cutlass import launch

    fake = _FakeLibrary(["es", "single", "two", "t128"])
    assert loader.mode_codes(fake) == {"es": 0, "single": 1, "two": 2, "t128": 3}
    monkeypatch.setattr(loader, "modes", lambda: loader.mode_codes(fake))
    assert [launch.mode_code(m) for m in ("t128", "two", "es", "single")] == [3, 2, 0, 1]
    with pytest.raises(ValueError, match="mode: expected one of 'es', 'single', 'two', 't128'.*got 'nope'"):
        launch.mode_code("nope")


# --- cache key -----------------------------------------------------------------------------------------

def test_cache_key_needs_neither_cutlass_nor_nvcc(monkeypatch, library_file):
    """A machine without CUTLASS headers and without nvcc computes the same key and finds the library."""
    key = build.source_key()
    monkeypatch.setattr(build, "cutlass_include_dirs", lambda: None)
    monkeypatch.setattr(build, "nvcc_version", lambda: None)
    build._source_key.cache_clear()
    try:
        assert build.source_key() == key
        assert build.can_build()  # cannot build here any more ...
        assert build.library_path(build=True) == build.any_library()  # ... but finds the prebuilt one
        assert build.library_path(build=True).is_file()
    finally:
        build._source_key.cache_clear()


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("ES_DUAL_CACHE_DIR", str(tmp_path))
    assert build.source_dir().parent == tmp_path
    assert build.any_library() is None


# --- workspace size ------------------------------------------------------------------------------------

def _workspace(lib, total_m=100, n=4096, k=7168, experts=8, dtype=0, mode=0, sms=132):
    size = ctypes.c_size_t(0)
    status = lib.es_dual_workspace_bytes(total_m, n, k, experts, dtype, mode, sms, ctypes.byref(size))
    return status, size.value


@pytest.mark.parametrize("mode", [0, 1])
@pytest.mark.parametrize("dtype", [0, 1])
def test_workspace_bytes_are_sane(lib, mode, dtype):
    rows = buckets.MODES[mode][1]
    sizes = {}
    for experts in (1, 8, 256, 512, 4096):
        status, size = _workspace(lib, experts=experts, dtype=dtype, mode=mode)
        assert status == loader.OK, loader.last_error(lib)
        # at least: per bucket, a masked shape per expert (3 ints) and two TMA descriptors (A, B) per SM;
        # per expert, five pointers
        assert size >= len(rows) * (experts * 12 + 132 * 2 * 128) + experts * 5 * 8
        # at most: a few hundred bytes per expert per bucket plus a few descriptors per SM per bucket
        assert size <= len(rows) * (experts * 1024 + 132 * 8 * 128 + 4096) + 2 * experts * 1024
        sizes[experts] = size
    assert list(sizes.values()) == sorted(sizes.values())
    # an upper bound for any routing: independent of total_m; grows with the SM count
    assert _workspace(lib, total_m=0, mode=mode, dtype=dtype)[1] == _workspace(lib, total_m=10**6, mode=mode, dtype=dtype)[1]
    assert _workspace(lib, sms=264, mode=mode, dtype=dtype)[1] > _workspace(lib, sms=132, mode=mode, dtype=dtype)[1]


def _gpu_present() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def test_native_modes_need_no_workspace(lib):
    """A native mode's one kernel reads the caller's tensors and nothing else: its workspace is 0 bytes for
    any total_m and a NULL workspace passes the argument checks (without a GPU the call then fails at the
    device); a CUTLASS mode's workspace does not depend on total_m either, and NULL is refused by name."""
    for name, code in loader.modes().items():
        native = buckets.fused_kernel(dict(COMPILED_MODES)[name]) is not None
        sizes = {_workspace(lib, total_m=m, n=4096, k=4096, mode=code)[1] for m in (0, 1000, 10**6)}
        assert len(sizes) == 1 and (sizes == {0}) == native, (name, sizes)
        if not native:
            assert _gemm(lib, mode=code, ws=None, ws_bytes=0) == loader.INVALID_ARGUMENT
            assert "workspace: expected a device pointer, got NULL" in loader.last_error(lib)
        elif not _gpu_present():  # with a GPU, the made-up pointers would reach a kernel
            assert _gemm(lib, mode=code, k=4096, ws=None, ws_bytes=0) == loader.CUDA, loader.last_error(lib)
            assert "device 0" in loader.last_error(lib)


def test_workspace_bytes_rejects_bad_sizes(lib):
    cases = {
        "mode": dict(mode=99),
        "out_dtype": dict(dtype=3),
        "num_experts": dict(experts=0),
        "k:": dict(k=100),
        "n:": dict(n=100),
        "sm_count": dict(sms=0),
        "total_m": dict(total_m=-1),
    }
    for needle, kwargs in cases.items():
        status, _ = _workspace(lib, **kwargs)
        assert status == loader.INVALID_ARGUMENT and needle in loader.last_error(lib), (kwargs, loader.last_error(lib))
    assert lib.es_dual_workspace_bytes(1, 128, 128, 1, 0, 0, 132, None) == loader.INVALID_ARGUMENT
    assert "bytes" in loader.last_error(lib)


# --- error paths of the GEMM call (all caught before any CUDA call) --------------------------------------

def _gemm(lib, **overrides):
    args = dict(a=256, a_scale=256, a_scale_ld=0, row_index=None, b=256, b_scale=256, offs=256, offs64=0, max_m=0, out=256,
                total_m=10, n=4096, k=7168, experts=8, dtype=0, mode=0, overlap=0, device=0, sms=132, ws=256,
                ws_bytes=1 << 30, stream=None)
    args.update(overrides)
    return lib.es_dual_grouped_gemm(*args.values())


def test_gemm_error_messages_name_the_argument(lib):
    cases = [
        (dict(a=None), loader.INVALID_ARGUMENT, "a: expected a device pointer, got NULL"),
        (dict(b_scale=None), loader.INVALID_ARGUMENT, "b_scale: expected a device pointer"),
        (dict(out=264), loader.INVALID_ARGUMENT, "out: expected a 16-byte aligned pointer"),
        (dict(offs=258), loader.INVALID_ARGUMENT, "expert_offsets: expected a 4-byte aligned pointer"),
        (dict(offs=260, offs64=1), loader.INVALID_ARGUMENT, "expert_offsets: expected a 8-byte aligned pointer"),
        (dict(ws=128), loader.INVALID_ARGUMENT, "workspace: expected a 256-byte aligned pointer"),
        (dict(mode=len(COMPILED_MODES)), loader.INVALID_ARGUMENT,
         f"mode: expected 0 (es) to {len(COMPILED_MODES) - 1} ({COMPILED_MODES[-1][0]}), got {len(COMPILED_MODES)}"),
        (dict(overlap=3), loader.INVALID_ARGUMENT, "overlap: expected 0 (serial), 1 (streams) or 2 (pdl), got 3"),
        (dict(dtype=-1), loader.INVALID_ARGUMENT, "out_dtype: expected 0 (bf16) or 1 (fp16), got -1"),
        (dict(k=7000), loader.INVALID_ARGUMENT, "k: expected a positive multiple of 16"),
        (dict(n=4100), loader.INVALID_ARGUMENT, "n: expected a positive multiple of 8"),
        (dict(experts=0), loader.INVALID_ARGUMENT, "num_experts: expected >= 1, got 0"),
        (dict(ws_bytes=1000), loader.WORKSPACE, "workspace: expected at least"),
        (dict(max_m=-1), loader.INVALID_ARGUMENT,
         "max_m: expected 0 (offsets) or total_m / num_experts = 10 / 8 (masked counts), got -1"),
        (dict(max_m=3), loader.INVALID_ARGUMENT, "(masked counts), got 3"),
        (dict(max_m=1 << 62), loader.INVALID_ARGUMENT, f"(masked counts), got {1 << 62}"),
        (dict(a_scale_ld=-1), loader.INVALID_ARGUMENT,
         "a_scale_ld: expected 0 (K-major scales) or an MN-major leading dimension >= total_m = 10, got -1"),
        (dict(a_scale_ld=9), loader.INVALID_ARGUMENT, "leading dimension >= total_m = 10, got 9"),
        (dict(a_scale_ld=16, total_m=16, max_m=2), loader.INVALID_ARGUMENT,
         "a_scale_ld: MN-major scales take expert offsets, not masked counts (max_m = 2)"),
        (dict(a_scale_ld=12, mode=0), loader.INVALID_ARGUMENT,
         "a_scale_ld: mode 0 (es) reads K-major scales only; MN-major scales need a native mode"),
        (dict(row_index=256, mode=0), loader.INVALID_ARGUMENT,
         "row_index: gathered rows need a native mode and expert offsets, got mode 0 (es) and max_m = 0"),
        (dict(row_index=256, mode=_native_code(), total_m=16, max_m=2), loader.INVALID_ARGUMENT,
         "row_index: gathered rows need a native mode and expert offsets, got mode"),
        (dict(row_index=258, mode=_native_code()), loader.INVALID_ARGUMENT,
         "row_index: expected a 4-byte aligned pointer"),
    ]
    for overrides, status, message in cases:
        got = _gemm(lib, **overrides)
        assert (got, message in loader.last_error(lib)) == (status, True), (overrides, loader.last_error(lib))


def test_bf16_only_modes_refuse_fp16(lib):
    """A tuning build compiles the kernels only tuning modes use for bf16; fp16 is refused by name."""
    bf16_only = [i for i, m in enumerate(json.loads(lib.es_dual_table_json())) if None in sum((b["kernels"] for b in m["buckets"]), [])]
    if not bf16_only:
        pytest.skip("every compiled mode has fp16 kernels (production build)")
    status, _ = _workspace(lib, mode=bf16_only[0], dtype=1)
    assert status == loader.INVALID_ARGUMENT and "has no kernel for out_dtype 1" in loader.last_error(lib)
    assert _workspace(lib, mode=bf16_only[0], dtype=0)[0] == loader.OK


def test_gemm_with_no_rows_does_nothing(lib):
    """total_m = 0: nothing to write, no CUDA call (so it succeeds even without a GPU or any pointer)."""
    assert _gemm(lib, total_m=0, a=None, a_scale=None, b=None, b_scale=None, offs=None, out=None, ws=None, ws_bytes=0) == loader.OK


def test_gemm_without_gpu_fails_readably(lib):
    """Valid-looking arguments on a machine without a usable GPU: a CUDA error with its text, no crash."""
    if _gpu_present():
        pytest.skip("a GPU is present: the GPU tests cover the call")
    for masked in ({}, dict(total_m=16, max_m=2)):  # the masked layout passes the same checks
        status = _gemm(lib, **masked)
        assert status == loader.CUDA, (masked, loader.last_error(lib))
        assert "device 0" in loader.last_error(lib)


def test_last_error_is_per_thread(lib):
    _gemm(lib, mode=99)
    seen = []
    thread = threading.Thread(target=lambda: seen.append(loader.last_error(lib)))
    thread.start()
    thread.join()
    assert seen == [""] and "mode" in loader.last_error(lib)


def test_version(lib):
    assert lib.es_dual_version().decode().count(".") == 2


# --- Python side -----------------------------------------------------------------------------------------

def test_library_is_usable(library_file):
    from es_dual.cutlass.launch import library_reasons

    assert library_reasons() == []


def test_build_reuses_the_cache(library_file):
    """A second build call finds the cached library: no compiler runs."""
    if build.can_build():
        pytest.skip("this machine cannot build (it uses a library built elsewhere): " + "; ".join(build.can_build()))
    if build.exact_library() is None:
        pytest.skip("the library in use was built by another nvcc")
    before = library_file.stat().st_mtime_ns
    assert build.build_library() == library_file
    assert library_file.stat().st_mtime_ns == before
    info = json.loads((library_file.parent / "build.json").read_text())
    assert info["source_key"] == build.source_key()
    assert os.path.basename(str(library_file)) == build.LIB_NAME
