"""Every Triton kernel of es_dual compiles for sm_90 (Hopper), checked here without a GPU: CI runs the kernels
only in the interpreter, which does not go through Triton's compiler. triton.compile with a 9.0 target runs
the whole pipeline to a cubin (Triton's own ptxas) on the CPU."""
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent('''
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from es_dual.moe import decode_kernels as decode, kernels as moe
    from es_dual.triton_ref.kernel import grouped_gemm_fp8_kernel, grouped_gemm_fp8_two_kinds_kernel as two_kinds_kernel

    def compile_for_sm90(fn, types, constants, **options):
        signature = {n: "constexpr" if n in constants else types.get(n, "i32") for n in fn.arg_names}
        constexprs = {(fn.arg_names.index(n),): v for n, v in constants.items()}
        triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                       target=GPUTarget("cuda", 90, 32), options=options)

    gemm = dict(a_ptr="*fp8e4nv", a_scale_ptr="*fp32", b_ptr="*fp8e4nv", b_scale_ptr="*fp32", offsets_ptr="*i32",
                out_ptr="*bf16")
    for masked, gather in ((False, False), (True, False), (False, True)):
        for persistent in (False, True):
            for upcast in (False, True):
                compile_for_sm90(grouped_gemm_fp8_kernel, dict(gemm, row_index_ptr="*i32" if gather else "i32"), dict(
                    BLOCK_M=64, BLOCK_N=128, BLOCK_K=128, SCALE_BLOCK=128, EXPERT_CHUNK=128, PERSISTENT=persistent,
                    RESIDENT_SCHEDULE=persistent and not upcast, EVEN_K=not masked, UPCAST=upcast, SOFTWARE_BF16_ROUNDING=False, MASKED=masked,
                    ROW_GROUP=0 if persistent else 8, GATHER=gather),
                    num_warps=4, num_stages=4)
    for upcast in (False, True):
        compile_for_sm90(two_kinds_kernel, gemm, dict(
            BLOCK_M_LARGE=128, BLOCK_M_SMALL=16, BLOCK_N=128, BLOCK_K=128, SCALE_BLOCK=128, EXPERT_CHUNK=128,
            EVEN_K=True, UPCAST=upcast, SOFTWARE_BF16_ROUNDING=False, MASKED=False), num_warps=8,
            num_stages=3)
    compile_for_sm90(moe.route_kernel, dict(ids_ptr="*i64", offsets_ptr="*i32", pair_rows_ptr="*i32"),
                     dict(QUERIES=32, CHUNK=256), num_warps=4)
    compile_for_sm90(moe.route_place_kernel,
                     dict(ids_ptr="*i64", chunk_offsets_ptr="*i32", offsets_ptr="*i32", pair_rows_ptr="*i32"),
                     dict(BINS=512, CHUNK=1024, CHUNKS_STEP=8), num_warps=8)
    compile_for_sm90(moe.quantize_scatter_kernel,
                     dict(hidden_ptr="*bf16", pair_rows_ptr="*i32", offsets_ptr="*i32", q_ptr="*fp8e4nv",
                          scale_ptr="*fp32"), dict(GROUP=128, BLOCK_UNITS=8, INTERPRETER=False))
    compile_for_sm90(moe.quantize_gather_kernel,
                     dict(hidden_ptr="*bf16", pair_rows_ptr="*i32", offsets_ptr="*i32", q_ptr="*fp8e4nv",
                          scale_ptr="*fp32", row_index_ptr="*i32"), dict(GROUP=128, BLOCK_UNITS=8, INTERPRETER=False))
    compile_for_sm90(moe.silu_mul_quantize_kernel,
                     dict(gate_up_ptr="*bf16", offsets_ptr="*i32", q_ptr="*fp8e4nv", scale_ptr="*fp32"),
                     dict(GROUP=128, BLOCK_UNITS=8, INTERPRETER=False))
    compile_for_sm90(moe.unpermute_sum_kernel,
                     dict(down_ptr="*bf16", pair_rows_ptr="*i32", topk_ids_ptr="*i32", topk_weights_ptr="*fp32",
                          out_ptr="*bf16"), dict(BLOCK_T=1, BLOCK_H=1024, INTERPRETER=False))
    gate_up = dict(hidden_ptr="*bf16", topk_ids_ptr="*i32", w_ptr="*fp8e4nv", w_scale_ptr="*fp32",
                   partial_ptr="*fp32")
    for overlap in (False, True):
        compile_for_sm90(decode.decode_gate_up_kernel, gate_up,
                         dict(BLOCK_N=64, GROUP=128, KG=4, SPLIT_GROUPS=8, OVERLAP=overlap, INTERPRETER=False),
                         num_warps=4, num_stages=1)
        compile_for_sm90(decode.decode_gate_up_mma_kernel, gate_up,
                         dict(BLOCK_N=128, GROUP=128, SPLIT_GROUPS=8, OVERLAP=overlap, INTERPRETER=False),
                         num_warps=4, num_stages=3)
    down = dict(y_ptr="*fp8e4nv", y_scale_ptr="*fp32", topk_ids_ptr="*i64", topk_weights_ptr="*fp32",
                w_ptr="*fp8e4nv", w_scale_ptr="*fp32", out_ptr="*bf16")
    for block_n, i_chunk in ((16, 256), (8, 512)):
        compile_for_sm90(decode.decode_down_kernel, down,
                         dict(BLOCK_N=block_n, GROUP=128, TOPK_BLOCK=8, I_CHUNK=i_chunk, OVERLAP=True, INTERPRETER=False),
                         num_warps=8, num_stages=1)
    for block_n, warps in ((16, 1), (64, 4)):  # the default tensor-core down kernel (from 9 pairs), and WGMMA's
        compile_for_sm90(decode.decode_down_mma_kernel, down,
                         dict(BLOCK_N=block_n, GROUP=128, TOPK_BLOCK=8, OVERLAP=False, INTERPRETER=False),
                         num_warps=warps, num_stages=3)
    compile_for_sm90(decode.decode_silu_mul_quantize_kernel,
                     dict(partial_ptr="*fp32", topk_ids_ptr="*i32", q_ptr="*fp8e4nv", scale_ptr="*fp32"),
                     dict(GROUP=128, BLOCK_UNITS=2, SPLITS_BLOCK=16, INTERPRETER=False))
    print("compiled")
''')


