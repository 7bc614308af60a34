import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mixjax
from mixjax import cache


def test_package_fingerprint_covers_every_module(tmp_path):
    """Keyed on all of the package's files, not a list of them: an edit anywhere (or a new
    module, e.g. a module split into a package) makes new keys."""
    root = Path(mixjax.__file__).parent
    copy = tmp_path / "mixjax"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert cache.source_fingerprint(copy) == cache.source_fingerprint(root) == cache.package_fingerprint()
    law = copy / "mixing" / "law.py"
    law.write_text(law.read_text() + "\n# an edit\n")
    edited = cache.source_fingerprint(copy)
    assert edited != cache.source_fingerprint(root)
    (copy / "mixing" / "newpkg").mkdir()
    (copy / "mixing" / "newpkg" / "objectives.py").write_text("X = 1\n")
    assert len({cache.source_fingerprint(copy), edited, cache.source_fingerprint(root)}) == 3


def test_cached_call_exports_once_then_loads_without_tracing(tmp_path, monkeypatch):
    traces = []

    @jax.jit
    def fn(x, scale):
        traces.append(1)
        return {"y": x * scale, "s": jnp.sum(x)}

    x = np.arange(4.0, dtype=np.float32)
    first = cache.cached_call("double", fn, (x, np.float32(2.0)), directory=tmp_path)
    files = list(tmp_path.glob("mixjax-export-double-*.bin"))
    assert len(files) == 1 and traces
    monkeypatch.setattr(cache, "_COMPILED", {})  # as a fresh process
    traces.clear()
    again = cache.cached_call("double", fn, (x, np.float32(2.0)), directory=tmp_path)
    assert traces == []  # loaded from the file, not traced
    np.testing.assert_array_equal(again["y"], first["y"])
    assert float(again["s"]) == float(first["s"]) == 6.0
    cache.cached_call("double", fn, (np.arange(5.0, dtype=np.float32), np.float32(2.0)), directory=tmp_path)
    assert len(list(tmp_path.glob("mixjax-export-double-*.bin"))) == 2  # other shapes: another key


def test_cached_call_lets_real_errors_surface(tmp_path):
    """A function jax.export cannot serialize (a host callback) is an error, not a silent
    fallback that never caches."""

    @jax.jit
    def fn(x):
        return jax.pure_callback(lambda v: np.asarray(v) + 1, jax.ShapeDtypeStruct(x.shape, x.dtype), x)

    with pytest.raises(Exception, match="(?i)callback"):
        cache.cached_call("callback", fn, (np.ones(3, np.float32),), directory=tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing written
