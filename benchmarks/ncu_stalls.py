"""Where a kernel's warps spend their stall samples, from the SASS CSV of benchmarks/ncu_compare.sh.

python benchmarks/ncu_stalls.py DIR/native_mc_balanced_big.sass.csv [more.sass.csv ...] [--top 12]

Per file: the samples (ncu's "Warp Stall Sampling (All Samples)") summed by instruction class, each as a
share of the kernel's samples with its most frequent stall reasons (ncu's stall_* columns: dispatch,
selected, short_sb, ...), and the instructions with the most samples. The classes name what a warp
waits for when it sits on that instruction: its own WGMMAs (WARPGROUP.DEPBAR), an mbarrier (SYNCS: a
stage's data or a free stage), a named barrier (BAR), the WGMMA issue (QGMMA/HGMMA), the promotion's
arithmetic (FFMA/FMUL), shared-memory loads (LDS), everything else. A warp that waits at a barrier is
sampled on a control instruction after it (the branch of an mbarrier's try-wait loop; the BSSY that a
BAR.SYNC.DEFER_BLOCKING blocks at, a few instructions later), so a branch or BSSY within WINDOW
instructions after a wait counts for that wait.
"""
import argparse
import csv

CLASSES = (  # (class, opcode prefixes), first match wins
    ("WGMMA wait", ("WARPGROUP.DEPBAR",)),
    ("WGMMA issue", ("QGMMA", "HGMMA", "WARPGROUP.ARRIVE")),
    ("mbarrier", ("SYNCS",)),
    ("named barrier", ("BAR.",)),
    ("promotion math", ("FFMA", "FMUL", "FADD")),
    ("shared loads", ("LDS", "LDSM")),
)


def opcode(source: str) -> str:
    """The instruction's opcode without its predicate (`@!P0 BRA ...` -> `BRA`)."""
    words = source.split()
    return words[1] if words and words[0].startswith("@") and len(words) > 1 else (words[0] if words else "")


WAITS = ("SYNCS.PHASECHK", "BAR.SYNC")  # waits whose stalls are sampled on a later control instruction
CONTROL = ("BRA", "BSSY", "BSYNC")
WINDOW = 8


def class_of(op: str) -> str:
    return next((name for name, prefixes in CLASSES if op.startswith(prefixes)), "other")


def classes(rows) -> list[str]:
    """Each row's class; a control instruction shortly after a wait takes the wait's class."""
    ops = [opcode(row[0]) for row in rows]
    out, last_wait = [], None  # (index, opcode) of the latest wait
    for i, op in enumerate(ops):
        if op.startswith(WAITS):
            last_wait = (i, op)
        inherits = op.startswith(CONTROL) and last_wait is not None and i - last_wait[0] <= WINDOW
        out.append(class_of(last_wait[1] if inherits else op))
    return out


def read(path: str) -> tuple[str, list[tuple[str, int, int, dict[str, int]]]]:
    """(kernel name, [(source, samples, executed, {stall reason: samples})]) of one SASS CSV (the kernel
    name line, the header, one row per instruction)."""
    with open(path) as f:
        rows = list(csv.reader(f))
    header = rows[1]
    src, samples, executed = (header.index(c) for c in ("Source", "Warp Stall Sampling (All Samples)",
                                                        "Instructions Executed"))
    reasons = {c.removeprefix("stall_"): i for i, c in enumerate(header)
               if c.startswith("stall_") and not c.endswith("(Not Issued)")}
    as_int = lambda v: int(v) if v.isdigit() else 0  # noqa: E731
    return rows[0][1], [(r[src].strip(), as_int(r[samples]), as_int(r[executed]),
                         {name: as_int(r[i]) for name, i in reasons.items()}) for r in rows[2:]]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("files", nargs="+")
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    for path in args.files:
        kernel, rows = read(path)
        total = sum(row[1] for row in rows) or 1
        print(f"== {path}\n   {kernel[:150]}\n   {total} samples, {sum(row[2] for row in rows)} warp instructions")
        by_class: dict[str, dict[str, int]] = {}  # class -> stall reason -> samples
        share: dict[str, int] = {}                # class -> samples
        for row, cls in zip(rows, classes(rows)):
            share[cls] = share.get(cls, 0) + row[1]
            reasons = by_class.setdefault(cls, {})
            for reason, n in row[3].items():
                reasons[reason] = reasons.get(reason, 0) + n
        for cls in sorted(by_class, key=lambda c: -share[c]):
            top = sorted(by_class[cls].items(), key=lambda kv: -kv[1])[:4]
            why = ", ".join(f"{reason} {100 * n / (sum(by_class[cls].values()) or 1):.0f} %" for reason, n in top)
            print(f"   {cls:<16} {100 * share[cls] / total:5.1f} %   ({why})")
        print("   top instructions (samples, executed):")
        for source, samples, executed, _ in sorted(rows, key=lambda r: -r[1])[:args.top]:
            print(f"   {100 * samples / total:5.1f} % {executed:>11}  {source[:80]}")


if __name__ == "__main__":
    main()
