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


def test_compiled_keeps_float64_in_a_thread_without_x64(tmp_path):
    """float64 is a per-thread setting in jax: a program compiled from a worker thread
    (the fit compiles ahead in one) must still be the float64 program the caller runs."""
    from concurrent.futures import ThreadPoolExecutor

    x = np.linspace(0.0, 1.0, 5) + 1e-12  # float64; the 1e-12 is lost in float32
    with ThreadPoolExecutor(max_workers=1) as pool:
        out = pool.submit(lambda: np.asarray(cache.compiled("x64", lambda a: a * 3.0, (x,), directory=tmp_path)(x))).result()
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, x * 3.0)


def test_concurrent_requests_for_one_program_compile_it_once(tmp_path, monkeypatch):
    """The fit asks for a program from its compile-ahead thread and from the main thread;
    the second request waits for the first compile instead of repeating it."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    calls, original = [], cache._compile

    def slow_compile(*args):
        calls.append(threading.get_ident())
        time.sleep(0.2)
        return original(*args)

    monkeypatch.setattr(cache, "_compile", slow_compile)
    x = np.arange(3.0, dtype=np.float32)
    with ThreadPoolExecutor(max_workers=4) as pool:
        outs = list(pool.map(lambda _: np.asarray(cache.cached_call("once", lambda a: a + 1.0, (x,), directory=tmp_path)), range(4)))
    assert len(calls) == 1
    for out in outs:
        np.testing.assert_array_equal(out, x + 1.0)


def test_small_fits_compile_fast_and_large_ones_for_speed():
    assert cache.options_for(5 * 34 * 32) == cache.SMALL_PROGRAM  # a 5-domain 4k+1 table's family fit
    assert cache.options_for(13 * 12 * 512) is None  # RegMix's 512 runs x 13 domains x (2 starts + 10 folds)


def test_a_first_fit_compiles_a_few_programs_not_every_operation(tmp_path):
    """The first call of mixjax.fit on a machine is mostly compile time. Host-side law
    evaluations go through one compiled program each; run eagerly they compiled every jnp
    operation separately (72 compiles for a 5-domain fit; 33 now, of which the decision's
    plausible laws and path are 4: the families' refits, the strength path, the laws at the
    baselines, the prior's projection)."""
    import subprocess
    import sys

    from helpers import subprocess_env
    from mixjax.mixing.design import perturbation_runs
    from helpers import law_losses
    from mixjax.mixing.law import LawParams
    from mixjax.mixing.runs import write_run_table

    k = 4
    truth = LawParams(*(np.full(k, v) for v in (0.3, 1.0, 0.2, 0.5, 1.1)))
    tokens = perturbation_runs(np.ones(k))
    write_run_table(tmp_path / "runs.csv", tuple(f"d{i}" for i in range(k)), tokens, law_losses(truth, tokens))
    code = (
        "import jax, sys\n"
        "from jax import monitoring\n"
        "n = []\n"
        "monitoring.register_event_duration_secs_listener(lambda e, s, **kw: n.append(e) if e == '/jax/core/compile/backend_compile_duration' else None)\n"
        "from mixjax import fit\n"
        f"sys.argv = ['mixjax.fit', '--runs', {str(tmp_path / 'runs.csv')!r}, '--budget', '5', '50']\n"
        "assert fit.main() == 0\n"
        "print('compiles', len(n))\n"
    )
    env = subprocess_env() | {"MIXJAX_CACHE_DIR": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    compiles = int(out.stdout.split("compiles")[-1])
    assert compiles <= 36, compiles


def test_compiled_runs_the_function_it_was_given(tmp_path):
    """Only a jit is unwrapped: a jax.grad, a jax.vmap or a decorated function is compiled
    as itself, and two functions under one program name do not share a program."""
    import functools

    x = np.array([1.0, 2.0, 3.0], np.float32)
    np.testing.assert_allclose(cache.cached_call("grad", jax.grad(lambda a: (a**2).sum()), (x,), directory=tmp_path), 2 * x)
    np.testing.assert_allclose(cache.cached_call("vmap", jax.vmap(jnp.sum), (np.ones((3, 4), np.float32),), directory=tmp_path), [4.0] * 3)

    def times_ten(f):
        @functools.wraps(f)
        def wrapped(a):
            return 10 * f(a)
        return wrapped

    np.testing.assert_allclose(cache.cached_call("decorated", times_ten(lambda a: a + 1), (x,), directory=tmp_path), 10 * (x + 1))
    add = lambda a, b: a + b
    np.testing.assert_allclose(cache.cached_call("same", functools.partial(add, b=1.0), (x,)), x + 1)
    np.testing.assert_allclose(cache.cached_call("same", functools.partial(add, b=100.0), (x,)), x + 100)
    np.testing.assert_allclose(cache.cached_call("same", lambda a: a * 3, (x,)), 3 * x)


def test_an_unreadable_export_is_exported_again(tmp_path, monkeypatch):
    x = np.arange(3.0, dtype=np.float32)
    cache.cached_call("twice", lambda a: a * 2, (x,), directory=tmp_path)
    [file] = tmp_path.glob("mixjax-export-twice-*.bin")
    file.write_bytes(b"truncated")
    monkeypatch.setattr(cache, "_COMPILED", {})  # as a fresh process
    np.testing.assert_allclose(cache.cached_call("twice", lambda a: a * 2, (x,), directory=tmp_path), 2 * x)
    assert file.read_bytes() != b"truncated"
