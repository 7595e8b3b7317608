"""GPU speed-up options: validation, SDPA restriction and compilation on the CPU; graphs and device
marching cubes where a GPU (and warp-lang) is present."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import trimesh
from scipy.spatial import cKDTree
from skimage import measure
from torch import Tensor, nn

from deployments.hunyuan3d import ShapePipeline
from deployments.hunyuan3d.acceleration import (
    AccelerationOptions,
    CudaGraphStep,
    compile_module,
    dit_step,
    sdpa_context,
)
from deployments.hunyuan3d.acceleration_options import COMPILE_MODES
from deployments.hunyuan3d.device_marching_cubes import (
    installed_warp_version,
    marching_cubes_on_device,
    version_problem,
    warp_marching_cubes,
    warp_problem,
)

from .conftest import TINY_MODELS

CPU = torch.device("cpu")
CUDA = torch.device("cuda")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
needs_warp = pytest.mark.skipif(warp_problem() is not None, reason=f"needs warp-lang: {warp_problem()}")


# --- options -----------------------------------------------------------------------------------------


def test_acceleration_options_defaults_are_off_and_valid_everywhere() -> None:
    options = AccelerationOptions()
    assert not (options.compile_dit or options.compile_decoder or options.cuda_graphs)
    assert options.sdpa_backends == () and not options.device_marching_cubes
    options.validate_for(CPU)
    options.validate_for(CUDA)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"compile_dit": True, "compile_mode": "fastest"}, "compile_mode"),
        ({"compile_mode": "max-autotune"}, "compile_mode"),  # set without anything to compile
        ({"compile_dit": True, "compile_mode": "reduce-overhead", "cuda_graphs": True}, "cuda_graphs"),
        ({"compile_dit": True, "compile_mode": "max-autotune", "cuda_graphs": True}, "cuda_graphs"),
        ({"sdpa_backends": ("flash", "fast")}, "sdpa_backends"),
        ({"sdpa_backends": ("math", "math")}, "sdpa_backends"),
        ({"sdpa_backends": "math"}, "sdpa_backends"),
    ],
)
def test_acceleration_options_bad_value_raises_naming_it(kwargs: dict[str, object], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        AccelerationOptions(**kwargs)  # type: ignore[arg-type]


def test_acceleration_options_good_combinations_construct() -> None:
    AccelerationOptions(compile_dit=True, compile_mode="max-autotune-no-cudagraphs", cuda_graphs=True)
    AccelerationOptions(compile_decoder=True, compile_mode="reduce-overhead", cuda_graphs=True)  # DiT not compiled
    AccelerationOptions(sdpa_backends=("cudnn", "flash", "efficient", "math"))


def test_compile_modes_are_torch_compile_modes() -> None:
    from torch._inductor import list_mode_options

    assert set(COMPILE_MODES) <= set(list_mode_options())


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"cuda_graphs": True}, "cuda_graphs"),
        ({"device_marching_cubes": True}, "device_marching_cubes"),
        ({"sdpa_backends": ("math", "efficient")}, "sdpa_backends"),
        ({"sdpa_backends": ("cudnn",)}, "sdpa_backends"),
    ],
)
def test_validate_for_cpu_refuses_gpu_only_option(kwargs: dict[str, object], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        AccelerationOptions(**kwargs).validate_for(CPU)  # type: ignore[arg-type]


def test_validate_for_cpu_accepts_cpu_options() -> None:
    AccelerationOptions(compile_dit=True, compile_decoder=True, sdpa_backends=("math", "flash")).validate_for(CPU)


def test_validate_for_cuda_accepts_graphs_and_any_backend() -> None:
    # a torch.device names CUDA without needing one: this checks the options, not the machine
    AccelerationOptions(cuda_graphs=True, sdpa_backends=("efficient", "cudnn")).validate_for(CUDA)


@pytest.mark.skipif(warp_problem() is None, reason="warp-lang is installed here")
def test_validate_for_cuda_without_warp_names_the_package() -> None:
    with pytest.raises(ValueError, match=r"device_marching_cubes.*pip install 'warp-lang>=1\.19'"):
        AccelerationOptions(device_marching_cubes=True).validate_for(CUDA)


@needs_warp
def test_validate_for_cuda_with_warp_accepts_device_marching_cubes() -> None:
    AccelerationOptions(device_marching_cubes=True).validate_for(CUDA)


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        (None, "not installed: pip install 'warp-lang>=1.19'"),
        ("1.10.0", "found 1.10.0: pip install 'warp-lang>=1.19'"),
        ("nightly", "cannot read the warp-lang version 'nightly'"),
    ],
)
def test_version_problem_names_package_and_fix(version: str | None, expected: str) -> None:
    problem = version_problem(version)
    assert problem is not None and expected in problem


@pytest.mark.parametrize("version", ["1.19.0", "1.19.2.dev0", "1.20.1", "2.0.0"])
def test_version_problem_accepts_supported_versions(version: str) -> None:
    assert version_problem(version) is None


def test_warp_problem_matches_installed_version() -> None:
    assert warp_problem() == version_problem(installed_warp_version())


# --- SDPA backends -------------------------------------------------------------------------------------


def _attention_inputs() -> tuple[Tensor, Tensor, Tensor]:
    generator = torch.Generator().manual_seed(0)
    return tuple(torch.randn(2, 4, 16, 8, generator=generator) for _ in range(3))  # type: ignore[return-value]


def test_sdpa_context_empty_leaves_torch_choice() -> None:
    before = (torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.math_sdp_enabled())
    with sdpa_context(AccelerationOptions()):
        assert (torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.math_sdp_enabled()) == before


def test_sdpa_context_math_enables_only_math_and_restores() -> None:
    before = (
        torch.backends.cuda.flash_sdp_enabled(),
        torch.backends.cuda.mem_efficient_sdp_enabled(),
        torch.backends.cuda.cudnn_sdp_enabled(),
        torch.backends.cuda.math_sdp_enabled(),
    )
    with sdpa_context(AccelerationOptions(sdpa_backends=("math",))):
        assert torch.backends.cuda.math_sdp_enabled()
        assert not torch.backends.cuda.flash_sdp_enabled()
        assert not torch.backends.cuda.mem_efficient_sdp_enabled()
        assert not torch.backends.cuda.cudnn_sdp_enabled()
    after = (
        torch.backends.cuda.flash_sdp_enabled(),
        torch.backends.cuda.mem_efficient_sdp_enabled(),
        torch.backends.cuda.cudnn_sdp_enabled(),
        torch.backends.cuda.math_sdp_enabled(),
    )
    assert after == before


def test_sdpa_context_math_gives_the_default_result() -> None:
    q, k, v = _attention_inputs()
    expected = F.scaled_dot_product_attention(q, k, v)
    with sdpa_context(AccelerationOptions(sdpa_backends=("math",))):
        torch.testing.assert_close(F.scaled_dot_product_attention(q, k, v), expected, atol=1e-5, rtol=1e-5)


def test_sdpa_context_backend_without_cpu_kernel_fails_on_cpu() -> None:
    # the restriction is real: with only a CUDA backend allowed, a CPU attention has no kernel left
    q, k, v = _attention_inputs()
    with sdpa_context(AccelerationOptions(sdpa_backends=("efficient",))), pytest.raises(RuntimeError, match="backend"):
        F.scaled_dot_product_attention(q, k, v)


# --- torch.compile -------------------------------------------------------------------------------------


class CompileProbe(nn.Module):
    """A small MLP that records whether each forward ran under the compiler's tracing."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4))
        self.traced: list[bool] = []

    def forward(self, x: Tensor) -> Tensor:
        self.traced.append(torch.compiler.is_compiling())
        return self.net(x)


