"""Building modules without allocating their weights, then materialising them from a checkpoint.

A real-size model built the ordinary way allocates every parameter in fp32 on the host and runs its random
init (4.8 GB and tens of seconds for hunyuan3d-dit-v2-0's 1.1B DiT parameters alone) only for the checkpoint
to overwrite it. Inside :func:`parameters_on_meta` each parameter goes to the meta device as it is
registered (no storage; the init then runs on meta, for free), while buffers stay real: the non-persistent
ones (Fourier frequencies, image mean/std) are not in a checkpoint and must be computed by the module's own
``__init__``. :func:`load_strict` with ``assign=True`` then makes the checkpoint tensors, already in the
target dtype on the target device, the parameters.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

# register_parameter is patched on the class: one build at a time per process
_PATCH_LOCK = threading.Lock()


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Modules constructed inside get meta-device parameters and real buffers."""
    original = nn.Module.register_parameter

    def register_on_meta(self: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            # keeps the Parameter subclass and requires_grad; the host tensor it came from is freed here
            param = type(param)(param.to("meta"), requires_grad=param.requires_grad)
        original(self, name, param)

    with _PATCH_LOCK:
        nn.Module.register_parameter = register_on_meta  # type: ignore[method-assign]
        try:
            yield
        finally:
            nn.Module.register_parameter = original  # type: ignore[method-assign]


def check_materialised(module: nn.Module, what: str) -> None:
    """Raise naming the first parameter or buffer still on the meta device (a key the loader did not fill)."""
    for name, tensor in (*module.named_parameters(), *module.named_buffers()):
        if tensor.device.type == "meta":
            raise RuntimeError(f"{what}: {name} was not loaded from the checkpoint (still on the meta device)")
