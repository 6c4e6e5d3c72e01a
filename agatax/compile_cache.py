"""A persistent XLA compilation cache, so that a second ``agatax score`` does not compile again.

JAX's persistent cache keeps compiled executables on disk keyed by the computation, the shapes, the
device and the JAX/XLA versions; a later process with the same exam shape loads the executable instead of
compiling it (2-4 s on a CPU). The command line turns it on; library users may call :func:`enable`.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["enable", "cache_dir"]

MIN_COMPILE_SECONDS = 0.2  # smaller computations compile faster than they load


def cache_dir() -> Path | None:
    """``$AGATAX_CACHE_DIR`` (empty: no cache), else ``$XDG_CACHE_HOME/agatax/xla``, else
    ``~/.cache/agatax/xla``."""
    explicit = os.environ.get("AGATAX_CACHE_DIR")
    if explicit is not None:
        return Path(explicit).expanduser() if explicit.strip() else None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "agatax" / "xla"


def enable(path: str | os.PathLike | None = None) -> Path | None:
    """Turn JAX's persistent compilation cache on at ``path`` (default :func:`cache_dir`); returns the
    folder used, or None when caching is off or the folder cannot be written (then nothing changes: every
    process compiles, as without a cache)."""
    import jax

    folder = Path(path).expanduser() if path is not None else cache_dir()
    if folder is None:
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK | os.X_OK):
            return None
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    return folder
