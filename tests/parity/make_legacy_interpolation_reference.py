"""Reference DINOv2 tokens under the transformers < 4.45 position-embedding rule (run in its own small venv).

transformers >= 4.45 (and 5, which this project runs) resize DINOv2's position embeddings to an exact size;
older releases resized them by a scale factor of ``(S/14 + 0.1) / 37``. ``ImageConditioner`` reproduces the old
rule when asked (``position_interpolation="scale_factor"``); this script records what transformers 4.44.2
itself computes, on the tiny mini-turbo checkpoint's DINOv2 at 1022 px and at 601 px, so the test compares
against the library rather than against a re-derivation.

    python3 -m venv /tmp/tf444venv
    /tmp/tf444venv/bin/pip install torch==2.13.0 "transformers==4.44.2" "numpy<2" safetensors pyyaml
    /tmp/tf444venv/bin/python tests/parity/make_legacy_interpolation_reference.py

Writes ``tests/fixtures/parity/legacy_interpolation.npz``: per size, the tokens at every 41st position and each
channel's float64 sum over all tokens. The input is an analytic pattern (:func:`pattern`), so no image file is
needed; ``tests/hunyuan3d/test_position_interpolation.py`` builds the same one.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import torch
import transformers
import yaml
from safetensors.torch import load_file
from transformers import Dinov2Config, Dinov2Model

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", ".."))
FOLDER = os.path.join(REPO, "configs", "models", "tiny-Hunyuan3D-2", "hunyuan3d-dit-v2-mini-turbo")
OUT = os.path.join(REPO, "tests", "fixtures", "parity", "legacy_interpolation.npz")
SIZES = (1022, 601)
TOKEN_STRIDE = 41
PREFIX = "conditioner.main_image_encoder.model."


def pattern(size: int) -> torch.Tensor:
    """A smooth, deterministic normalised image (1, 3, size, size): the same in every environment."""
    axis = torch.linspace(-1.0, 1.0, size, dtype=torch.float32)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([torch.sin(3.0 * x + 2.0 * y), torch.cos(2.5 * x - 1.5 * y), torch.sin(4.0 * x * y)])[None]


def build() -> Dinov2Model:
    with open(os.path.join(FOLDER, "config.yaml")) as f:
        raw = yaml.safe_load(f)
    dinov2 = raw["conditioner"]["params"]["main_image_encoder"]["kwargs"]["config"]
    model = Dinov2Model(Dinov2Config(**dinov2)).eval()
    weights = load_file(os.path.join(FOLDER, "model.fp16.safetensors"))
    state = {key[len(PREFIX) :]: value.float() for key, value in weights.items() if key.startswith(PREFIX)}
    model.load_state_dict(state, strict=True)
    return model


def main() -> int:
    major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
    if (major, minor) >= (4, 45):
        print(f"needs transformers < 4.45 (the scale-factor rule), found {transformers.__version__}", file=sys.stderr)
        return 1
    torch.set_num_threads(1)
    model = build()
    arrays: dict[str, np.ndarray] = {}
    with torch.inference_mode():
        for size in SIZES:
            tokens = model(pixel_values=pattern(size)).last_hidden_state[0]
            arrays[f"tokens_{size}"] = tokens[::TOKEN_STRIDE].numpy()
            arrays[f"sums_{size}"] = tokens.double().sum(dim=0).numpy()
    arrays["transformers_version"] = np.array(transformers.__version__)
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes) with transformers {transformers.__version__}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
