from __future__ import annotations

import pytest
import torch

from deployments.batching import batch_key, group_positions, is_out_of_memory, run_bisecting
from deployments.contract import GenerationRequest
from deployments.hunyuan3d import GenerationParams

from .conftest import FAST, object_png


class OOMAbove:
    """A fake GPU section: runs out of memory for sub-batches larger than ``limit`` and records calls."""

    def __init__(self, limit: int, error: type[BaseException] = torch.cuda.OutOfMemoryError) -> None:
        self.limit, self.error, self.calls = limit, error, []

    def __call__(self, positions: list[int]) -> list[int]:
        self.calls.append(list(positions))
        if len(positions) > self.limit:
            raise self.error("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [p * 10 for p in positions]


def test_batch_key_equal_params_share_a_pass():
    a = GenerationRequest(object_png(), seed=1, params=FAST)
    b = GenerationRequest(object_png(3), seed=2, params=FAST.to_dict(), priority="critical")
    assert batch_key(a) == batch_key(b)


@pytest.mark.parametrize(
    "change",
    [
        {"num_inference_steps": 3},
        {"guidance_scale": 4.0},
        {"octree_resolution": 48},
        {"volume_decoder": "hierarchical"},
        {"box_v": 1.0},
        {"mc_level": 0.1},
    ],
)
def test_batch_key_differs_when_a_pass_wide_parameter_differs(change):
    other = GenerationParams(**{**FAST.to_dict(), **change})
    first, second = GenerationRequest(object_png(), params=FAST), GenerationRequest(object_png(), params=other)
    assert batch_key(first) != batch_key(second)


def test_group_positions_mixed_keys_split_in_first_appearance_order():
    assert group_positions(["a", "b", "a", "c", "b", "a"]) == [[0, 2, 5], [1, 4], [3]]


def test_group_positions_empty_batch_has_no_groups():
    assert group_positions([]) == []


@pytest.mark.parametrize("error", [torch.cuda.OutOfMemoryError("x"), MemoryError()])
def test_is_out_of_memory_accepts_cuda_and_host_errors(error):
    assert is_out_of_memory(error)


def test_is_out_of_memory_rejects_other_runtime_errors():
    assert not is_out_of_memory(RuntimeError("CUDA error: device-side assert triggered"))


def test_run_bisecting_without_oom_runs_once():
    run = OOMAbove(limit=8)
    result = run_bisecting(range(4), run)
    assert run.calls == [[0, 1, 2, 3]]
    assert result.done == [([0, 1, 2, 3], [0, 10, 20, 30])]
    assert (result.out_of_memory, result.splits, result.largest_ok) == ({}, 0, None)


def test_run_bisecting_halves_until_it_fits_and_frees_memory_each_time():
    run, freed = OOMAbove(limit=2), []
    result = run_bisecting(range(5), run, free_memory=lambda: freed.append(True))
    # 5 -> 3 + 2; 3 -> 2 + 1
    assert run.calls == [[0, 1, 2, 3, 4], [0, 1, 2], [0, 1], [2], [3, 4]]
    assert [positions for positions, _ in result.done] == [[0, 1], [2], [3, 4]]
    assert (result.splits, result.largest_ok, result.out_of_memory, len(freed)) == (2, 2, {}, 2)


def test_run_bisecting_host_memory_error_is_handled_like_cuda_oom():
    result = run_bisecting(range(4), OOMAbove(limit=1, error=MemoryError))
    assert [positions for positions, _ in result.done] == [[0], [1], [2], [3]]
    assert (result.splits, result.largest_ok) == (3, 1)


def test_run_bisecting_item_failing_alone_is_reported_and_the_rest_complete():
    def run(positions: list[int]) -> list[int]:
        if 2 in positions:  # one job too big even alone (e.g. a huge octree resolution)
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return positions

    result = run_bisecting(range(4), run)
    assert [positions for positions, _ in result.done] == [[0, 1], [3]]
    assert list(result.out_of_memory) == [2]
    assert "OutOfMemoryError: CUDA out of memory" in result.out_of_memory[2]
    assert result.largest_ok == 2


def test_run_bisecting_everything_failing_alone_has_no_largest_ok():
    result = run_bisecting(range(2), OOMAbove(limit=0))
    assert (sorted(result.out_of_memory), result.done, result.largest_ok) == ([0, 1], [], None)


def test_run_bisecting_other_errors_propagate_without_retry():
    calls = []

    def run(positions: list[int]) -> None:
        calls.append(positions)
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        run_bisecting(range(4), run)
    assert calls == [[0, 1, 2, 3]]


def test_run_bisecting_retries_after_the_failed_attempt_is_released():
    """The failed attempt's locals must be unreachable when memory is freed (tracebacks hold frames)."""
    import gc
    import weakref

    alive = []

    class Activation:
        pass

    def run(positions: list[int]) -> int:
        activation = Activation()  # stands for the tensors of a failed pass
        alive.append(weakref.ref(activation))
        if len(positions) > 1:
            raise torch.cuda.OutOfMemoryError("oom")
        return len(positions)

    seen_at_free = []
    run_bisecting(range(2), run, free_memory=lambda: (gc.collect(), seen_at_free.append(alive[0]() is None)))
    assert seen_at_free == [True]
