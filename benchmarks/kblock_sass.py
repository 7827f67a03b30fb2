"""Instructions per K block in a kernel's SASS, by opcode: what each math warp issues per K block in the
K loops (es_dual's wide kind, DeepGEMM's), for comparing them without a GPU (docs/perf-notes.md,
2026-12-07). A K loop is a backward branch whose body waits for WGMMAs (`WARPGROUP.DEPBAR.LE gsb0, 0x0`)
and issues WGMMAs; its per-block count is the body's instructions over its waits (DeepGEMM unrolls its K
loop, es_dual's runs one block per iteration). Paths out of the body (an mbarrier's slow retry loop, the
tile's end) are not counted; loops through such paths (their bodies hold the tile's epilogue or the
unrolled loop's remainder) are left out: only loops within 1.5x of the leanest one's count are printed.

python benchmarks/kblock_sass.py [FILE ...] [--deepgemm SRC]
    FILE               a .o, .cubin or .so (read with cuobjdump -sass), or a .sass / .txt file of SASS
    --deepgemm SRC     also DeepGEMM's SM90 1D2D kernel, compiled here (nvcc, sm_90a) from its source
                       (SRC: .peers/deepgemm/src) as its JIT instantiates it for balanced_big's masked
                       call on 132 SMs: 128 x 192 tiles, 4 stages, 2-CTA multicast, n and k compiled in
    --gmma 64x192x32   only loops that issue a WGMMA of this shape (the kind to compare)
    --cuobjdump PATH   (default: es_dual.cutlass.build.find_cuobjdump(): Triton's, beside nvcc, on PATH)
"""
import argparse
import collections
import re
import subprocess
from pathlib import Path

from es_dual.cutlass import build

WAIT = "WARPGROUP.DEPBAR.LE gsb0, 0x0"


def instructions(path: str, tool: str) -> list[tuple[int, str]]:
    """(address, instruction) of every kernel in `path`, in order, without encodings."""
    text = Path(path).read_text() if path.endswith((".sass", ".txt")) else \
        subprocess.run([tool, "-sass", path], check=True, capture_output=True, text=True).stdout
    out = []
    for line in text.splitlines():
        m = re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", line)
        if m:
            out.append((int(m.group(1), 16), m.group(2)))
    return out


DEEPGEMM_INSTANCE = """#include <deep_gemm/impls/sm90_fp8_gemm_1d2d.cuh>
using namespace deep_gemm;
void* instance = reinterpret_cast<void*>(&sm90_fp8_gemm_1d2d_impl<
    cute::UMMA::Major::K, 0, 4096, 7168, 8, 128, 192, 128, 128, 128, 128, 4, 128, 256, 2, false, 132,
    GemmType::MGroupedMasked, cutlass::bfloat16_t, epilogue::transform::EpilogueIdentity>);
"""


def compile_deepgemm(src: str, out_dir: str) -> str:
    """DeepGEMM's kernel for balanced_big's masked call as a cubin in out_dir (its template arguments as
    its JIT writes them: major SFB, m n k, groups, block m n k, swizzles, stages, TMA and math threads,
    multicast, multicast on A, SMs, GEMM type, output type, epilogue)."""
    unit, cubin = Path(out_dir) / "deepgemm_1d2d.cu", Path(out_dir) / "deepgemm_1d2d.cubin"
    unit.write_text(DEEPGEMM_INSTANCE)
    include = [f"-I{Path(src) / 'deep_gemm' / 'include'}"] + [f"-I{d}" for d in build.cutlass_include_dirs() or []]
    flags = ["-std=c++20" if f == "-std=c++17" else f for f in build.COMPILE_FLAGS]  # the library's, C++20 for DeepGEMM
    subprocess.run([build.find_nvcc() or "nvcc", *flags, "-w", "-cubin", *include, "-o", str(cubin), str(unit)], check=True)
    return str(cubin)


def opcode(ins: str) -> str:
    words = ins.split()
    op = words[1] if words[0].startswith("@") else words[0]
    return op.split(".")[0]


def k_loops(ins: list[tuple[int, str]], gmma: str | None) -> list[tuple[int, collections.Counter]]:
    """(waits, opcode counts) of each innermost loop body that waits for and issues WGMMAs (of shape
    `gmma`, if given): a backward `BRA`, its body from the target to the branch, with no such loop inside
    it (an mbarrier's out-of-line retry path also branches back, over far more than the loop)."""
    index = {address: i for i, (address, _) in enumerate(ins)}
    spans = []
    for i, (address, text) in enumerate(ins):
        m = re.search(r"\bBRA (?:`\(\.L_x_\d+\) )?0x([0-9a-f]+)", text)
        if opcode(text) != "BRA" or not m or int(m.group(1), 16) >= address or int(m.group(1), 16) not in index:
            continue
        body = [t for _, t in ins[index[int(m.group(1), 16)]:i + 1]]
        if any(t.startswith(WAIT) for t in body) and any("GMMA" in t and (gmma is None or f".{gmma}." in t) for t in body):
            spans.append((index[int(m.group(1), 16)], i))
    innermost = [(a, b) for a, b in spans if not any(a <= c and d <= b and (c, d) != (a, b) for c, d in spans)]
    out = []
    for a, b in innermost:
        body = [t for _, t in ins[a:b + 1]]
        out.append((sum(t.startswith(WAIT) for t in body), collections.Counter(opcode(t) for t in body)))
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("files", nargs="*")
    parser.add_argument("--deepgemm", metavar="SRC")
    parser.add_argument("--gmma")
    parser.add_argument("--cuobjdump", default=None)
    args = parser.parse_args()
    tool = args.cuobjdump or build.find_cuobjdump()
    files = list(args.files)
    if args.deepgemm:
        import tempfile

        files.append(compile_deepgemm(args.deepgemm, tempfile.mkdtemp()))
    for path in files:
        loops = k_loops(instructions(path, tool), args.gmma)
        lean = min((sum(c.values()) / w for w, c in loops), default=0)
        loops = [(w, c) for w, c in loops if sum(c.values()) / w <= 1.5 * lean]
        print(f"== {path}: {len(loops)} K loop(s)" + (f" with {args.gmma} WGMMAs" if args.gmma else ""))
        for waits, counts in loops:
            per_block = {op: n / waits for op, n in counts.items()}
            top = ", ".join(f"{op} {n:g}" for op, n in sorted(per_block.items(), key=lambda kv: -kv[1]))
            print(f"   {sum(per_block.values()):6.1f} instructions per K block ({waits} per iteration): {top}")


if __name__ == "__main__":
    main()
