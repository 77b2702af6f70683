"""One training step as geofm runs it: AdamW, mixed precision and ``torch.compile``.

The Lightning tasks (``geofm pretrain``, ``geofm finetune``) build their optimizer and
compile their model with the functions here, and :func:`train_step` assembles the same
pieces into a plain function, so that a benchmark times exactly what users get::

    >>> step = geofm.train_step(create_model("prithvi_eo_v1_100m"), precision="bf16-mixed", lr=1.5e-4)
    >>> loss = step(x)  # x (B, C, T, H, W): one forward, backward and AdamW step  # doctest: +SKIP

The pieces (what each is worth: ``bench/README.md``):

* fused AdamW (one kernel over all parameters instead of a dozen per tensor);
* ``torch.compile`` (inductor fuses LayerNorm, GELU, residual adds and the autocast casts
  around the GEMMs): optional, with an eager fallback; see :data:`COMPILE_DEFAULT`;
* the decoder's prediction layer and the loss only on the masked tokens
  (:meth:`PrithviMAE.forward` with ``return_pred=False``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from geofm.errors import ConfigError

log = logging.getLogger(__name__)

PRECISIONS = ("32", "bf16-mixed")
# torch.compile by default only on a device where it is measured to win (bench/README.md: on CPU
# the compilation costs minutes and the step gains nothing measurable; CUDA is not measured yet).
# ``compile=True`` forces it.
COMPILE_DEFAULT = {"cpu": False, "cuda": False}


# --------------------------------------------------------------------------- optimizer
def decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: weight decay on matrices only (not biases, norms, tokens, embeddings)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(".bias") or "token" in name or "pos_embed" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def adamw(params: Iterable, *, lr: float, betas: Sequence[float] = (0.9, 0.95), weight_decay: float = 0.05,
          fused: bool = True) -> torch.optim.AdamW:
    """AdamW with the fused kernel when every parameter is a float tensor on CPU or CUDA (else foreach).

    ``params``: parameters or parameter groups (e.g. :func:`decay_groups`). ``fused=False`` where
    something must see the gradients between backward and step unscaled by the optimizer
    (fp16 with a GradScaler and gradient clipping).
    """
    params = list(params)
    tensors = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
    fused = fused and bool(tensors) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in tensors) \
        and len({p.device for p in tensors}) == 1
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay,
                             fused=fused or None, foreach=None if fused else True)


def lr_factor(step: int, warmup: int, total: int, min_ratio: float = 0.0, schedule: str = "cosine") -> float:
    """Learning-rate multiplier at optimizer step ``step`` (of ``total``): linear warmup over ``warmup``
    steps, then ``cosine`` (half cosine) or ``poly`` (linear) decay to ``min_ratio``, or ``constant``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "poly":
        return min_ratio + (1.0 - min_ratio) * (1.0 - progress)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def clip_gradients(optimizer: torch.optim.Optimizer, value: float, algorithm: str | None = "norm") -> None:
    """Clip the gradients of ``optimizer``'s parameters by global norm (or by ``value`` when algorithm="value").

    For training without a GradScaler, where the gradients are final after backward; Lightning's
    own clipping refuses fused optimizers because they may unscale fp16 gradients themselves.
    """
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if algorithm == "value":
        torch.nn.utils.clip_grad_value_(params, value)
    else:
        torch.nn.utils.clip_grad_norm_(params, value)


# --------------------------------------------------------------------------- precision
def autocast(device_type: str, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context of a Lightning precision name ("32" or "bf16-mixed")."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if precision == "32":
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=torch.bfloat16)


# --------------------------------------------------------------------------- compile
def can_compile(device_type: str) -> str | None:
    """None if ``torch.compile``'s inductor backend can build kernels for ``device_type``, else the reason."""
    if device_type == "cpu":
        from torch._inductor import config as inductor_config

        cxx = inductor_config.cpp.cxx[-1] if inductor_config.cpp.cxx else None
        if cxx is None:
            found = any(shutil.which(c) for c in ("g++", "clang++", "c++"))
        else:
            found = shutil.which(cxx) is not None
        return None if found else "no C++ compiler on PATH (inductor builds CPU kernels with one)"
    if device_type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return "triton is not installed"
        return None
    return f"no inductor backend measured for device '{device_type}'"


