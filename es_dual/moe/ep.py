"""Expert parallelism: each rank of a torch.distributed group holds an even share of the experts, and the
tokens travel to the ranks of their experts and back.

    dispatch  each rank sends every token once to each rank that holds one of its experts: the hidden
              row, its top-k ids (of the whole model) and weights      all_to_all_single, 3 tensors
    local     fused_moe_fp8 on what arrived, with the rank's expert range: pairs routed elsewhere add
              nothing, so each arrived token gets the sum over its experts held here
    combine   the partial outputs go back the same way, and each token sums its partials over the ranks
              (float32, in rank order, then bf16)                       all_to_all_single, 1 tensor

all_to_all_single takes its split sizes as host integers, so the call reads on the host how many tokens go
to each rank and how many arrive (one exchange of counts, then a device-to-host copy): that one host
synchronization per call is unavoidable with this collective. The ranks' calls must be collective (every
rank calls, with the same weights' shapes).

The result equals the single-device layer on the same tokens within the layer's tolerance: each rank
rounds its partial sum to bf16 before the combine, where the single-device layer rounds the whole sum once.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist

from .layer import fused_moe_fp8


def expert_range(num_experts: int, rank: int, world_size: int) -> tuple[int, int]:
    """[first, end) of the experts rank `rank` holds when num_experts are split evenly over world_size."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank: expected 0 <= rank < world_size = {world_size}, got {rank}")
    if num_experts % world_size:
        raise ValueError(f"num_experts: expected a multiple of the world size {world_size}, got {num_experts}")
    share = num_experts // world_size
    return rank * share, (rank + 1) * share


def _exchange(tensor: torch.Tensor, send_counts: list[int], recv_counts: list[int], group) -> torch.Tensor:
    """Rows of `tensor` grouped by destination (send_counts each) -> the rows arriving from each rank."""
    out = tensor.new_empty((sum(recv_counts), *tensor.shape[1:]))
    dist.all_to_all_single(out, tensor.contiguous(), recv_counts, send_counts, group=group)
    return out


class Dispatched(NamedTuple):
    """What dispatch() hands to the local layer and keeps for combine()."""

    hidden: torch.Tensor        # (arrived tokens, H) bfloat16
    topk_ids: torch.Tensor      # (arrived tokens, topk), ids of the whole model
    topk_weights: torch.Tensor  # (arrived tokens, topk)
    send_token: torch.Tensor    # this rank's token of each row it sent, grouped by destination rank
    send_counts: list[int]
    recv_counts: list[int]
    tokens: int                 # this rank's tokens


def dispatch(hidden, topk_weights, topk_ids, local_experts: int, group=None) -> Dispatched:
    """Send every token once to each rank that holds one of its experts (ranks hold local_experts each):
    the counts exchanged, read on the host (the one synchronization), then hidden, ids and weights."""
    world = dist.get_world_size(group)
    # dest[t, r]: token t has an expert on rank r (ids outside the model go nowhere)
    owner = torch.div(topk_ids, local_experts, rounding_mode="floor")
    valid = (topk_ids >= 0) & (owner < world)
    ranks = torch.arange(world, device=hidden.device)
    dest = ((owner[:, :, None] == ranks) & valid[:, :, None]).any(dim=1)
    send_rank, send_token = dest.t().nonzero(as_tuple=True)  # grouped by destination rank, tokens in order
    send_counts_dev = torch.bincount(send_rank, minlength=world)
    recv_counts_dev = torch.empty_like(send_counts_dev)
    dist.all_to_all_single(recv_counts_dev, send_counts_dev, group=group)
    send_counts, recv_counts = send_counts_dev.tolist(), recv_counts_dev.tolist()  # the host sync
    arrived = [_exchange(t[send_token], send_counts, recv_counts, group) for t in (hidden, topk_ids, topk_weights)]
    return Dispatched(arrived[0], arrived[1], arrived[2], send_token, send_counts, recv_counts, hidden.shape[0])


def local_layer(d: Dispatched, w13, w13_scale, w2, w2_scale, *, group=None, backend="auto") -> torch.Tensor:
    """fused_moe_fp8 on the arrived tokens with this rank's expert range: each arrived token's sum over its
    experts held here, (arrived tokens, H) bfloat16."""
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    first, _ = expert_range(w13.shape[0] * world, rank, world)
    return fused_moe_fp8(d.hidden, w13, w13_scale, w2, w2_scale, d.topk_weights, d.topk_ids, backend=backend,
                         first_expert=first)


def combine(d: Dispatched, partial: torch.Tensor, group=None) -> torch.Tensor:
    """The partial outputs back to the ranks they came from; each token sums its partials (float32, in rank
    order, then bf16): this rank's (T, H) bfloat16 output."""
    back = _exchange(partial, d.recv_counts, d.send_counts, group)
    out = torch.zeros(d.tokens, partial.shape[1], dtype=torch.float32, device=partial.device)
    out.index_add_(0, d.send_token, back.float())  # partials in rank order (send_token is grouped by rank)
    return out.to(torch.bfloat16)


def ep_fused_moe_fp8(hidden, w13, w13_scale, w2, w2_scale, topk_weights, topk_ids, *, group=None,
                     backend="auto") -> torch.Tensor:
    """fused_moe_fp8 for a model whose experts are split evenly over the ranks of `group` (default: the
    world): w13, w13_scale, w2 and w2_scale hold this rank's experts (expert_range), topk_ids name experts
    of the whole model (E * world_size); hidden, topk_weights and topk_ids are this rank's tokens.
    Returns this rank's (T, H) bfloat16 output. Ids outside the model's experts contribute nothing.
    dispatch -> local_layer -> combine, each callable on its own (to time the steps)."""
    d = dispatch(hidden, topk_weights, topk_ids, w13.shape[0], group)
    return combine(d, local_layer(d, w13, w13_scale, w2, w2_scale, group=group, backend=backend), group)
