"""Large arrays that JAX on CPU can share instead of copying."""

from __future__ import annotations

import numpy as np

ALIGN = 64  # XLA's CPU client adopts host buffers aligned to 64 bytes without a copy


def aligned_empty(shape, dtype=np.float32) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on a 64-byte boundary."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + ALIGN, np.uint8)
    start = (-raw.ctypes.data) % ALIGN
    return raw[start: start + nbytes].view(dtype).reshape(shape)
