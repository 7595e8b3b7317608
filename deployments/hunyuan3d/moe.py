"""Mixture-of-experts feed-forward of the Hunyuan3D-2.1 DiT: top-k of E GELU experts plus a shared expert.

Routing as the official ``MoEGate``: softmax over E gate logits per token, the top-k probabilities kept as
weights (not renormalised). Output = sum_k w_k * expert_k(x) + shared(x).

The official inference path (``moe_infer``) copies per-expert token counts to the host and loops over
experts with data-dependent slices: one host sync per MoE layer per step, which stalls the GPU queue and
breaks CUDA-graph capture. Here both paths are sync-free (no ``.item()``, ``.tolist()``, ``nonzero`` or
boolean-mask indexing; every shape is known from the input shape alone):

- ``grouped``: sort the (token, choice) pairs by expert, run every expert on its own rows with ONE
  ``torch._grouped_mm`` per projection (group offsets stay on the device), unsort, weight, sum the k choices.
  FLOPs = k/E of running every expert on every token, i.e. exactly the routed work. torch supports it for
  bf16 on CUDA (and any float dtype in eager mode on CPU).
- ``dense``: every expert on every token, weighted by a dense (tokens, E) gate matrix that is zero for
  unchosen experts. Exact (a zero weight times a finite output adds exactly 0) but E/k times the routed
  expert FLOPs (4x for top-2 of 8). In the real 2.1 DiT (C 2048, 4,097 tokens, 1,370 context tokens) a MoE
  layer then does 9 instead of 3 feed-forwards' worth of work (shared expert included): ~2.6x that layer,
  ~+75% for the whole DiT step. Used where ``_grouped_mm`` is not available (fp16 on CUDA, torch.compile on
  CPU).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MoEImpl = Literal["auto", "grouped", "dense"]


class GeluProjection(nn.Module):
    """Linear then exact GELU; named ``proj`` as diffusers' ``GELU`` so the official keys load."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.proj(x))


class FeedForward(nn.Module):
    """diffusers ``FeedForward(activation_fn="gelu")`` layout: ``net.0.proj`` in, ``net.1`` dropout, ``net.2`` out."""

    def __init__(self, dim: int, inner_dim: int) -> None:
        super().__init__()
        self.net = nn.ModuleList([GeluProjection(dim, inner_dim), nn.Identity(), nn.Linear(inner_dim, dim, bias=True)])

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class StackedExperts(nn.Module):
    """E GELU MLPs with their weights stacked on a leading expert axis (the loader stacks the official
    ``experts.{i}.net.{0.proj,2}`` tensors, see :func:`stack_expert_weights`)."""

    def __init__(self, num_experts: int, dim: int, inner_dim: int) -> None:
        super().__init__()
        self.in_weight = nn.Parameter(torch.empty(num_experts, inner_dim, dim))  # (E, F, C) as nn.Linear
        self.in_bias = nn.Parameter(torch.empty(num_experts, inner_dim))
        self.out_weight = nn.Parameter(torch.empty(num_experts, dim, inner_dim))  # (E, C, F)
        self.out_bias = nn.Parameter(torch.empty(num_experts, dim))
        self.reset_parameters()

    @property
    def num_experts(self) -> int:
        return self.in_weight.shape[0]

    def reset_parameters(self) -> None:
        # nn.Linear's default init per expert, so random-weight builds (benchmarks) behave like the official ones
        for e in range(self.num_experts):
            for weight, bias in ((self.in_weight, self.in_bias), (self.out_weight, self.out_bias)):
                layer = nn.Linear(weight.shape[2], weight.shape[1], device=weight.device, dtype=weight.dtype)
                with torch.no_grad():
                    weight[e].copy_(layer.weight)
                    bias[e].copy_(layer.bias)

    def expert(self, e: int, x: Tensor) -> Tensor:
        """Expert ``e`` on rows ``x`` (M, C) -> (M, C)."""
        return F.linear(F.gelu(F.linear(x, self.in_weight[e], self.in_bias[e])), self.out_weight[e], self.out_bias[e])


