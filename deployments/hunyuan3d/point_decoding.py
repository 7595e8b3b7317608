"""The geometry decoder bound to a batch of latent sets: the :class:`~.volume.PointDecoder` the volume
decoders query, exact or with FlashVDM's adaptive KV selection.

Adaptive selection: the points of each sample are ordered along a Morton curve and cut into blocks of
nearby points; each block attends only to the ``k`` latent tokens its queries score highest (mean of q.k over
a sample of the block's queries, per head), as the official FlashVDM decoder does per spatial cell. Blocks of
all samples run through one decoder call; only each sample's last block is padded.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .vae import GeometryDecoder, KeyValues

# Points per spatial block under adaptive selection, and one query in SCORE_STRIDE scores the tokens.
BLOCK_POINTS = 4096
SCORE_STRIDE = 32
MIN_BLOCK_POINTS = 64
# Morton codes quantise coordinates in [-MORTON_RANGE, MORTON_RANGE] (box_v is at most 2) to 10 bits per axis
MORTON_RANGE = 2.0
_MORTON_BITS = 10


def adaptive_kv_count(num_tokens: int) -> int:
    """Tokens each block keeps: the official rule (1,024 of 3,072; 256 of 512; else a third)."""
    if num_tokens == 3072:
        return 1024
    if num_tokens == 512:
        return 256
    return max(1, num_tokens // 3)


class BatchGeometryDecoder:
    """Occupancy logits of query points for B samples at once (float32 results, model-dtype compute).

    Query points go to the decoder as float32: only their Fourier features are cast to ``dtype`` (the model's,
    which ``kv`` already carries), because bf16/fp16 coordinates move grid positions by a sizeable part of a
    voxel at high resolutions (see :class:`~.vae.FourierEmbedder`).
    """

    def __init__(
        self,
        decoder: GeometryDecoder,
        kv: KeyValues,
        dtype: torch.dtype,
        num_chunks: int,
        kv_count: int | None = None,
    ) -> None:
        self.decoder, self.kv, self.dtype, self.num_chunks = decoder, kv, dtype, num_chunks
        self.batch_size = kv.keys.shape[0]
        num_tokens = kv.keys.shape[2]
        self.kv_count = None if kv_count is None or kv_count >= num_tokens else kv_count

    def shared(self, points: Tensor) -> Tensor:
        if self.kv_count is not None:  # selection is per sample and block: decode each sample's copy
            owner = torch.arange(self.batch_size, device=points.device).repeat_interleave(points.shape[0])
            return self.ragged(points.repeat(self.batch_size, 1), owner).view(self.batch_size, -1)
        return self.decoder(points[None], self.kv).float()

    def ragged(self, points: Tensor, owner: Tensor) -> Tensor:
        if not points.shape[0]:
            return torch.zeros(0, device=points.device)
        if self.kv_count is not None:
            return self._ragged_adaptive(points, owner)
        out = torch.empty(points.shape[0], device=points.device)
        bounds = _run_bounds(owner, self.batch_size)
        for b in range(self.batch_size):
            kv = KeyValues(self.kv.keys[b : b + 1], self.kv.values[b : b + 1])
            for start in range(bounds[b], bounds[b + 1], self.num_chunks):
                stop = min(start + self.num_chunks, bounds[b + 1])
                out[start:stop] = self.decoder(points[None, start:stop], kv)[0].float()
        return out

    def _ragged_adaptive(self, points: Tensor, owner: Tensor) -> Tensor:
        order = torch.argsort(owner * (1 << (3 * _MORTON_BITS)) + morton_codes(points))
        points, owner = points[order], owner[order]
        counts = torch.bincount(owner, minlength=self.batch_size)
        block = _block_points(int(counts.max()))
        blocks, block_owner, rows = _pad_into_blocks(points, counts, block)
        logits = torch.empty(blocks.shape[:2], device=points.device)
        per_call = max(1, self.num_chunks // block)
        for start in range(0, blocks.shape[0], per_call):
            owners = block_owner[start : start + per_call]

            def select(q: Tensor, kv: KeyValues, owners: Tensor = owners) -> KeyValues:
                return select_top_keys(q, kv, owners, self.kv_count or 1)

            logits[start : start + per_call] = self.decoder(blocks[start : start + per_call], self.kv, select).float()
        out = torch.empty(points.shape[0], device=points.device)
        out[order] = logits.view(-1)[rows]
        return out


def select_top_keys(q: Tensor, kv: KeyValues, owners: Tensor, count: int) -> KeyValues:
    """Per block (row of ``q``, (N, H, P, D)) and head, the ``count`` tokens of its sample's set (``kv``:
    (B, H, M, D)) with the highest mean q.k over a sample of the block's queries -> (N, H, count, D)."""
    sampled = q[:, :, ::SCORE_STRIDE]
    n, heads = q.shape[:2]
    tokens, dim = kv.keys.shape[2], kv.keys.shape[3]
    scores = torch.empty(n, heads, tokens, device=q.device, dtype=torch.float32)
    for b in torch.unique(owners).tolist():
        rows = torch.nonzero(owners == b)[:, 0]
        logits = (sampled[rows] @ kv.keys[b].transpose(-1, -2)).float() * dim**-0.5
        scores[rows] = logits.softmax(dim=-1).mean(dim=-2)
    top = scores.topk(count, dim=-1).indices  # (N, H, count)
    flat = (owners[:, None, None] * heads + torch.arange(heads, device=q.device)[None, :, None]) * tokens + top
    return KeyValues(kv.keys.reshape(-1, dim)[flat], kv.values.reshape(-1, dim)[flat])


