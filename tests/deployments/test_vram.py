from __future__ import annotations

import pytest
import torch

from deployments.generator_config import BatchingConfig
from deployments.paths import resolve_path
from deployments.vram import GIB, VramTable, candidate_sizes, measure_batch_size, size_batches

TABLE = VramTable.from_yaml(resolve_path("configs/vram_batch_table.yaml"))
CPU = torch.device("cpu")


def linear_peak(base_gib: float, per_item_gib: float, oom_above_gib: float = 1e9):
    """A fake GPU pass whose peak grows linearly with the batch; OOM past the device size."""
    calls = []

    def run(size: int) -> int:
        calls.append(size)
        peak = (base_gib + per_item_gib * size) * GIB
        if peak > oom_above_gib * GIB:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return int(peak)

    return run, calls


def test_table_committed_file_has_every_named_variant_and_a_default():
    assert {
        "hunyuan3d-dit-v2-0",
        "hunyuan3d-dit-v2-0-fast",
        "hunyuan3d-dit-v2-0-turbo",
        "hunyuan3d-dit-v2-mini",
        "default",
    } <= set(TABLE.variants)


def test_table_lookup_takes_largest_budget_not_above_the_given_one():
    assert TABLE.batch_size("hunyuan3d-dit-v2-0", 256, 24.0) == 8
    assert TABLE.batch_size("hunyuan3d-dit-v2-0", 256, 39.9) == 8
    assert TABLE.batch_size("hunyuan3d-dit-v2-0", 256, 80.0) == 16


def test_table_lookup_rounds_resolution_up_to_a_listed_one():
    assert TABLE.batch_size("hunyuan3d-dit-v2-0", 300, 24.0) == TABLE.batch_size("hunyuan3d-dit-v2-0", 384, 24.0) == 4


def test_table_lookup_beyond_listed_resolutions_uses_the_largest():
    assert TABLE.batch_size("hunyuan3d-dit-v2-0", 1024, 80.0) == TABLE.batch_size("hunyuan3d-dit-v2-0", 512, 80.0)


def test_table_lookup_below_the_smallest_budget_is_one():
    assert TABLE.batch_size("hunyuan3d-dit-v2-0", 256, 4.0) == 1


def test_table_lookup_without_gpu_is_the_cpu_entry():
    assert TABLE.batch_size("hunyuan3d-dit-v2-0", 256, None) == 4


def test_table_unknown_variant_uses_default_row():
    assert TABLE.row("tiny-test-model") == TABLE.variants["default"]


def test_table_unknown_variant_without_default_is_an_error():
    table = VramTable.from_dict({"variants": {"a": {"cpu": 2, "resolutions": {256: {8: 1}}}}})
    with pytest.raises(ValueError, match=r"no row for 'b' and no 'default' row; known: \['a'\]"):
        table.row("b")


@pytest.mark.parametrize("bad", [0, -2, 1.5, "4", None])
def test_table_non_positive_batch_size_is_rejected(bad):
    with pytest.raises(ValueError, match="batch size must be a positive integer"):
        VramTable.from_dict({"variants": {"a": {"cpu": 1, "resolutions": {256: {8: bad}}}}})


def test_table_without_variants_is_rejected():
    with pytest.raises(ValueError, match="no variants"):
        VramTable.from_dict({"variants": {}})


@pytest.mark.parametrize(("limit", "sizes"), [(1, [1]), (8, [1, 2, 4, 8]), (12, [1, 2, 4, 8, 12])])
def test_candidate_sizes_double_up_to_the_limit(limit, sizes):
    assert candidate_sizes(limit) == sizes


def test_measure_picks_largest_size_whose_peak_plus_margin_fits():
    run, calls = linear_peak(base_gib=6, per_item_gib=1.5)
    # 8 items: 18 GiB * 1.15 = 20.7 <= 24; 16 items: 30 GiB does not fit
    sizing = measure_batch_size(run, budget_bytes=24 * GIB, safety_margin=0.15, limit=16)
    assert (sizing.batch_size, sizing.source, calls) == (8, "measured", [1, 2, 4, 8, 16])
    assert "stopped: batch 16 peaks at 30.00 GiB" in sizing.detail


def test_measure_stops_at_the_first_oom_and_frees_memory():
    run, calls = linear_peak(base_gib=6, per_item_gib=1.5, oom_above_gib=14)
    freed = []
    sizing = measure_batch_size(run, 80 * GIB, safety_margin=0.1, limit=16, free_memory=lambda: freed.append(1))
    assert (sizing.batch_size, calls, len(freed)) == (4, [1, 2, 4, 8], 4)
    assert "batch 8 ran out of memory" in sizing.detail


def test_measure_when_nothing_fits_uses_one_and_says_so():
    run, _ = linear_peak(base_gib=20, per_item_gib=1)
    sizing = measure_batch_size(run, budget_bytes=16 * GIB, safety_margin=0.15, limit=8)
    assert sizing.batch_size == 1
    assert "even one job does not fit" in sizing.detail


def test_measure_stops_at_the_limit():
    run, calls = linear_peak(base_gib=1, per_item_gib=0.01)
    assert measure_batch_size(run, 80 * GIB, 0.15, limit=6).batch_size == 6
    assert calls == [1, 2, 4, 6]


def test_size_batches_integer_setting_is_used_as_is():
    sizing = size_batches(BatchingConfig(max_batch_size=3), CPU, TABLE, "hunyuan3d-dit-v2-0", 256)
    assert (sizing.batch_size, sizing.source) == (3, "config")


@pytest.mark.parametrize("setting", ["auto", "table"])
def test_size_batches_without_gpu_uses_the_cpu_entry_and_never_measures(setting):
    def run(size: int) -> int:
        raise AssertionError("no measuring on CPU")

    sizing = size_batches(BatchingConfig(max_batch_size=setting), CPU, TABLE, "hunyuan3d-dit-v2-mini", 256, run)
    assert (sizing.batch_size, sizing.source) == (TABLE.variants["hunyuan3d-dit-v2-mini"].cpu, "table")
    assert "no GPU" in sizing.detail