def resolve_compile(compile: bool | str | None, device_type: str) -> bool:
    """``True``/``False`` as given; ``None`` or ``"auto"``: the measured default for the device, if it can compile."""
    if compile in (None, "auto"):
        if not COMPILE_DEFAULT.get(device_type, False):
            return False
        reason = can_compile(device_type)
        if reason:
            log.info("not compiling the model: %s", reason)
            return False
        return True
    if isinstance(compile, str):
        raise ConfigError(f"compile must be true, false or 'auto', got {compile!r}")
    return bool(compile)


class CompiledOrEager:
    """Calls ``torch.compile(fn)``; if compiling fails (no compiler, unsupported op), logs it once and
    runs ``fn`` eagerly from then on. Exceptions raised by ``fn`` itself pass through unchanged.

    Dynamo also wraps errors of the traced code itself (a shape mismatch in the model) in its own
    exception types, so after a compile-side error the call is repeated eagerly: if ``fn`` fails
    there too, that error is the model's and is raised, and compilation stays on.
    """

    def __init__(self, fn: Callable, **compile_kwargs):
        self.fn = fn
        self.compiled = torch.compile(fn, **compile_kwargs)
        self.failed = False

    def __call__(self, *args, **kwargs):
        if self.failed:
            return self.fn(*args, **kwargs)
        try:
            return self.compiled(*args, **kwargs)
        except (torch._dynamo.exc.TorchDynamoException, torch._inductor.exc.InductorError, OSError) as e:
            out = self.fn(*args, **kwargs)  # raises here if the error is the model's own
            log.warning("torch.compile failed, running eagerly: %s", str(e).splitlines()[0] if str(e) else e)
            self.failed = True
            return out


def compile_module(module: nn.Module) -> None:
    """Compile ``module.forward`` in place (the parameters and state-dict keys do not change), with the eager
    fallback of :class:`CompiledOrEager`. Random ops inside use the eager generator (same masks)."""
    import torch._inductor.config as inductor_config

    inductor_config.fallback_random = True  # torch.rand in a compiled graph draws what eager would
    module.forward = CompiledOrEager(module.forward)


# --------------------------------------------------------------------------- the step
def train_step(model: nn.Module, *, precision: str = "32", lr: float = 1.5e-4, weight_decay: float = 0.05,
               betas: Sequence[float] = (0.9, 0.95), compile: bool | str | None = "auto",
               mask_ratio: float | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """``step(x) -> loss``: one MAE forward, backward and AdamW step on ``x`` (B, C, T, H, W).

    Uses the optimizer (:func:`adamw` over :func:`decay_groups`), the autocast and the compile
    setting of ``geofm pretrain``; the loss is computed on the masked tokens only, as in training.
    The model is put in training mode; the returned loss is detached.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"train_step precision must be one of {list(PRECISIONS)}, got {precision!r}")
    from geofm.runtime import tune_cpu_allocator

    tune_cpu_allocator()  # process-wide, as geofm pretrain applies it
    device_type = next(model.parameters()).device.type
    model.train()
    opt = adamw(decay_groups(model, weight_decay), lr=lr, betas=betas, weight_decay=weight_decay)
    if resolve_compile(compile, device_type):
        compile_module(model)

    def step(x: torch.Tensor) -> torch.Tensor:
        with autocast(device_type, precision):
            loss = model(x, mask_ratio, return_pred=False)[0]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    step.optimizer = opt  # type: ignore[attr-defined]
    return step


__all__ = ["PRECISIONS", "adamw", "autocast", "can_compile", "clip_gradients", "compile_module", "decay_groups", "lr_factor", "resolve_compile",
           "train_step"]
