"""benchmarks/ncu_stalls.py: stall samples by class, with a barrier's samples taken from the control
instruction a waiting warp is sampled on."""
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
