"""CPU speed paths of the transformer blocks, kept apart from the architecture in :mod:`geofm.models.vit`.

* :func:`attention_in_fp32`: whether low-precision attention with gradients should run in fp32
  here (a measured, cached probe per shape).
* :class:`CastCachingLinear`: an ``nn.Linear`` that keeps its autocast weight copy between
  inference calls, so autocast inference casts every weight once, not once per forward.

Both change speed only: outputs are those of the plain torch ops (bitwise for the linear).
"""

from __future__ import annotations

import logging
import os
import time

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


_FP32_ATTENTION: dict[tuple, bool] = {}


def attention_in_fp32(q: torch.Tensor, attn_mask: torch.Tensor | None = None) -> bool:
    """Whether low-precision attention with gradients runs faster in fp32 here: a measured, cached probe.

    On some CPUs the bf16 flash-attention backward is slower than the fp32 one (figures in
    bench/README.md), on others not, and it depends on threads and shapes. So the first training
    call of each shape times
    both (best of 3, interleaved, on private random tensors: the global RNG is untouched) and
    keeps fp32 only if it is at least 10 % faster; the choice is logged. On GPUs, in inference
    and for fp32 inputs the native kernel runs. ``GEOFM_ATTENTION_FP32=0/1`` pins the choice (e.g.
    to make a bf16 run and its resumption bitwise alike on a machine where the two are close).
    """
    if q.dtype not in (torch.bfloat16, torch.float16) or q.device.type != "cpu" or not torch.is_grad_enabled():
        return False
    pinned = os.environ.get("GEOFM_ATTENTION_FP32")
    if pinned in ("0", "1"):
        return pinned == "1"
    key = (tuple(q.shape), q.dtype, torch.get_num_threads(), attn_mask is not None)
    if key not in _FP32_ATTENTION:
        native, upcast = _probe_attention(tuple(q.shape), q.dtype, attn_mask)
        _FP32_ATTENTION[key] = upcast < 0.9 * native
        log.info("attention %s %s with gradients: native %.1f ms, fp32 %.1f ms -> %s", tuple(q.shape),
                 q.dtype, native * 1e3, upcast * 1e3, "fp32" if _FP32_ATTENTION[key] else "native")
    return _FP32_ATTENTION[key]


def _probe_attention(shape: tuple, dtype: torch.dtype, attn_mask: torch.Tensor | None) -> tuple[float, float]:
    """Best-of-3 seconds of SDPA forward + backward in ``dtype`` and in fp32, interleaved."""
    gen = torch.Generator().manual_seed(0)
    with torch.autocast("cpu", enabled=False), torch.enable_grad():
        q, k, v = (torch.randn(shape, generator=gen).to(dtype).requires_grad_() for _ in range(3))
        grad = torch.randn(shape, generator=gen).to(dtype)
        mask = None if attn_mask is None else attn_mask.detach().clone()

        def native():
            F.scaled_dot_product_attention(q, k, v, attn_mask=mask).backward(grad)

        def upcast():
            F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask).to(dtype).backward(grad)

        best = [float("inf"), float("inf")]
        for rep in range(4):  # the first round warms up
            for i, fn in enumerate((native, upcast)):
                t0 = time.perf_counter()
                fn()
                if rep:
                    best[i] = min(best[i], time.perf_counter() - t0)
    return best[0], best[1]


class CastCachingLinear(nn.Linear):
    """``nn.Linear`` that keeps its autocast copy between inference calls.

    Under autocast, every call casts the fp32 weight (and bias) to the autocast dtype, and
    autocast's cache lives only as long as one autocast region: in inference (no grad) that
    is one cast of every weight per forward. Here the cast copy is kept until the weight
    changes (its version counter or storage), so repeated inference calls skip it; results
    are bitwise those of plain autocast (the same rounding of the same weights). Training (grad
    enabled) takes the plain path. Memory: one low-precision copy. Weights converted once with
    :func:`geofm.infer.precision.prepare_model` need neither autocast nor this cache.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device = x.device.type
        if torch.is_grad_enabled() or not torch.is_autocast_enabled(device):
            return super().forward(x)
        dtype = torch.get_autocast_dtype(device)
        w = self.weight
        key = (dtype, w.data_ptr(), w._version, None if self.bias is None else (self.bias.data_ptr(),
                                                                                  self.bias._version))
        cache = self.__dict__.get("_cast_cache")
        if cache is None or cache[0] != key:
            with torch.no_grad():
                cast = (w.to(dtype), None if self.bias is None else self.bias.to(dtype))
            # the source tensors are held with the copy: their storage cannot be freed and its
            # address reused by another weight (same data_ptr, version 0) while the key is cached
            cache = (key, cast, (w.detach(), None if self.bias is None else self.bias.detach()))
            self.__dict__["_cast_cache"] = cache
        weight, bias = cache[1]
        return F.linear(x.to(dtype), weight, bias)


__all__ = ["CastCachingLinear", "attention_in_fp32"]
