"""Number format of inference: pick it for a device, convert a model's weights to it once.

>>> precision = resolve_precision("auto", "cpu")   # "bf16" on CPUs with native bf16, else "fp32"
>>> model = prepare_model(model, precision)         # doctest: +SKIP

``fp32`` runs the model as trained. ``bf16`` / ``fp16`` convert every parameter and buffer
once (no per-call casts: the weights take half the memory and the GEMMs run in the low
precision kernels); the predictors cast each batch of tiles to the model's dtype and its
output back to fp32, so the softmax and the blending of overlapping tiles are computed in
fp32. Inside the model, torch's kernels keep the numerically sensitive reductions in fp32
for low-precision inputs (LayerNorm and BatchNorm statistics, the softmax of attention,
GELU), so no module needs to stay in fp32. Agreement with fp32 is measured in
docs/inference.md.

The default (``auto``) is bf16 where the hardware computes it natively: CUDA GPUs with bf16
(fp16 on older ones), CPUs whose flags say AVX-512 BF16 or AMX-BF16 (x86) or BF16 (Arm); fp32
elsewhere, where bf16 would be emulated and slower than fp32.
"""

from __future__ import annotations

import functools
import logging
import platform
from pathlib import Path

from geofm.errors import ConfigError

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16")
#: CPU flags (``/proc/cpuinfo``) of native bf16 arithmetic: x86 AVX-512 BF16 / AMX, Arm BF16
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The feature flags of the first CPU in ``cpuinfo`` (x86 ``flags``, Arm ``Features``); empty if unreadable."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return frozenset(value.split())
    return frozenset()


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (probed once per process from its feature flags)."""
    flags = cpu_flags()
    native = bool(flags & BF16_CPU_FLAGS)
    log.debug("CPU %s: native bf16 %s", platform.machine(), native)
    return native


def default_precision(device: str = "cpu") -> str:
    """bf16 where the hardware has it natively (fp16 on CUDA GPUs without bf16), else fp32."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if dev.type == "cpu":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    return "fp32"


def resolve_precision(name: str | None, device: str = "cpu") -> str:
    """``name`` (fp32, bf16, fp16; None or "auto": :func:`default_precision`) checked for ``device``."""
    if name is None or name == "auto":
        return default_precision(device)
    if name not in PRECISIONS:
        raise ConfigError(f"--precision must be one of auto, {', '.join(PRECISIONS)}; got {name!r}")
    if name != "fp32":
        import torch

        dev = torch.device(device)
        if dev.type == "cpu" and not cpu_has_native_bf16():
            log.warning("%s on a CPU without native bf16 arithmetic is emulated and usually slower than fp32", name)
        if dev.type == "cuda" and name == "bf16" and not torch.cuda.is_bf16_supported():
            raise ConfigError(f"--precision bf16: the GPU '{device}' has no bf16; use fp16 or fp32")
    return name


def torch_dtype(precision: str):
    """The torch dtype of a precision name."""
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def prepare_model(model, precision: str, device: str = "cpu"):
    """``model`` in eval mode on ``device`` with every floating parameter and buffer in ``precision``.

    The conversion happens once, in place (a model already in that dtype is left as it is); the
    fp32 weights are released, so a bf16 model holds half the memory. Returns the model.
    """
    dtype = torch_dtype(precision)
    model = model.to(device=device, dtype=dtype).eval()
    for m in model.modules():  # caches of derived tensors (interpolated position embeddings, cast copies)
        for name in ("_pos_cache",):
            cache = getattr(m, name, None)
            if isinstance(cache, dict):
                cache.clear()
        m.__dict__.pop("_cast_cache", None)
    return model


def model_dtype(model):
    """The dtype of the model's first floating parameter (fp32 for a model without one)."""
    import torch

    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


__all__ = ["PRECISIONS", "cpu_flags", "cpu_has_native_bf16", "default_precision", "model_dtype", "prepare_model",
           "resolve_precision", "torch_dtype"]
