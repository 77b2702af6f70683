"""Number format of inference: pick it for a device, convert a model's weights to it once.

>>> precision = resolve_precision("auto", "cpu")   # "bf16" on CPUs with native bf16, else "fp32"
>>> model = prepare_model(model, precision)         # doctest: +SKIP

``fp32`` runs the model as trained. ``bf16`` / ``fp16`` convert the weights of the transformer
blocks (attention and MLP: nearly all of a Prithvi model's weights and FLOPs) once, in place: no
per-call weight casts, half the memory, and the GEMMs run in the low-precision kernels. Each
block casts its input to the low precision and its output back to fp32, so the residual stream
between blocks, the patch embedding, the neck, decoder and head, the softmax of the class
probabilities and the blending of overlapping tiles stay fp32; inside a block torch's kernels
keep the reductions in fp32 (LayerNorm statistics, the softmax of attention). Agreement with
fp32 is measured in docs/inference.md.

The default (``auto``) is bf16 where the hardware computes it natively: CUDA GPUs with bf16
(fp16 on older ones), CPUs whose flags say AVX-512 BF16 or AMX-BF16 (x86) or BF16 (Arm); fp32
elsewhere, where bf16 would be emulated and slower than fp32.
"""

from __future__ import annotations

import functools
import logging
import platform
from pathlib import Path

import torch
from torch import nn

from geofm.errors import ConfigError

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16")
#: samples per decoder call in inference, for the models that can split it (``decoder_chunk``)
DECODER_CHUNK = 2
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
        dev = torch.device(device)
        if dev.type == "cpu" and not cpu_has_native_bf16():
            log.warning("%s on a CPU without native bf16 arithmetic is emulated and usually slower than fp32", name)
        if dev.type == "cuda" and name == "bf16" and not torch.cuda.is_bf16_supported():
            raise ConfigError(f"--precision bf16: the GPU '{device}' has no bf16; use fp16 or fp32")
    return name


def torch_dtype(precision: str):
    """The torch dtype of a precision name."""
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def weights_dtype(precision: str) -> torch.dtype | None:
    """The dtype the transformer blocks' weights are read in for ``precision`` (None: as stored, fp32).

    Passed to :func:`geofm.models.load_finetuned` (``block_dtype``), the weights are converted
    while the checkpoint is read: the fp32 weights are never all in memory at once.
    """
    return None if precision == "fp32" else torch_dtype(precision)


def _cast(a, dtype: torch.dtype, channels_last: bool):
    if isinstance(a, (list, tuple)):
        return type(a)(_cast(x, dtype, channels_last) for x in a)
    if not (torch.is_tensor(a) and a.is_floating_point()):
        return a
    a = a.to(dtype)
    return a.contiguous(memory_format=torch.channels_last) if channels_last and a.dim() == 4 else a


def _cast_inputs(module, args: tuple, kwargs: dict):
    return _cast(args, module.inference_dtype, module.channels_last_inputs), kwargs


def _cast_output(module, args: tuple, kwargs: dict, out):
    return out.float().contiguous() if torch.is_tensor(out) else out


def _set_dtype(module: nn.Module, dtype: torch.dtype) -> None:
    """The floating tensors ``module`` holds itself (not its children's) in ``dtype``."""
    for p in module.parameters(recurse=False):
        if p.is_floating_point() and p.dtype != dtype:
            p.data = p.data.to(dtype)
    for name, b in module.named_buffers(recurse=False):
        if b.is_floating_point() and b.dtype != dtype:
            module._buffers[name] = b.to(dtype)


def prepare_model(model: nn.Module, precision: str, device: str | torch.device = "cpu") -> nn.Module:
    """``model`` in eval mode on ``device``, its transformer blocks' weights converted to ``precision``.

    The transformer blocks (:class:`geofm.models.vit.Block`: attention and MLP, nearly all the
    weights and FLOPs of a Prithvi model) and the decoders that declare ``low_precision``
    (UperNet) hold their weights in bf16/fp16, converted once, in place (the fp32 copies are
    released); each casts its input to that dtype and its output back, so the residual stream
    between blocks, the patch embedding, the necks, the other decoders and the heads stay fp32.
    Tensors already in their dtype (converted while loading) are left as they are. A model with a
    ``decoder_chunk`` runs its decoder :data:`DECODER_CHUNK` samples at a time. Calling it
    again with another precision converts them again (from their current values). Returns the
    model.
    """
    from geofm.models.checkpoints import declares_low_precision, low_precision_modules

    dtype = torch_dtype(precision)
    model = model.to(device).eval()
    if hasattr(model, "decoder_chunk"):  # bounds the decoder's activations (released v2 models)
        model.decoder_chunk = DECODER_CHUNK
    low = low_precision_modules(model)
    in_low = {id(m) for b in low for m in b.modules()}
    for m in model.modules():  # only what is not yet in its dtype is converted (loading may have done it)
        _set_dtype(m, dtype if id(m) in in_low else torch.float32)
    for b in low:
        if declares_low_precision(b):
            b.to(memory_format=torch.channels_last if precision != "fp32" else torch.contiguous_format)
    if precision == "fp32":
        for b in low:
            b.__dict__.pop("inference_dtype", None)
            b.__dict__.pop("channels_last_inputs", None)
            for handle in b.__dict__.pop("_precision_hooks", ()):
                handle.remove()
        return model
    for b in low:
        b.inference_dtype, b.channels_last_inputs = dtype, declares_low_precision(b)
        if not b.__dict__.get("_precision_hooks"):
            b._precision_hooks = (b.register_forward_pre_hook(_cast_inputs, with_kwargs=True),
                                  b.register_forward_hook(_cast_output, with_kwargs=True))
    for m in model.modules():
        m.__dict__.pop("_cast_cache", None)  # autocast copies of the fp32 weights
    return model


def agreement(reference: torch.Tensor, other: torch.Tensor) -> dict[str, float]:
    """How two (B, K, H, W) logits agree: fraction of equal argmax classes, largest softmax difference."""
    ref, oth = reference.float(), other.float()
    return {"classes_equal": float((ref.argmax(1) == oth.argmax(1)).float().mean()),
            "max_prob_diff": float((ref.softmax(1) - oth.softmax(1)).abs().max()),
            "max_rel_logit_diff": float((ref - oth).abs().max() / ref.abs().max().clamp_min(1e-12))}


__all__ = ["PRECISIONS", "agreement", "cpu_flags", "cpu_has_native_bf16", "default_precision", "prepare_model",
           "resolve_precision", "torch_dtype", "weights_dtype"]