def test_triton_kernels_compile_for_sm90():
    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the decorators must make JIT functions
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "compiled" in done.stdout, done.stderr[-3000:]


HOPPER_SCRIPT = textwrap.dedent('''
    import os, subprocess, tempfile
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource
    from es_dual.triton_ref import hopper

    fn = hopper.large_tile_kernel
    box = "tensordesc<fp8e4nv[128, 128],NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=8, rank=2)>"
    types = dict(a_desc=box, b_desc=box, a_scale_ptr="*fp32", b_scale_ptr="*fp32", offsets_ptr="*i32", out_ptr="*bf16")
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    for masked, partitions in ((False, 1), (True, 1), (False, 2)):
        constants = dict(EXPERT_CHUNK=128, MASKED=masked, ROW_GROUP=8, STAGES=4, MATH_PARTITIONS=partitions)
        signature = {n: "constexpr" if n in constants else types.get(n, "i32") for n in fn.arg_names}
        constexprs = {(fn.arg_names.index(n),): v for n, v in constants.items()}
        compiled = triton.compile(GluonASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs={}),
                                  target=GPUTarget("cuda", 90, 32),
                                  options=dict(num_warps=hopper.MATH_WARPS // partitions))
        with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
            cubin.write(compiled.asm["cubin"])
            cubin.flush()
            sass = subprocess.run([cuobjdump, "-sass", cubin.name], capture_output=True, text=True, check=True).stdout
        print("blocks", partitions, hopper.K_GROUP.value, sass.count("QGMMA"), sass.count("WARPGROUP.DEPBAR"),
              sass.count("STL"))
''')


def test_warp_specialized_tile_compiles_with_its_wgmma_pipeline():
    """hopper.large_tile_kernel compiles for sm_90a, and its math warps wait once per K block (the block's
    promotion overlaps the next block's WGMMAs), not once per WGMMA: ptxas serializes them when registers
    run short (note C7512), which is what the kernel exists to avoid. Each math partition's K loop is a
    round of K_GROUP blocks and a round of one in the code (hopper._math): per block, 4 WGMMAs of 64 rows
    for each of the tile's two warp groups and one wait per partition; no spills."""
    pytest.importorskip("triton.experimental.gluon")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", HOPPER_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    counts = [tuple(map(int, line.split()[1:])) for line in done.stdout.splitlines() if line.startswith("blocks")]
    assert len(counts) == 3  # the contiguous and the masked layout, one or two math partitions
    for partitions, group, wgmmas, waits, spill_stores in counts:
        blocks = group + 1
        assert wgmmas == 4 * blocks * partitions  # four 64 x 128 x 32 WGMMAs per K block of 128
        assert waits == blocks * partitions, f"{waits} WGMMA waits for {blocks} K blocks x {partitions}: serialized"
        assert spill_stores == 0, f"{spill_stores} spill stores"