def test_compile_module_off_returns_the_same_module_uncompiled() -> None:
    module = CompileProbe()
    options = AccelerationOptions(compile_decoder=True)  # compiles the decoder only
    assert compile_module(module, options, "dit") is module
    module(torch.zeros(1, 8))
    assert module.traced == [False]


def test_compile_module_on_matches_eager_on_cpu() -> None:
    # ~6 s on this 2-core machine with an empty inductor cache (gcc builds the kernels), ~2 s warm
    torch.manual_seed(0)
    module = CompileProbe().eval()
    x = torch.randn(3, 8)
    with torch.inference_mode():
        expected = module(x)
        assert compile_module(module, AccelerationOptions(compile_dit=True), "dit") is module
        actual = module(x)
    assert module.traced == [False, True]  # the second call was traced by dynamo
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_compile_module_tiny_dit_matches_eager_on_cpu() -> None:
    # the real DiT (SDPA with a key bias, adaLN, RMSNorm): its first compiled call took 79 s on this
    # 2-core machine with a cold inductor cache
    pipeline = ShapePipeline.from_pretrained(TINY_MODELS / "hunyuan3d-dit-v2-0")
    x, t, cond = _dit_inputs(pipeline, batch=2, device=CPU)
    with torch.inference_mode():
        expected = pipeline.dit(x, t, cond)
        expected_uncond = pipeline.dit(x, t, cond[:, :1], None, cond_copies=cond.shape[1])
        compile_module(pipeline.dit, AccelerationOptions(compile_dit=True), "dit")
        actual = pipeline.dit(x, t, cond)
        actual_uncond = pipeline.dit(x, t, cond[:, :1], None, cond_copies=cond.shape[1])
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(actual_uncond, expected_uncond, atol=1e-5, rtol=1e-5)


