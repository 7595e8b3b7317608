"""Batching rules, free of Ray and of the model: which requests share a pass, how a pass survives OOM.

Serve hands the replica a list of requests; the replica splits it into sub-batches of equal batch key
(one pipeline call each, positions preserved) and runs each through :func:`run_bisecting`, which turns an
out-of-memory error into smaller retries instead of a failed batch.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import torch

from .contract import GenerationRequest, ViewName
from .hunyuan3d.params import GenerationParams

K = TypeVar("K", bound=Hashable)
R = TypeVar("R")


BatchKey = tuple[GenerationParams, tuple[ViewName, ...]]


def batch_key(request: GenerationRequest) -> BatchKey:
    """What must be equal for two requests to share one forward pass.

    The model is fixed per replica (one ``ShapePipeline``; another model is another deployment). The
    pipeline takes ONE ``GenerationParams`` per call: steps and guidance shape the denoising loop, octree
    resolution, box and decoder shape the volume, the iso level drives hierarchical refinement, and the
    chunk size is a single loop bound. So the whole (frozen, hashable) parameter set is in the key; seeds and
    images are per item. So is the view set (front first): a multiview condition has one block of tokens per
    view, and one call conditions every job on the same number of tokens, with the same view embeddings.
    """
    return request.params, request.view_names


def group_positions(keys: Sequence[K]) -> list[list[int]]:
    """Positions grouped by equal key, groups in order of first appearance, positions ascending."""
    groups: dict[K, list[int]] = {}
    for position, key in enumerate(keys):
        groups.setdefault(key, []).append(position)
    return list(groups.values())


def is_out_of_memory(exc: BaseException) -> bool:
    # torch.cuda.OutOfMemoryError exists in CPU builds too, so this check needs no GPU
    return isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError))


@dataclass
class Bisection(Generic[R]):
    """What :func:`run_bisecting` made of one sub-batch.

    ``done``: (positions, output of ``run``) per sub-batch that succeeded, in position order.
    ``out_of_memory``: position -> error text, for items that ran out of memory even alone.
    ``splits``: how many times a batch was halved. ``largest_ok``: size of the largest sub-batch that
    succeeded after an OOM (``None`` when nothing ran out of memory, or nothing succeeded).
    """

    done: list[tuple[list[int], R]] = field(default_factory=list)
    out_of_memory: dict[int, str] = field(default_factory=dict)
    splits: int = 0
    largest_ok: int | None = None


def run_bisecting(
    positions: Sequence[int],
    run: Callable[[list[int]], R],
    free_memory: Callable[[], None] = lambda: None,
) -> Bisection[R]:
    """Run ``positions`` as one call to ``run``; on OOM free memory, halve, and retry each half.

    Halving reaches a size that fits in log2(B) retries since activation memory grows ~linearly with the
    batch; a single item that still fails is reported in ``out_of_memory`` and the others complete. Any
    other exception propagates unchanged.
    """
    result: Bisection[R] = Bisection()
    had_oom = False

    def visit(sub: list[int]) -> None:
        nonlocal had_oom
        try:
            output = run(sub)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            reason = f"{type(exc).__name__}: {exc}"
        else:
            result.done.append((sub, output))
            if had_oom:
                result.largest_ok = max(result.largest_ok or 0, len(sub))
            return
        # Retry only outside the except block: the traceback's frames hold the failed attempt's tensors,
        # and memory cannot be freed while they are alive.
        had_oom = True
        free_memory()
        if len(sub) == 1:
            result.out_of_memory[sub[0]] = reason
            return
        result.splits += 1
        middle = (len(sub) + 1) // 2
        visit(sub[:middle])
        visit(sub[middle:])

    visit(list(positions))
    return result
