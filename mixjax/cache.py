"""Persistent JAX compilation cache: compile the fit (and other jitted code) once per machine.

``enable_compilation_cache()`` points JAX's persistent cache at a user cache directory
(``$XDG_CACHE_HOME/mixjax/jax`` or ``~/.cache/mixjax/jax``). ``MIXJAX_CACHE_DIR`` moves
it; an empty ``MIXJAX_CACHE_DIR`` turns it off. A second process then loads the compiled
executables instead of compiling them again (tracing still runs).
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

ENV = "MIXJAX_CACHE_DIR"


def cache_dir() -> Path | None:
    """Where the cache lives, or None when ``MIXJAX_CACHE_DIR`` is set and empty."""
    if ENV in os.environ:
        value = os.environ[ENV].strip()
        return Path(value).expanduser() if value else None
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mixjax" / "jax"


def enable_compilation_cache() -> Path | None:
    """Turn on the persistent compilation cache; returns its directory (None: off).

    Every executable is cached, however quick to compile (the fit's are many small ones).
    Failing to create the directory leaves the cache off rather than failing the caller.
    """
    path = cache_dir()
    if path is None:
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
