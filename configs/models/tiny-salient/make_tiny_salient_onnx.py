"""Build ``u2net-signature.onnx``: a tiny hand-written model with U2Net's inputs and outputs.

Run from the repository root: ``.venv/bin/python configs/models/tiny-salient/make_tiny_salient_onnx.py``.
Written with the ``onnx`` helper API (no torch, no training, no download). What it computes is simple but
meaningful on studio photos: how far each pixel's colour is from the mean colour of the image's border strips
(in RGB units, undoing the ImageNet normalisation the remover applies), blurred a little by a 5x5 Gaussian
convolution, through a steep sigmoid. It finds an object on a plain backdrop of any colour, and takes soft
shadows and strong gradients for object; a real network replaces it by pointing ``onnx_model`` at real weights
(see README.md).

Signature (as rembg's ``u2net.onnx``): input ``input.1`` float32 (N, 3, 320, 320), N dynamic; seven outputs
(N, 1, 320, 320) of probabilities, the first being the fused map. The tests build variants (a static batch of 1,
logits instead of probabilities) with :func:`build_model`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OUT = Path(__file__).resolve().parent / "u2net-signature.onnx"
SIZE = 320
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
# a pixel this far from the border's colour (RGB distance, 0..sqrt(3)) is even odds object; GAIN: how sharp
THRESHOLD = 0.3
GAIN = 20.0
STRIP = 8  # rows / columns of each border strip the backdrop colour is averaged over
OUTPUTS = 7  # U2Net: the fused map d0, then the six side outputs d1..d6


def gaussian_kernel(size: int = 5, sigma: float = 1.0) -> np.ndarray:
    """(1, 1, size, size) normalised Gaussian, the Conv weight."""
    ax = np.arange(size, dtype=np.float32) - (size - 1) / 2
    kernel = np.exp(-(ax[:, None] ** 2 + ax[None, :] ** 2) / (2 * sigma**2))
    return (kernel / kernel.sum()).reshape(1, 1, size, size).astype(np.float32)


def build_model(batch: int | None = None, output: str = "probability", size: int = SIZE) -> onnx.ModelProto:
    """The tiny salient-object model. ``batch`` None: a dynamic batch dim; ``output``: probability or logits."""
    if output not in ("probability", "logits"):
        raise ValueError(f"output must be probability or logits, got {output!r}")
    n: int | str = batch if batch is not None else "batch"
    last = np.iinfo(np.int64).max
    initializers = [
        numpy_helper.from_array(IMAGENET_STD.reshape(1, 3, 1, 1), "std"),
        numpy_helper.from_array(np.array([1], np.int64), "channel_axis"),
        numpy_helper.from_array(np.array([0], np.int64), "first"),
        numpy_helper.from_array(np.array([STRIP], np.int64), "strip"),
        numpy_helper.from_array(np.array([-STRIP], np.int64), "last_strip"),
        numpy_helper.from_array(np.array([last], np.int64), "end"),
        numpy_helper.from_array(np.array([2], np.int64), "rows"),
        numpy_helper.from_array(np.array([3], np.int64), "columns"),
        numpy_helper.from_array(np.array(0.25, np.float32), "quarter"),
        numpy_helper.from_array(gaussian_kernel(), "blur"),
        numpy_helper.from_array(np.array(GAIN, np.float32), "gain"),
        numpy_helper.from_array(np.array(-GAIN * THRESHOLD, np.float32), "bias"),
    ]
    strips = {"top": ("first", "strip", "rows"), "bottom": ("last_strip", "end", "rows")}
    strips |= {"left": ("first", "strip", "columns"), "right": ("last_strip", "end", "columns")}
    nodes = []
    for name, (start, stop, axis) in strips.items():
        nodes.append(helper.make_node("Slice", ["input.1", start, stop, axis], [name]))
        nodes.append(helper.make_node("ReduceMean", [name], [f"{name}_mean"], axes=[2, 3], keepdims=1))
    final = "logit" if output == "logits" else "probability"
    nodes += [
        helper.make_node("Sum", [f"{name}_mean" for name in strips], ["strip_sum"]),
        helper.make_node("Mul", ["strip_sum", "quarter"], ["backdrop"]),  # (N, 3, 1, 1), normalised units
        helper.make_node("Sub", ["input.1", "backdrop"], ["offset"]),  # (N, 3, H, W)
        helper.make_node("Mul", ["offset", "std"], ["rgb_offset"]),  # RGB units in [-1, 1]
        helper.make_node("Mul", ["rgb_offset", "rgb_offset"], ["squared"]),
        helper.make_node("ReduceSum", ["squared", "channel_axis"], ["squared_distance"], keepdims=1),  # (N, 1, H, W)
        helper.make_node("Sqrt", ["squared_distance"], ["distance"]),
        helper.make_node("Conv", ["distance", "blur"], ["blurred"], pads=[2, 2, 2, 2]),
        helper.make_node("Mul", ["blurred", "gain"], ["scaled"]),
        helper.make_node("Add", ["scaled", "bias"], ["logit"]),
    ]
    if output == "probability":
        nodes.append(helper.make_node("Sigmoid", ["logit"], ["probability"]))
    names = [f"d{i}" for i in range(OUTPUTS)]
    # the side outputs repeat the fused map: the remover, like rembg, reads only the first output
    nodes += [helper.make_node("Identity", [final], [name]) for name in names]
    graph = helper.make_graph(
        nodes,
        "tiny_salient",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [n, 3, size, size])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [n, 1, size, size]) for name in names],
        initializers,
    )
    # IR 8 / opset 17: loadable by any onnxruntime from 1.14 on
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8, producer_name="orfeas-tiny-salient"
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def main() -> None:
    onnx.save(build_model(), OUT)
    print(f"{OUT}: {OUT.stat().st_size} bytes")


if __name__ == "__main__":
    main()
