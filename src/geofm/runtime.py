"""Process-wide runtime settings for fast CPU execution, applied by geofm's entry points.

Library code never calls these on import; the CLI, the benchmarks and the Lightning tasks do.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_TUNED = False


def tune_cpu_allocator(mmap_threshold: int = 32 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Let glibc's malloc keep large freed blocks instead of unmapping them.

    Transformer activations are tens of MB; by default glibc serves each one with a fresh
    ``mmap`` and returns it on free, so every step pays page faults and page zeroing on
    first touch. Raising the mmap and trim thresholds keeps those blocks in the heap (the
    role jemalloc/tcmalloc play in PyTorch's CPU tuning guides). Measured here: about 7 %
    faster Prithvi-100M encoder inference on 2 threads. Returns True when applied.
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
