"""The profiling tools in benchmarks/: ncu_stalls.py (stall samples by class, a barrier's samples taken
from the control instruction a waiting warp is sampled on) and kblock_sass.py (instructions per K block)."""
import csv
import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "ncu_stalls.py"
spec = importlib.util.spec_from_file_location("ncu_stalls", SCRIPT)
ncu_stalls = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ncu_stalls)


def write_csv(path, rows):
    """A SASS CSV as ncu writes it: the kernel name line, the header, one row per instruction."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Kernel Name", "void k()", ""])
        w.writerow(["Address", "Source", "Warp Stall Sampling (All Samples)", "Instructions Executed",
                    "stall_barrier", "stall_barrier (Not Issued)"])
        for i, (source, samples, executed) in enumerate(rows):
            w.writerow([hex(i * 16), source, str(samples), str(executed), str(samples), "0"])


def test_classes_and_barrier_attribution(tmp_path):
    rows = [
        ("SYNCS.PHASECHK.TRANS64.TRYWAIT P0, [UR8+0x380a0], R24", 1, 10),
        ("@!P0  BRA 0x100", 40, 10),                      # the try-wait loop: mbarrier
        ("QGMMA.64x192x32.F32.E4M3.E4M3 R24, gdesc[UR12], RZ, !UPT", 5, 10),
        ("WARPGROUP.DEPBAR.LE gsb0, 0x0", 30, 10),
        ("FFMA R1, R2, R3, R1", 7, 10),
        ("BAR.SYNC.DEFER_BLOCKING 0x4, 0x140", 0, 10),
        ("IMAD R14, R3, R6, R2", 2, 10),
        ("BSSY B1, 0x200", 15, 10),                       # blocks for the BAR.SYNC above: named barrier
        ("@P1  BRA 0x300", 0, 10),
    ]
    path = tmp_path / "k.sass.csv"
    write_csv(path, rows)
    kernel, read = ncu_stalls.read(str(path))
    assert kernel == "void k()" and [r[1] for r in read] == [r[1] for r in rows]
    assert all(r[3] == {"barrier": r[1]} for r in read)  # the reasons, without the not-issued columns
    assert ncu_stalls.opcode("@!P0  BRA 0x100") == "BRA" and ncu_stalls.opcode("FFMA R1, R2") == "FFMA"
    assert ncu_stalls.classes(read) == ["mbarrier", "mbarrier", "WGMMA issue", "WGMMA wait", "promotion math",
                                        "named barrier", "other", "named barrier", "named barrier"]
    far = [("BAR.SYNC 0x1, 0x100",)] + [("IMAD R1, R1, R1, RZ",)] * ncu_stalls.WINDOW + [("BSSY B1, 0x0",)]
    assert ncu_stalls.classes(far)[-1] == "other"  # past the window: not the barrier's


SASS = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   SYNCS.PHASECHK.TRANS64.TRYWAIT P0, [UR8+0x380a0], R24 ;
        /*0020*/                   QGMMA.64x192x32.F32.E4M3.E4M3 R24, gdesc[UR12], RZ, !UPT ;
        /*0030*/                   QGMMA.64x192x32.F32.E4M3.E4M3 R24, gdesc[UR16], R24, gsb0 ;
        /*0040*/                   WARPGROUP.DEPBAR.LE gsb0, 0x0 ;
        /*0050*/                   FFMA R133, R24, R206, R133 ;
        /*0060*/                   QGMMA.64x192x32.F32.E4M3.E4M3 R24, gdesc[UR12], RZ, !UPT ;
        /*0070*/                   WARPGROUP.DEPBAR.LE gsb0, 0x0 ;
        /*0080*/                   FFMA R133, R24, R206, R133 ;
        /*0090*/              @!P1 BRA 0x10 ;
        /*00a0*/                   EXIT ;
        /*00b0*/                   BRA 0x0 ;
"""


def test_kblock_sass_counts_the_innermost_k_loop(tmp_path):
    """benchmarks/kblock_sass.py: a backward branch over WGMMA waits is a K loop, its count per block is
    its body over its waits; the branch back over the whole kernel (a retry path) is not the K loop."""
    spec = importlib.util.spec_from_file_location("kblock_sass", SCRIPT.with_name("kblock_sass.py"))
    kblock = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kblock)
    path = tmp_path / "k.sass"
    path.write_text(SASS)
    ins = kblock.instructions(str(path), tool="unused")
    assert ins[0] == (0, "MOV R1, c[0x0][0x28]") and ins[-1] == (0xB0, "BRA 0x0")
    loops = kblock.k_loops(ins, "64x192x32")
    assert len(loops) == 1
    waits, counts = loops[0]
    assert waits == 2 and sum(counts.values()) == 9 and counts["QGMMA"] == 3 and counts["FFMA"] == 2
    assert kblock.k_loops(ins, "64x96x32") == []


def test_native_ablate_builds_and_its_switches_remove_their_part(tmp_path):
    """benchmarks/native_ablate.sh builds native_mc's kernel once per set of Ablate bits: bits 0 is the
    library's kernel (its WGMMAs and promotion FFMAs), bit 32 leaves the math out (neither)."""
    import os
    import subprocess

    import pytest

    from es_dual.cutlass import build

    if build.can_build() or build.find_cuobjdump() is None:
        pytest.skip("needs nvcc, the CUTLASS headers and cuobjdump")
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, ES_DUAL_CACHE_DIR=str(tmp_path), ABLATE_SETS="0 32")
    subprocess.run(["bash", "benchmarks/native_ablate.sh", "build"], cwd=root, env=env, check=True,
                   capture_output=True)

    def counts(bits):
        sass = subprocess.run([build.find_cuobjdump(), "-sass", str(tmp_path / "native_ablate" / f"bits-{bits}")],
                              capture_output=True, text=True, check=True).stdout
        return sass.count("FFMA"), sass.count("QGMMA")

    (ffma_all, qgmma_all), (ffma_none, qgmma_none) = counts(0), counts(32)
    assert qgmma_all > 0 and ffma_all >= 96, (qgmma_all, ffma_all)  # 96 FFMA per K block of the 128 x 192 kind
    assert qgmma_none == 0 and ffma_none < ffma_all // 4, (qgmma_none, ffma_none)