# --- CUDA graphs -----------------------------------------------------------------------------------------


def test_cuda_graph_step_refuses_cpu() -> None:
    with pytest.raises(ValueError, match="cuda_graphs needs a CUDA device"):
        CudaGraphStep(nn.Identity(), CPU)


def test_dit_step_without_graphs_is_the_dit_itself() -> None:
    dit = nn.Identity()
    assert dit_step(dit, AccelerationOptions(), CPU) is dit
    with pytest.raises(ValueError, match="cuda_graphs"):
        dit_step(dit, AccelerationOptions(cuda_graphs=True), CPU)


def _dit_inputs(pipeline: ShapePipeline, batch: int, device: torch.device, seed: int = 0) -> tuple[Tensor, ...]:
    config, generator = pipeline.config, torch.Generator().manual_seed(seed)
    x = torch.randn(batch, config.vae.num_latents, config.vae.embed_dim, generator=generator)
    t = torch.rand(batch, generator=generator)
    cond = torch.randn(batch, 1370, config.dit.context_in_dim, generator=generator)
    return x.to(device), t.to(device), cond.to(device)


@needs_cuda
def test_cuda_graph_step_replay_matches_eager() -> None:
    pipeline = ShapePipeline.from_pretrained(TINY_MODELS / "hunyuan3d-dit-v2-0", device="cuda", dtype=torch.float32)
    step = CudaGraphStep(pipeline.dit, CUDA, max_graphs=3)
    with torch.inference_mode():
        for seed, batch in [(0, 1), (1, 2), (2, 1), (3, 2)]:  # two shapes, each replayed with new inputs
            x, t, cond = _dit_inputs(pipeline, batch, CUDA, seed)
            torch.testing.assert_close(step(x, t, cond), pipeline.dit(x, t, cond), atol=1e-5, rtol=1e-5)
            uncond = cond[:, :1]
            torch.testing.assert_close(
                step(x, t, uncond, None, cond_copies=1370),
                pipeline.dit(x, t, uncond, None, cond_copies=1370),
                atol=1e-5,
                rtol=1e-5,
            )
        assert len(step.captured_keys) == 3 and step.eager_calls == 1  # the fourth key ran eagerly
        first = step(x, t, cond)
        step(*_dit_inputs(pipeline, 2, CUDA, seed=9))
        torch.testing.assert_close(first, pipeline.dit(x, t, cond))  # a returned velocity is not overwritten


# --- marching cubes on the device ------------------------------------------------------------------------


def test_marching_cubes_on_device_refuses_a_cpu_tensor() -> None:
    with pytest.raises(ValueError, match="needs a CUDA tensor"):
        marching_cubes_on_device(torch.zeros(4, 4, 4), 0.0)


def test_warp_marching_cubes_refuses_a_non_3d_volume() -> None:
    with pytest.raises(ValueError, match="3-D"):
        warp_marching_cubes(torch.zeros(4, 4), 0.0)


@pytest.mark.skipif(warp_problem() is None, reason="warp-lang is installed here")
def test_warp_marching_cubes_without_warp_names_the_package() -> None:
    with pytest.raises(ImportError, match="warp-lang"):
        warp_marching_cubes(torch.zeros(4, 4, 4), 0.0)


def ellipsoid_logits(resolution: int = 40) -> np.ndarray:
    """Positive inside, like occupancy logits; off-centre and anisotropic so a swapped axis shows."""
    axis = np.arange(resolution + 1, dtype=np.float32)
    i, j, k = np.meshgrid(axis, axis, axis, indexing="ij")
    radius = np.sqrt(((i - 18.3) / 12) ** 2 + ((j - 21.1) / 9) ** 2 + ((k - 19.7) / 15) ** 2)
    return (1.0 - radius).astype(np.float32)


