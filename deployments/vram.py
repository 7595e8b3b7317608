"""How many requests fit in one GPU pass: a per-VRAM table, or a measurement at start-up.

The table (``configs/vram_batch_table.yaml``) maps a VRAM budget in GiB to a batch size per model variant
and octree resolution, plus a ``cpu`` entry per variant. ``max_batch_size: auto`` measures instead: it
runs the GPU section at batch sizes 1, 2, 4, ... on a warm-up image and keeps the largest whose peak
memory, plus a safety margin, fits the budget. Without a GPU, ``auto`` falls back to the ``cpu`` entry.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import yaml

from .batching import is_out_of_memory
from .generator_config import BatchingConfig

logger = logging.getLogger(__name__)

GIB = 2**30
DEFAULT_VARIANT = "default"


@dataclass(frozen=True)
class VariantRow:
    """Batch sizes of one model variant: ``cpu`` and, per octree resolution, budget GiB -> batch size."""

    cpu: int
    by_resolution: dict[int, dict[float, int]]

    def for_budget(self, octree_resolution: int, budget_gib: float) -> int:
        # the smallest tabulated resolution that is at least the requested one (never under-estimate
        # memory); beyond the table, the largest one, with OOM bisection as the safety net
        resolutions = sorted(self.by_resolution)
        fitting = [r for r in resolutions if r >= octree_resolution]
        budgets = self.by_resolution[fitting[0] if fitting else resolutions[-1]]
        usable = [b for b in sorted(budgets) if b <= budget_gib]
        return budgets[usable[-1]] if usable else 1


@dataclass(frozen=True)
class VramTable:
    variants: dict[str, VariantRow]

    @classmethod
    def from_yaml(cls, path: str | Path) -> VramTable:
        with open(path) as file:
            return cls.from_dict(yaml.safe_load(file))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VramTable:
        variants: dict[str, VariantRow] = {}
        for name, row in (data.get("variants") or {}).items():
            by_resolution = {
                int(resolution): {
                    float(gib): _positive(size, f"{name}/{resolution}/{gib}") for gib, size in budgets.items()
                }
                for resolution, budgets in (row.get("resolutions") or {}).items()
            }
            if not by_resolution:
                raise ValueError(f"VRAM table: variant {name!r} has no resolutions")
            variants[name] = VariantRow(cpu=_positive(row.get("cpu"), f"{name}/cpu"), by_resolution=by_resolution)
        if not variants:
            raise ValueError("VRAM table has no variants")
        return cls(variants)

    def row(self, variant: str) -> VariantRow:
        if variant in self.variants:
            return self.variants[variant]
        if DEFAULT_VARIANT in self.variants:
            return self.variants[DEFAULT_VARIANT]
        raise ValueError(
            f"VRAM table has no row for {variant!r} and no {DEFAULT_VARIANT!r} row; known: {sorted(self.variants)}"
        )

    def batch_size(self, variant: str, octree_resolution: int, budget_gib: float | None) -> int:
        """``budget_gib=None`` means no GPU: the variant's ``cpu`` entry."""
        row = self.row(variant)
        return row.cpu if budget_gib is None else row.for_budget(octree_resolution, budget_gib)


def _positive(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"VRAM table {where}: batch size must be a positive integer, got {value!r}")
    return value


@dataclass(frozen=True)
class Sizing:
    """The batch size a replica settled on, and why (logged and exported as a metric)."""

    batch_size: int
    source: Literal["config", "table", "measured"]
    detail: str
    peak_bytes: dict[int, int] = field(default_factory=dict)


def candidate_sizes(limit: int) -> list[int]:
    """1, 2, 4, ... below ``limit``, then ``limit`` itself."""
    sizes, size = [], 1
    while size < limit:
        sizes.append(size)
        size *= 2
    return [*sizes, limit]


def measure_batch_size(
    run: Callable[[int], int],
    budget_bytes: int,
    safety_margin: float,
    limit: int,
    free_memory: Callable[[], None] = lambda: None,
) -> Sizing:
    """Largest candidate size whose measured peak x (1 + margin) fits ``budget_bytes``.

    ``run(size)`` runs the GPU section at that batch size and returns its peak memory in bytes. Stops at the
    first size that does not fit or runs out of memory (bigger ones will not fit either).
    """
    chosen, peaks, stop = 0, {}, ""
    for size in candidate_sizes(limit):
        try:
            peaks[size] = run(size)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            stop = f"batch {size} ran out of memory"
        if not stop and peaks[size] * (1 + safety_margin) > budget_bytes:
            stop = f"batch {size} peaks at {peaks[size] / GIB:.2f} GiB, over the budget with the margin"
        free_memory()  # outside the except block, so the failed attempt's tensors are released
        if stop:
            break
        chosen = size
    peak_text = ", ".join(f"{s}: {p / GIB:.2f}" for s, p in peaks.items())
    detail = (
        f"measured peak GiB per batch size {{{peak_text}}}; budget {budget_bytes / GIB:.2f} GiB, "
        f"margin {safety_margin:.0%}"
    )
    if stop:
        detail += f"; stopped: {stop}"
    if chosen == 0:
        detail += "; even one job does not fit, using 1 (OOM bisection will report failures)"
    return Sizing(max(chosen, 1), "measured", detail, peaks)


def free_cached_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def device_budget_bytes(batching: BatchingConfig, device: torch.device) -> int:
    if batching.vram_budget_gib is not None:
        return int(batching.vram_budget_gib * GIB)
    return torch.cuda.get_device_properties(device).total_memory


def size_batches(
    batching: BatchingConfig,
    device: torch.device,
    table: VramTable,
    variant: str,
    octree_resolution: int,
    run: Callable[[int], int] | None = None,
) -> Sizing:
    """Resolve ``max_batch_size`` (an int, ``table`` or ``auto``) to a number for this replica.

    ``run`` measures one GPU pass (see :func:`measure_batch_size`); it is only called for ``auto`` on CUDA.
    """
    setting = batching.max_batch_size
    if isinstance(setting, int):
        return Sizing(setting, "config", "max_batch_size set in the config")
    on_gpu = device.type == "cuda"
    if setting == "auto" and on_gpu and run is not None:
        budget = device_budget_bytes(batching, device)
        return measure_batch_size(run, budget, batching.safety_margin, batching.auto_max_batch_size, free_cached_memory)
    if on_gpu:
        budget_gib = device_budget_bytes(batching, device) / GIB
        size = table.batch_size(variant, octree_resolution, budget_gib)
        return Sizing(size, "table", f"table row {variant!r}, R={octree_resolution}, budget {budget_gib:.1f} GiB")
    size = table.batch_size(variant, octree_resolution, None)
    return Sizing(size, "table", f"no GPU: table row {variant!r}, cpu entry")