def morton_codes(points: Tensor) -> Tensor:
    """(N, 3) -> (N,) int64 Z-order codes: points close in space get close codes."""
    scale = ((1 << _MORTON_BITS) - 1) / (2 * MORTON_RANGE)
    q = ((points.float() + MORTON_RANGE) * scale).round().clamp(0, (1 << _MORTON_BITS) - 1).long()
    code = torch.zeros(points.shape[0], dtype=torch.long, device=points.device)
    for bit in range(_MORTON_BITS):
        for axis in range(3):
            code |= ((q[:, axis] >> bit) & 1) << (3 * bit + (2 - axis))
    return code


def _run_bounds(owner: Tensor, batch: int) -> list[int]:
    """Start of each sample's run in a non-decreasing ``owner`` (and the end)."""
    return torch.searchsorted(owner, torch.arange(batch + 1, device=owner.device)).tolist()


def _block_points(largest: int) -> int:
    """Block size: BLOCK_POINTS, smaller for small rounds so padding stays below a block per sample."""
    size = MIN_BLOCK_POINTS
    while size < min(largest, BLOCK_POINTS):
        size *= 2
    return size


def _pad_into_blocks(points: Tensor, counts: Tensor, block: int) -> tuple[Tensor, Tensor, Tensor]:
    """Owner-sorted points -> (NB, block, 3) blocks (each sample's last one padded with its last point),
    each block's owner, and for every point its flat position in the blocks."""
    blocks_per_sample = (counts + block - 1) // block
    block_owner = torch.repeat_interleave(torch.arange(counts.numel(), device=points.device), blocks_per_sample)
    starts = torch.cumsum(counts, 0) - counts  # first point of each sample
    block_starts = torch.cumsum(blocks_per_sample, 0) - blocks_per_sample  # first block of each sample
    owner = torch.repeat_interleave(torch.arange(counts.numel(), device=points.device), counts)
    rank = torch.arange(points.shape[0], device=points.device) - starts[owner]
    rows = block_starts[owner] * block + rank
    # padding slots repeat their sample's last point
    last = starts + counts - 1
    slot_owner = torch.repeat_interleave(block_owner, block)
    source = last[slot_owner].clone()
    source[rows] = torch.arange(points.shape[0], device=points.device)
    return points[source].view(-1, block, 3), block_owner, rows
