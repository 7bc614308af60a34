"""Compile the fit (and other jitted code) once per machine, and its first call fast.

- ``enable_compilation_cache()`` points JAX's persistent cache at a user cache directory
  (``$XDG_CACHE_HOME/mixjax/jax`` or ``~/.cache/mixjax/jax``). ``MIXJAX_CACHE_DIR`` moves
  it; an empty ``MIXJAX_CACHE_DIR`` turns it off.
- :func:`compiled` / :func:`cached_call`: the fit's and the solve's programs, traced once,
  exported next to the cache (a later process skips Python tracing too) and compiled
  ahead of time, so a thread can compile one while the caller computes.
- :data:`SMALL_PROGRAM` / :func:`options_for`: XLA options that compile small programs
  several times faster (README, Benchmarks: where a first call's time goes).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import pickle
import threading
from pathlib import Path

import jax
import numpy as np

from mixjax.io import atomic_path

ENV = "MIXJAX_CACHE_DIR"

# XLA compile options for small programs (the fit's and the solve's loops over a few
# dozen numbers), where optimising costs seconds of compile time and saves milliseconds
# of run time. On a 2-core CPU the 5-domain family fit compiles in 0.9 s of CPU time
# (0.7 s wall) instead of 5.2 s (2.9 s) with XLA's defaults (benchmarks/fit_solve.py has
# the whole-call figures).
SMALL_PROGRAM = {
    "xla_backend_optimization_level": 0,
    "xla_llvm_disable_expensive_passes": True,
    "xla_cpu_use_fusion_emitters": False,
}
SMALL_WORK = 32_768  # residuals per minimiser step below which a fit compiles as SMALL_PROGRAM


def options_for(work: int) -> dict | None:
    """Compile options for a fit that evaluates ``work`` residuals per step (all lanes).

    :data:`SMALL_PROGRAM` below :data:`SMALL_WORK`, else XLA's defaults: on RegMix's
    512-run table the defaults run the family fits in 2.7 s instead of 5.3 s, worth their
    longer compile (13 s instead of 6.7 s for the first call) from the second call on.
    """
    return SMALL_PROGRAM if work < SMALL_WORK else None


def small_program_jit(fn):
    """``jax.jit`` with :data:`SMALL_PROGRAM` compile options (usable as a decorator)."""
    return jax.jit(fn, compiler_options=SMALL_PROGRAM)


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
    """sha256 (16 hex digits) of the versions of jax and the libraries the programs call
    (optax, flax, jaxopt), mixjax's version and the bytes of every ``.py`` file under
    ``root`` (by relative path, sorted): any edit to the package, or an upgrade, makes new
    export keys, whichever module the edit is in."""
    versions = "|".join(f"{p} {_version(p)}" for p in ("jax", "jaxlib", "optax", "flax", "jaxopt", "mixjax"))
    digest = hashlib.sha256(versions.encode())
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:  # e.g. mixjax imported from a checkout
        return "uninstalled"


_COMPILED: dict = {}  # (program key, export directory) -> (output treedef, executable), per process
_KEY_LOCKS: dict = {}
_LOCK = threading.Lock()


def _is_64bit(shape: jax.ShapeDtypeStruct) -> bool:
    dtype = np.dtype(shape.dtype)
    return dtype.itemsize == (16 if dtype.kind == "c" else 8) and dtype.kind in "fiuc"


def _function_id(fn) -> str:
    """What ``fn`` is, stable across processes: its qualified name, and the arguments a
    ``functools.partial`` binds (two functions under one program name never share a key)."""
    if isinstance(fn, functools.partial):
        return f"{_function_id(fn.func)}({fn.args!r}, {sorted(fn.keywords.items())!r})"
    fn = _unjit(fn)
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"


def _unjit(fn):
    """The function a ``jax.jit`` wrapper compiles (a jit with compiler options cannot be
    nested in another); anything else as it is (``jax.grad`` and other transformations
    also set ``__wrapped__``, to what they transform)."""
    return fn.__wrapped__ if hasattr(fn, "lower") and hasattr(fn, "__wrapped__") else fn


def compiled(name: str, fn, args, directory: str | Path | None = None, compiler_options: dict | None = SMALL_PROGRAM):
    """``fn`` compiled ahead of time for arguments shaped like ``args``; returns a function
    of such arguments (the same pytree structure) giving ``fn``'s output.

    ``fn``: a pure function of array pytrees (or its ``jax.jit``), static arguments bound
    with ``functools.partial``. ``args``: arrays or
    ``jax.ShapeDtypeStruct`` leaves; nothing is run, so a thread can compile a program
    while the caller computes its inputs (the GIL is released while XLA compiles).
    The program is lowered and called with float64 on exactly when a leaf is 64-bit
    (jax's x64 flag is per thread; a caller's setting does not carry into a worker).

    Compiled once per process and key: ``name``, the function's qualified name and the
    arguments a ``partial`` binds, shapes/dtypes, ``compiler_options`` and the backend.
    With the compilation cache on, the first process also exports
    the traced function (``jax.export``, StableHLO) next to the cache, keyed as well by
    :func:`package_fingerprint`; later processes deserialize it (no Python tracing) and
    load the executable from the cache. Errors of tracing, export or compilation
    propagate; only a failure to write the export file (an unwritable or full cache
    directory, OSError) leaves it unwritten. ``directory``: where the exports go
    (default: JAX's compilation cache directory; none: no export).
    """
    leaves, treedef = jax.tree.flatten(args)
    # Arrays keep their dtype (a thread without float64 on must not canonicalise it away).
    shapes = [jax.ShapeDtypeStruct(np.shape(a), a.dtype if hasattr(a, "dtype") else jax.numpy.result_type(a)) for a in leaves]
    path = directory or jax.config.jax_compilation_cache_dir
    ident = (f"{name}|{_function_id(fn)}|{treedef}|{shapes}|{sorted((compiler_options or {}).items())}"
             f"|{jax.default_backend()}")  # an export is for one platform
    key, x64 = (ident, str(path)), any(map(_is_64bit, shapes))
    with _LOCK:  # one compile per key, also when threads ask for it at once
        lock = _KEY_LOCKS.setdefault(key, threading.Lock())
    with lock:
        if key not in _COMPILED:
            with jax.enable_x64(x64):
                _COMPILED[key] = _compile(name, fn, treedef, shapes, ident, path, compiler_options)
    out_tree, executable = _COMPILED[key]
    dtypes = [s.dtype for s in shapes]

    def call(*a):
        with jax.enable_x64(x64):
            leaves = [x if isinstance(x, jax.Array) else np.asarray(x, d) for x, d in zip(jax.tree.leaves(a), dtypes)]
            return jax.tree.unflatten(out_tree, executable(*leaves))

    return call


def _compile(name, fn, treedef, shapes, ident, path, compiler_options):
    """(output treedef, AOT executable of the flattened ``fn``), via an export file when ``path``."""
    from jax import export

    inner = _unjit(fn)
    out_trees = []  # filled while tracing: ``fn`` is traced once

    def flat(*xs):  # plain lists in and out: custom pytrees need no serialization rules
        leaves, out_tree = jax.tree.flatten(inner(*jax.tree.unflatten(treedef, xs)))
        out_trees.append(out_tree)
        return leaves

    program, file = jax.jit(flat), None
    if path:
        key = hashlib.sha256(f"{ident}|{package_fingerprint()}".encode()).hexdigest()[:24]
        file = Path(path) / f"mixjax-export-{name}-{key}.bin"
        loaded = _read_export(file)
        if loaded is not None:
            out_trees.append(loaded[0])
            program = loaded[1].call
        else:
            exported = export.export(program)(*shapes)
            program = exported.call
            try:
                with atomic_path(file) as tmp:
                    tmp.write_bytes(pickle.dumps((out_trees[0], exported.serialize())))
            except OSError:
                pass  # the cache directory is read-only or full: this process still uses the export
    executable = jax.jit(program, compiler_options=compiler_options).lower(*shapes).compile()
    return out_trees[0], executable


def _read_export(file: Path):
    """(output treedef, Exported) from an export file; None if it is missing or unreadable
    (a truncated or foreign file is exported again, not an error)."""
    from jax import export

    try:
        out_tree, blob = pickle.loads(file.read_bytes())
        return out_tree, export.deserialize(bytearray(blob))
    except Exception:  # missing, truncated or foreign: exported again from the source
        return None


def cached_call(name: str, fn, args, directory: str | Path | None = None, compiler_options: dict | None = SMALL_PROGRAM):
    """``fn(*args)`` through :func:`compiled` (same arguments)."""
    return compiled(name, fn, args, directory, compiler_options)(*args)
