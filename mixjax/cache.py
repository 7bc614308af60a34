"""Persistent JAX compilation cache: compile the fit (and other jitted code) once per machine.

``enable_compilation_cache()`` points JAX's persistent cache at a user cache directory
(``$XDG_CACHE_HOME/mixjax/jax`` or ``~/.cache/mixjax/jax``). ``MIXJAX_CACHE_DIR`` moves
it; an empty ``MIXJAX_CACHE_DIR`` turns it off. A second process then loads the compiled
executables instead of compiling them again (tracing still runs).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import pickle
from pathlib import Path

import jax

from mixjax.io import atomic_path

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


@functools.cache
def package_fingerprint() -> str:
    """:func:`source_fingerprint` of the mixjax package, once per process."""
    return source_fingerprint(Path(__file__).parent)


def source_fingerprint(root: Path) -> str:
    """sha256 (16 hex digits) of the JAX version, mixjax's version and the bytes of every
    ``.py`` file under ``root`` (by relative path, sorted): any edit to the package makes
    new export keys, whichever module the edit is in."""
    digest = hashlib.sha256(f"jax {jax.__version__}|mixjax {_version()}".encode())
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _version() -> str:
    try:
        return importlib.metadata.version("mixjax")
    except importlib.metadata.PackageNotFoundError:  # imported from a checkout, not installed
        return "uninstalled"


_LOADED: dict = {}  # file -> deserialized export, per process


def cached_call(name: str, fn, args: tuple, static: str = "", directory: str | Path | None = None):
    """``fn(*args)`` for a jitted ``fn``, skipping Python tracing in later processes.

    With the compilation cache on, the first process exports the traced function
    (``jax.export``, StableHLO) next to the cache, keyed by ``name``, ``static`` (the
    repr of the static arguments), the argument shapes/dtypes and
    :func:`package_fingerprint`; later processes deserialize it and only load the compiled
    executable from the cache. Errors of tracing, export or the call propagate; only a
    failure to write the export file (an unwritable or full cache directory, OSError)
    leaves it unwritten. ``directory``: where the exports go (default: JAX's compilation
    cache directory; none: plain ``fn(*args)``).
    """
    path = directory or jax.config.jax_compilation_cache_dir
    if not path:
        return fn(*args)
    from jax import export

    leaves, treedef = jax.tree.flatten(args)
    shapes = [jax.ShapeDtypeStruct(jax.numpy.shape(a), jax.numpy.result_type(a)) for a in leaves]
    key = hashlib.sha256(f"{name}|{static}|{treedef}|{shapes}|{package_fingerprint()}".encode()).hexdigest()[:24]
    file = Path(path) / f"mixjax-export-{name}-{key}.bin"
    loaded = _LOADED.get(file)
    if loaded is None and file.exists():
        out_tree, blob = pickle.loads(file.read_bytes())
        loaded = out_tree, export.deserialize(bytearray(blob))
    if loaded is None:
        # Plain lists in and out: custom pytrees (NamedTuples) need no serialization rules.
        out_tree = jax.tree.structure(jax.eval_shape(fn, *jax.tree.unflatten(treedef, shapes)))
        flat = jax.jit(lambda *xs: jax.tree.leaves(fn(*jax.tree.unflatten(treedef, xs))))
        loaded = out_tree, export.export(flat)(*shapes)
        try:
            with atomic_path(file) as tmp:
                tmp.write_bytes(pickle.dumps((out_tree, loaded[1].serialize())))
        except OSError:
            pass  # the cache directory is read-only or full: this process still uses the export
    _LOADED[file] = loaded
    return jax.tree.unflatten(loaded[0], loaded[1].call(*leaves))
