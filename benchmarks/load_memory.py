"""Peak host memory of loading a model folder: eager (fp32 modules, whole file read, copy) vs meta-device init.

Each case runs in a fresh subprocess and reports its peak RSS (``resource.getrusage`` ``ru_maxrss``) after
the imports and after ``ShapePipeline.from_pretrained``, so the numbers do not leak between cases.

Tiny committed folder only:
    .venv/bin/python benchmarks/load_memory.py
Plus a larger random-weight checkpoint written to /tmp first (real-size hunyuan3d-dit-v2-mini DiT and VAE,
a DINOv2-giant-width conditioner with --dino-layers of its 40 layers; fp16 safetensors in the released layout):
    .venv/bin/python benchmarks/load_memory.py --large /tmp/orfeas_load_memory --dino-layers 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TINY = REPO / "configs" / "models" / "tiny-Hunyuan3D-2" / "hunyuan3d-dit-v2-0"
DTYPES = ("fp32", "fp16")
INITS = ("eager", "meta")


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child(folder: Path, init: str, dtype_name: str) -> dict[str, float]:
    """One load in this process; peak RSS after the imports and after loading (MiB)."""
    from deployments.hunyuan3d import ShapePipeline

    torch.set_num_threads(1)
    dtype = {"fp32": torch.float32, "fp16": torch.float16}[dtype_name]
    before = _peak_mib()
    start = time.perf_counter()
    pipeline = ShapePipeline.from_pretrained(folder, dtype=dtype, init=init)
    seconds = time.perf_counter() - start
    weights = sum(
        t.numel() * t.element_size()
        for module in (pipeline.dit, pipeline.vae, pipeline.conditioner)
        for t in module.state_dict().values()
    )
    return {"peak_before_mib": before, "peak_mib": _peak_mib(), "seconds": seconds, "weights_mib": weights / 2**20}


def write_large_folder(root: Path, dino_layers: int) -> Path:
    """Random fp16 weights for real-size mini DiT + VAE in the released layout (upstream key names)."""
    from safetensors.torch import save_file

    from deployments.hunyuan3d.config import named_config
    from deployments.hunyuan3d.meta_init import parameters_on_meta
    from deployments.hunyuan3d.pipeline import _build_modules

    config = named_config("hunyuan3d-dit-v2-mini")
    dinov2 = dict(config.conditioner.dinov2, num_hidden_layers=dino_layers)
    config = replace(config, conditioner=replace(config.conditioner, dinov2=dinov2), name="load-memory")
    folder = root / f"hunyuan3d-dit-v2-mini-dino{dino_layers}"
    if (folder / "model.fp16.safetensors").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    import yaml

    (folder / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    with parameters_on_meta():  # shapes only: no fp32 copy while writing either
        dit, vae, conditioner = _build_modules(config)
    generator = torch.Generator().manual_seed(0)
    tensors: dict[str, torch.Tensor] = {}
    for prefix, module in (("model", dit), ("vae", vae), ("conditioner", conditioner)):
        for name, meta in module.state_dict().items():
            value = (torch.randn(meta.shape, generator=generator) * 0.02).to(torch.float16)
            tensors[f"{prefix}.{name}"] = value
    save_file(_upstream_names(tensors), str(folder / "model.fp16.safetensors"), metadata={"format": "pt"})
    return folder


# our DINOv2 names (transformers 5) -> the released ones (transformers 4): checkpoint.map_key, inverted
_RELEASED_NAMES = (
    (".attention.q_proj.", ".attention.attention.query."),
    (".attention.k_proj.", ".attention.attention.key."),
    (".attention.v_proj.", ".attention.attention.value."),
    (".attention.o_proj.", ".attention.output.dense."),
    (".mlp.down_proj.", ".mlp.weights_out."),
)


def _upstream_names(ours: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Flat ``component.name`` dict with our names -> the released key layout (SwiGLU gate + up fused)."""
    out = {}
    for key, value in ours.items():
        component, _, name = key.partition(".")
        if component != "conditioner":
            out[key] = value
            continue
        if ".mlp.up_proj." in name:
            continue  # fused with its gate below
        name = "conditioner.main_image_encoder." + name
        for mine, released in _RELEASED_NAMES:
            name = name.replace(mine, released)
        if ".mlp.gate_proj." in name:
            up = ours[key.replace(".mlp.gate_proj.", ".mlp.up_proj.")]
            out[name.replace(".mlp.gate_proj.", ".mlp.weights_in.")] = torch.cat([value, up], dim=0)
        else:
            out[name] = value
    return out


def run_case(folder: Path, init: str, dtype: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(folder), "--init", init, "--dtype", dtype],
        check=True,
        capture_output=True,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--large", type=Path, help="also write and measure a larger random checkpoint under this folder")
    p.add_argument("--dino-layers", type=int, default=2, help="DINOv2-giant layers of the large checkpoint (of 40)")
    p.add_argument("--only-large", action="store_true", help="skip the tiny folder")
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--write-large", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--init", choices=INITS, default="meta", help=argparse.SUPPRESS)
    p.add_argument("--dtype", choices=DTYPES, default="fp32", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.init, args.dtype)))
        return 0

    if args.write_large:
        print(write_large_folder(args.write_large, args.dino_layers))
        return 0

    folders = [] if args.only_large else [TINY]
    if args.large:
        # written in its own process: a child inherits its parent's peak RSS through fork, so the parent
        # must never hold the large tensors itself
        written = subprocess.run(
            [sys.executable, __file__, "--write-large", str(args.large), "--dino-layers", str(args.dino_layers)],
            check=True,
            capture_output=True,
            text=True,
        )
        folders.append(Path(written.stdout.strip().splitlines()[-1]))
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}, 1 torch thread")
    print(
        "| folder | file MiB | target dtype | init | weights MiB | peak RSS after imports MiB | peak RSS MiB "
        "| peak - imports MiB | load s |"
    )
    print("| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for folder in folders:
        file_mib = (folder / "model.fp16.safetensors").stat().st_size / 2**20
        for dtype in DTYPES:
            for init in INITS:
                r = run_case(folder, init, dtype)
                print(
                    f"| {folder.name} | {file_mib:.0f} | {dtype} | {init} | {r['weights_mib']:.0f} "
                    f"| {r['peak_before_mib']:.0f} | {r['peak_mib']:.0f} | {r['peak_mib'] - r['peak_before_mib']:.0f} "
                    f"| {r['seconds']:.1f} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
