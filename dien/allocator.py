"""Keep freed memory in the process instead of handing it back to the OS after every allocation (glibc).

Scoring a batch allocates tensors of several MB (each candidate's attention inputs, the MLP's activations; a
teacher's far more). glibc serves every allocation above its mmap threshold (32 MiB at most) with a fresh ``mmap``
and unmaps it on free, so each batch can page-fault that memory in again. ``jobs/bench_allocator.py`` measures
both modes in fresh processes (one core, 16 requests x 100 candidates): since the scorer reads each request's
projections in place (``dien.kernels.augru_last``), the student (hidden 32) scores 50.3k candidates/s with glibc's
defaults and 48.9k with :func:`retain_freed_memory` (no gain left), the teacher (hidden 108) 7.8k and 9.8k (1.27x).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def retain_freed_memory(trim_threshold_bytes: int = 1 << 30) -> bool:
    """Serve every allocation from the heap (no per-allocation ``mmap``) and give freed heap memory back to
    the OS only once more than ``trim_threshold_bytes`` of it sits unused at the top. Process-wide.

    Returns True when applied, False where the C library has no ``mallopt`` (not glibc: musl, macOS).
    """
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        logger.info("mallopt is not available here; freed memory is returned to the OS as usual")
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold_bytes))
