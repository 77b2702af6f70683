"""Process-wide runtime settings for fast CPU execution, applied by geofm's entry points.

Library code never calls these on import; the CLI, the benchmarks and the Lightning tasks do.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

#: Third-party loggers that log INFO lines on every run (cluster start-up, device summaries).
#: Loggers of the engines held at the CLI's level; Lightning's rank-zero loggers are named because
#: importing Lightning resets ``lightning.pytorch`` to INFO, and their own level survives that.
NOISY_LOGGERS = ("distributed", "lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning",
                 "lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
_ENGINE_LOG_LEVEL: int | None = None

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_TUNED = False


def tune_cpu_allocator(mmap_threshold: int = 32 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Let glibc's malloc keep large freed blocks instead of unmapping them.

    Transformer activations are tens of MB; by default glibc serves each one with a fresh
    ``mmap`` and returns it on free, so every step pays page faults and page zeroing on
    first touch. Raising the mmap and trim thresholds keeps those blocks in the heap (the
    role jemalloc/tcmalloc play in PyTorch's CPU tuning guides; its gain: ``bench/README.md``).
    Returns True when applied.
    """
    global _TUNED
    if _TUNED:
        return True
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        ok = libc.mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold)) == 1
        ok = libc.mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)) == 1 and ok
    except (OSError, AttributeError) as e:
        log.debug("mallopt unavailable: %s", e)
        return False
    _TUNED = ok
    return ok


def close_dask(client, cluster=None) -> None:
    """Close a Dask client (and the LocalCluster it was made for) without logging the connections that a
    cluster stopped mid-work closes."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        client.close()
        if cluster is not None:
            cluster.close()
    finally:
        logging.disable(previous)


def check_accelerator(accelerator: str, option: str = "trainer.accelerator") -> None:
    """:class:`~geofm.errors.ConfigError` when ``accelerator`` asks for a GPU this machine or torch build lacks.

    Lightning would fail later with its own traceback; ``auto`` and ``cpu`` always pass.
    """
    from geofm.errors import ConfigError

    name = str(accelerator).lower()
    if name in ("auto", "cpu"):
        return
    if name not in ("gpu", "cuda", "mps", "tpu", "xla", "hpu"):
        raise ConfigError(f"{option} must be auto, cpu, gpu, cuda or mps, got {accelerator!r}")
    import torch

    if name in ("gpu", "cuda") and not torch.cuda.is_available():
        why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise ConfigError(f"{option}={accelerator}: {why}; use {option}=cpu (or auto)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{option}=mps: MPS is not available here; use {option}=cpu (or auto)")


def quiet_engine_logs(level: int | None = None) -> None:
    """Hold the engines' loggers (:data:`NOISY_LOGGERS`) at ``level``, which the CLI sets once.

    Called without a level, re-applies the CLI's choice (a no-op outside the CLI): Lightning
    sets its loggers to INFO when it is first imported, which the CLI's lazy imports put after
    its own set-up, so the trainer builders call this again once Lightning is loaded.
    """
    global _ENGINE_LOG_LEVEL
    if level is not None:
        _ENGINE_LOG_LEVEL = level
    if _ENGINE_LOG_LEVEL is None:
        return
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(_ENGINE_LOG_LEVEL)