def assert_same_surface(vertices: np.ndarray, faces: np.ndarray, volume: np.ndarray, level: float) -> None:
    """Warp's mesh is scikit-image's Lewiner mesh up to vertex order and the diagonal a cell is split on:
    the same vertex set, face count, area and signed volume (so the same winding)."""
    expected_vertices, expected_faces, _, _ = measure.marching_cubes(volume, level, method="lewiner")
    assert vertices.dtype == expected_vertices.dtype and faces.dtype == expected_faces.dtype
    assert len(faces) == len(expected_faces)
    used = np.unique(faces)
    assert used.min() >= 0 and len(used) == len(np.unique(expected_faces))
    distance, _ = cKDTree(expected_vertices).query(vertices[used])
    assert distance.max() < 1e-4  # voxels
    ours = trimesh.Trimesh(vertices, faces, process=False)
    theirs = trimesh.Trimesh(expected_vertices, expected_faces, process=False)
    assert ours.area == pytest.approx(theirs.area, rel=2e-3)
    assert ours.volume == pytest.approx(theirs.volume, rel=1e-5)  # same sign: same orientation


@needs_warp
@pytest.mark.parametrize("level", [0.0, 0.3])
def test_warp_marching_cubes_matches_skimage_lewiner_on_cpu(level: float) -> None:
    volume = ellipsoid_logits()
    vertices, faces = warp_marching_cubes(torch.from_numpy(volume), level)
    assert_same_surface(vertices, faces, volume, level)


@needs_warp
def test_warp_marching_cubes_nan_counts_as_outside() -> None:
    volume = ellipsoid_logits()
    volume[:, :, :12] = np.nan  # as if the hierarchical decoder had skipped these nodes
    vertices, faces = warp_marching_cubes(torch.from_numpy(volume), 0.0)
    assert np.isfinite(vertices).all() and faces.min() >= 0 and faces.max() < len(vertices)
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    assert mesh.is_watertight  # closed on the last known nodes
    assert vertices[:, 2].min() == pytest.approx(12.0)


@needs_warp
def test_warp_marching_cubes_uncrossed_level_gives_an_empty_mesh() -> None:
    vertices, faces = warp_marching_cubes(torch.from_numpy(ellipsoid_logits()), 5.0)
    assert vertices.shape == (0, 3) and faces.shape == (0, 3)


@needs_cuda
@needs_warp
def test_marching_cubes_on_device_matches_skimage_lewiner() -> None:
    volume = ellipsoid_logits(64)
    vertices, faces = marching_cubes_on_device(torch.from_numpy(volume).to("cuda", torch.float16), 0.0)
    assert_same_surface(vertices, faces, volume.astype(np.float16).astype(np.float32), 0.0)


def test_pipeline_refuses_gpu_only_options_on_the_cpu_naming_them() -> None:
    from .conftest import TINY_MODELS

    with pytest.raises(ValueError, match="cuda_graphs needs a CUDA device"):
        ShapePipeline.from_pretrained(
            TINY_MODELS / "hunyuan3d-dit-v2-0", acceleration=AccelerationOptions(cuda_graphs=True)
        )
    with pytest.raises(ValueError, match="device_marching_cubes needs a CUDA device"):
        ShapePipeline.from_pretrained(
            TINY_MODELS / "hunyuan3d-dit-v2-0", acceleration=AccelerationOptions(device_marching_cubes=True)
        )


def test_pipeline_under_an_sdpa_restriction_gives_the_same_latents() -> None:
    from deployments.hunyuan3d import GenerationParams

    from .conftest import TINY_MODELS, load_image

    params = GenerationParams(num_inference_steps=2, octree_resolution=32)
    image = [load_image("object_rgba.png")]
    default = ShapePipeline.from_pretrained(TINY_MODELS / "hunyuan3d-dit-v2-0")
    restricted = ShapePipeline.from_pretrained(
        TINY_MODELS / "hunyuan3d-dit-v2-0", acceleration=AccelerationOptions(sdpa_backends=("math",))
    )
    torch.testing.assert_close(
        restricted.sample_latents(image, [5], params), default.sample_latents(image, [5], params), atol=1e-5, rtol=0
    )
