"""Condense a compute-sanitizer log: its summary line, then each kind of report counted by where it happened.

Kernel names are shortened (CUTLASS's run to thousands of characters): a CUTLASS grouped GEMM becomes its
MMA atom, mainloop stage count and cluster shape; anything else keeps its name up to the first '<' or '('.
Usage: python benchmarks/sanitizer_report.py LOG [LOG ...]
"""
import collections
import re
import sys

PREFIX = "========= "
CUTLASS = re.compile(r"Blockwise<(\d+), cute::tuple<cute::C<(\d+)>, cute::C<(\d+)>.*?(MMA_\d+x\d+x\d+)")
SITE = re.compile(r"(?:at|access at) (.+?)\+(0x[0-9a-f]+)")


def short_kernel(name: str) -> str:
    m = CUTLASS.search(name)
    if m:
        stages, cm, cn, mma = m.groups()
        return f"cutlass[{mma} stages={stages} cluster={cm}x{cn}]"
    name = re.sub(r"^(void|static|__global__)\s+", "", name.strip())
    return re.split(r"[<(]", name, maxsplit=1)[0]


def records(lines):
    """The log's reports: each starts at an unindented line after the prefix, indented lines continue it."""
    current = None
    for line in lines:
        if not line.startswith(PREFIX):
            continue
        body = line[len(PREFIX):].rstrip("\n")
        if body.startswith("    ") and current is not None:
            current.append(body.strip())
        else:
            if current:
                yield current
            current = [body.strip()]
    if current:
        yield current


def describe(record) -> str:
    kind = re.sub(r"0x[0-9a-f]+|\d+", "N", re.split(r" (?:access )?at ", record[0], maxsplit=1)[0])
    sites = [f"{short_kernel(k)}+{off}" for line in record for k, off in SITE.findall(line)]
    return f"{kind} | {' / '.join(dict.fromkeys(sites)) or '-'}"


def main(paths):
    for path in paths:
        with open(path, errors="replace") as f:
            lines = f.readlines()
        summary = [l.strip() for l in lines if "ERROR SUMMARY" in l or "RACECHECK SUMMARY" in l]
        print(f"== {path}: {summary[-1] if summary else 'no summary line'}")
        counts, example = collections.Counter(), {}
        for rec in records(lines):
            if rec[0].startswith(("ERROR SUMMARY", "RACECHECK SUMMARY", "COMPUTE-SANITIZER", "Saved host",
                                  "Target application", "Program hit")):
                continue
            key = describe(rec)
            counts[key] += 1
            example.setdefault(key, rec)
        for key, n in counts.most_common(12):
            print(f"  {n:6d} x {key}")
            for line in example[key][1:6]:
                print(f"           {SITE.sub(lambda m: f'at {short_kernel(m.group(1))}+{m.group(2)}', line)[:160]}")


if __name__ == "__main__":
    main(sys.argv[1:])