def stack_expert_weights(state_dict: dict[str, Tensor], prefix: str, num_experts: int) -> dict[str, Tensor]:
    """Official ``{prefix}experts.{i}.net.0.proj.*`` / ``net.2.*`` -> our stacked ``{prefix}experts.*`` (in place).

    A missing expert key is a KeyError naming it; the loader's strict check catches leftovers.
    """
    parts = {"in_weight": "net.0.proj.weight", "in_bias": "net.0.proj.bias", "out_weight": "net.2.weight"}
    parts["out_bias"] = "net.2.bias"
    for ours, theirs in parts.items():
        tensors = [state_dict.pop(f"{prefix}experts.{e}.{theirs}") for e in range(num_experts)]
        state_dict[f"{prefix}experts.{ours}"] = torch.stack(tensors)
    return state_dict


def grouped_mm_supported(x: Tensor, compiling: bool) -> bool:
    """Whether ``torch._grouped_mm`` runs for ``x``: torch's kernel (and its compile-time shape function)
    take bf16 on CUDA; eager CPU takes any float dtype."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    if x.device.type == "cuda":
        return x.dtype == torch.bfloat16
    return x.device.type == "cpu" and not compiling


class MoEBlock(nn.Module):
    """Official names: ``gate.weight`` (E, C), ``experts.*`` (stacked), ``shared_experts.net.*``."""

    def __init__(self, dim: int, inner_dim: int, num_experts: int, top_k: int, impl: MoEImpl = "auto") -> None:
        super().__init__()
        self.top_k = top_k
        self.impl: MoEImpl = impl
        self.gate = nn.Linear(dim, num_experts, bias=False)
        self.experts = StackedExperts(num_experts, dim, inner_dim)
        self.shared_experts = FeedForward(dim, inner_dim)

    def route(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(M, C) tokens -> top-k expert ids (M, k) and their softmax probabilities (M, k)."""
        scores = self.gate(x).softmax(dim=-1)  # (M, E)
        weights, experts = torch.topk(scores, k=self.top_k, dim=-1)
        return experts, weights

    def forward(self, x: Tensor) -> Tensor:
        """(B, N, C) -> (B, N, C)."""
        shape = x.shape
        flat = x.reshape(-1, shape[-1])  # (M, C)
        experts, weights = self.route(flat)
        impl = self.impl
        if impl == "auto":
            compiling = torch.compiler.is_compiling()
            impl = "grouped" if grouped_mm_supported(flat, compiling) else "dense"
        routed = self._grouped(flat, experts, weights) if impl == "grouped" else self._dense(flat, experts, weights)
        return (routed + self.shared_experts(flat)).reshape(shape)

    def _dense(self, x: Tensor, experts: Tensor, weights: Tensor) -> Tensor:
        # (M, E) gate matrix, zero where an expert was not chosen
        gates = torch.zeros(x.shape[0], self.experts.num_experts, device=x.device, dtype=weights.dtype)
        gates = gates.scatter(1, experts, weights)
        out = torch.zeros_like(x)
        for e in range(self.experts.num_experts):
            out = out + gates[:, e : e + 1].to(x.dtype) * self.experts.expert(e, x)
        return out

    def _grouped(self, x: Tensor, experts: Tensor, weights: Tensor) -> Tensor:
        m, k = experts.shape
        num_experts = self.experts.num_experts
        flat_experts = experts.reshape(-1)  # (M*k,) pair p = token p // k, choice p % k
        order = torch.argsort(flat_experts, stable=True)  # pairs grouped by expert
        # rows per expert without bincount (whose output size would need the max on the host)
        counts = torch.zeros(num_experts, device=x.device, dtype=torch.int64)
        counts = counts.scatter_add(0, flat_experts, torch.ones_like(flat_experts))
        offsets = torch.cumsum(counts, 0).to(torch.int32)  # end row of each group, stays on the device
        rows = x[order // k]  # (M*k, C), sorted by expert
        sorted_experts = flat_experts[order]
        e = self.experts
        hidden = torch._grouped_mm(rows, e.in_weight.transpose(1, 2), offs=offsets)  # (M*k, F)
        hidden = F.gelu(hidden + e.in_bias[sorted_experts])
        out = torch._grouped_mm(hidden, e.out_weight.transpose(1, 2), offs=offsets)  # (M*k, C)
        out = out + e.out_bias[sorted_experts]
        unsorted = torch.empty_like(out)
        unsorted[order] = out  # back to (token, choice) order: an index_put, no host sync
        weighted = unsorted.view(m, k, -1) * weights.unsqueeze(-1).to(out.dtype)
        return weighted.sum(dim=1)
