"""Trainer plugins: distributed strategies (DDP, FSDP that also runs on CPU) and safe checkpoint loading.

The Trainer owns devices, precision and the distributed strategy: a task's ``trainer.strategy``
is ``auto`` (one process, or DDP when several devices), ``ddp`` or ``fsdp``. On CPU, FSDP runs with
the gloo backend through :class:`CPUFSDPStrategy` (Lightning's own check refuses CPU).

Every checkpoint the Trainer reads (``trainer.resume``, auto-resume of ``last.ckpt``) goes
through :func:`geofm.models.checkpoints.load_torch_file` (:class:`SafeCheckpointIO`), whatever
the environment says about torch's ``weights_only`` default.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO, reading through geofm's safe reader (never unpickles code).

    ``preloaded`` = (path, object): a checkpoint the caller has read already (to refuse a bad one
    before anything is written); the first read of that path gets it instead of a second unpickling.
    """

    def __init__(self, preloaded: tuple[str, object] | None = None):
        super().__init__()
        self._preloaded = preloaded

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        from geofm.models.checkpoints import load_torch_file

        if self._preloaded is not None and os.path.abspath(path) == os.path.abspath(self._preloaded[0]):
            obj, self._preloaded = self._preloaded[1], None
            return obj
        return load_torch_file(path)


def clip_gradients_for(module, optimizer, value: float | None, algorithm: str | None) -> None:
    """``configure_gradient_clipping`` of geofm's tasks: under FSDP its own sharded ``clip_grad_norm_``;
    without a GradScaler geofm's clip (the gradients are final after backward, and Lightning's own
    clipping refuses the fused AdamW); with one (fp16) Lightning's, which unscales first."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    from geofm.training import clip_gradients

    if not value:
        return
    wrapped = module.trainer.strategy.model
    if isinstance(wrapped, FullyShardedDataParallel):
        wrapped.clip_grad_norm_(value)
    elif getattr(module.trainer.precision_plugin, "scaler", None) is None:
        clip_gradients(optimizer, value, algorithm)
    else:
        module.clip_gradients(optimizer, value, algorithm)


def make_strategy(name: str):
    """The Trainer's strategy for ``name``: "auto", DDP (gloo on CPU, nccl on GPU) or FSDP (also on CPU, gloo)."""
    s = name
    if s == "ddp":
        return DDPStrategy(find_unused_parameters=False)
    if s == "fsdp":
        from geofm.models.vit import Block

        return CPUFSDPStrategy(auto_wrap_policy={Block}, sharding_strategy="FULL_SHARD",
                               state_dict_type="full")
    return "auto"


@contextmanager
def _cpu_full_state_dict(strategy):
    """On CPU, gather full state dicts without ``offload_to_cpu`` (which crashes when params already are on CPU).

    Lightning's FSDP strategy builds its full-state-dict context in a module-level helper; it is
    swapped for the duration of the call.
    """
    import lightning.pytorch.strategies.fsdp as lfsdp

    if strategy.root_device.type != "cpu":
        yield
        return

    def ctx(module, world_size, rank0_only=True):
        from torch.distributed.fsdp import FullStateDictConfig, StateDictType
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from torch.distributed.fsdp.api import FullOptimStateDictConfig

        return FSDP.state_dict_type(module=module, state_dict_type=StateDictType.FULL_STATE_DICT,
                                    state_dict_config=FullStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only),
                                    optim_state_dict_config=FullOptimStateDictConfig(offload_to_cpu=False,
                                                                                     rank0_only=rank0_only))

    saved = lfsdp._get_full_state_dict_context
    lfsdp._get_full_state_dict_context = ctx
    try:
        yield
    finally:
        lfsdp._get_full_state_dict_context = saved


class CPUFSDPStrategy(FSDPStrategy):
    """Lightning's FSDPStrategy, also with ``accelerator="cpu"`` (gloo): torch FSDP runs on CPU.

    Lightning refuses FSDP without a GPU (a check on the exact class, which a subclass passes);
    torch's FSDP looks for an accelerator unless ``device_id`` names the CPU; and full state
    dicts are gathered without ``offload_to_cpu``, which crashes when parameters are on the CPU.
    On GPUs it behaves exactly like ``FSDPStrategy``.
    """

    def _setup_model(self, model):
        if self.root_device.type != "cpu":
            return super()._setup_model(model)
        from torch.distributed.fsdp import FullyShardedDataParallel

        return FullyShardedDataParallel(module=model, cpu_offload=self.cpu_offload,
                                        mixed_precision=self.mixed_precision_config,
                                        sharding_strategy=self.sharding_strategy,
                                        device_id=torch.device("cpu"), **self.kwargs)

    def lightning_module_state_dict(self):
        with _cpu_full_state_dict(self):
            return super().lightning_module_state_dict()

    def optimizer_state(self, optimizer):
        with _cpu_full_state_dict(self):
            return super().optimizer_state(optimizer)

    def load_checkpoint(self, checkpoint_path, weights_only=None):
        from pathlib import Path

        from geofm.models.checkpoints import load_torch_file

        if Path(checkpoint_path).is_file():  # FSDP reads full checkpoints with its own unpickler: check first
            load_torch_file(checkpoint_path)
        with _cpu_full_state_dict(self):
            return super().load_checkpoint(checkpoint_path, weights_only)
