"""The public workloads of DESIGN.md, extra ones that check generality, and the routing distributions
that fill them."""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from ..problem import SCALE_BLOCK, cdiv
from ..quant import quantize_fp8_per_block, quantize_fp8_per_token_group

SEED_SKEW_RANGES = ((0.7, 1, 32), (0.85, 32, 64), (0.95, 64, 128), (1.0, 128, 1024))  # (r <=, lo, hi)


def seed_skew(num_experts: int, seed: int = 28) -> list[int]:
    """The seed benchmark's routing: 8192 draws of r, then one count per r from its range, first E kept."""
    rng = random.Random(seed)
    draws = [rng.random() for _ in range(8192)]
    counts = [rng.randint(*next((lo, hi) for bound, lo, hi in SEED_SKEW_RANGES if r <= bound)) for r in draws]
    return counts[:num_experts]


def uniform(num_experts: int, tokens: int, seed: int = 28) -> list[int]:
    """Each expert draws uniformly in [0, 2 * tokens]: mean `tokens`, some experts empty."""
    rng = random.Random(seed)
    return [rng.randint(0, 2 * tokens) for _ in range(num_experts)]


def balanced(num_experts: int, tokens: int) -> list[int]:
    return [tokens] * num_experts


def zipf(num_experts: int, tokens: int, seed: int = 28, exponent: float = 1.2) -> list[int]:
    """num_experts * tokens tokens spread with Zipf weights over a random order of experts."""
    rng = random.Random(seed)
    weights = [1.0 / (i + 1) ** exponent for i in range(num_experts)]
    rng.shuffle(weights)
    total = num_experts * tokens
    return [int(total * w / sum(weights)) for w in weights]


def one_hot(num_experts: int, tokens: int) -> list[int]:
    """All num_experts * tokens tokens on expert 0."""
    return [num_experts * tokens] + [0] * (num_experts - 1)


DISTRIBUTIONS = {
    "seed_skew": lambda e, t: seed_skew(e),
    "uniform": uniform,
    "balanced": balanced,
    "zipf": zipf,
    "one_hot": one_hot,
}


@dataclass(frozen=True)
class Workload:
    name: str
    n: int
    k: int
    counts: tuple[int, ...]

    @property
    def num_experts(self) -> int:
        return len(self.counts)

    @property
    def total_m(self) -> int:
        return sum(self.counts)

    def flops(self) -> int:
        return 2 * self.total_m * self.n * self.k

    def bytes(self, out_bytes: int = 2) -> int:
        """The fewest bytes a kernel must move: A, the weights of experts with tokens, both scale tensors
        (the weight scales of those experts), the output."""
        active = sum(1 for c in self.counts if c)
        groups_k, groups_n = cdiv(self.k, SCALE_BLOCK), cdiv(self.n, SCALE_BLOCK)
        return (
            self.total_m * self.k
            + active * self.n * self.k
            + 4 * self.total_m * groups_k
            + 4 * active * groups_n * groups_k
            + out_bytes * self.total_m * self.n
        )

    def make_inputs(self, device, seed: int = 0) -> dict:
        """Quantized random inputs on `device` (generated there: the big weights never cross PCIe)."""
        g = torch.Generator(device=device).manual_seed(seed)
        x = torch.randn(self.total_m, self.k, generator=g, device=device, dtype=torch.bfloat16)
        a, a_scale = quantize_fp8_per_token_group(x)
        del x
        b = torch.empty(self.num_experts, self.n, self.k, dtype=torch.float8_e4m3fn, device=device)
        b_scale = torch.empty(self.num_experts, cdiv(self.n, SCALE_BLOCK), cdiv(self.k, SCALE_BLOCK), device=device)
        for e in range(self.num_experts):  # one expert at a time keeps the float32 temporaries small
            w = torch.randn(self.n, self.k, generator=g, device=device, dtype=torch.bfloat16)
            b[e], b_scale[e] = quantize_fp8_per_block(w)
        offsets = torch.tensor([0] + self.counts_cumsum(), dtype=torch.int32, device=device)
        return dict(a=a, a_scale=a_scale, b=b, b_scale=b_scale, expert_offsets=offsets)

    def counts_cumsum(self) -> list[int]:
        out, total = [], 0
        for c in self.counts:
            total += c
            out.append(total)
        return out


def _public(name, n, k, experts, dist, tokens=0) -> Workload:
    return Workload(name, n, k, tuple(DISTRIBUTIONS[dist](experts, tokens)))


PUBLIC_WORKLOADS = (
    _public("ds_gateup_prefill", 512, 7168, 256, "seed_skew"),
    _public("ds_down_prefill", 7168, 256, 256, "seed_skew"),
    _public("qwen_gateup", 768, 4096, 128, "seed_skew"),
    _public("qwen_down", 4096, 384, 128, "seed_skew"),
    _public("ds_decode_ep8", 4096, 7168, 32, "seed_skew"),
    _public("ds_decode_ep16", 4096, 7168, 16, "seed_skew"),
    _public("balanced_big", 4096, 7168, 8, "balanced", 4096),
    _public("decode_uniform8", 4096, 7168, 32, "balanced", 8),
)

# Shapes and routings beyond the public eight, to check that a result is not tuned to them. Each name says
# the model or shape and the routing.
EXTRA_WORKLOADS = (
    # DeepSeek-R1 decode shape with every token of a 512-token batch on one expert (a hot expert).
    _public("ds_decode_ep8_one_hot512", 4096, 7168, 32, "one_hot", 16),
    # Qwen3-235B gate-up with Zipf-skewed counts; 45 tokens per expert on average gives qwen_gateup's total.
    _public("qwen_gateup_zipf", 768, 4096, 128, "zipf", 45),
    # DeepSeek-R1 gate-up at decode: every one of 256 experts gets exactly one token.
    _public("ds_gateup_ones256", 512, 7168, 256, "balanced", 1),
    # Mixtral-8x7B-like gate (or up) projection: 8 big experts, 512 tokens each.
    _public("mixtral_gateup_balanced512", 14336, 4096, 8, "balanced", 512),
    # Qwen3-30B-A3B (and Kimi-style small-expert) gate-up and down: hidden 2048, 768 per expert, E=128.
    _public("qwen3_30b_gateup", 1536, 2048, 128, "seed_skew"),
    _public("qwen3_30b_down", 2048, 768, 128, "seed_skew"),
    # DeepSeek-R1 down projection at TP4: k=512.
    _public("ds_down_tp4_prefill", 7168, 512, 256, "seed_skew"),
)

WORKLOAD_SETS = {"public": PUBLIC_WORKLOADS, "extra": EXTRA_WORKLOADS, "all": PUBLIC_WORKLOADS + EXTRA_WORKLOADS}

# The same shapes' character at a size the CPU (reference, Triton interpreter) finishes in seconds.
CPU_WORKLOADS = (
    Workload("cpu_gateup_skew", 256, 512, tuple(min(c, 48) for c in seed_skew(16))),
    Workload("cpu_down_skew", 512, 256, tuple(min(c, 48) for c in seed_skew(16))),
    Workload("cpu_balanced", 256, 512, (64,) * 4),
    Workload("cpu_decode8", 512, 512, (8,) * 8),
)
