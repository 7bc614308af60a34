"""One conversion of the init checkpoint per experiment (issue 27): the first load converts
and saves it into the experiment directory, later loads restore it (bit-identical, into
the trainer's shardings), a changed source converts again, and two tasks converting at
once leave exactly one conversion. The 8-device version runs in its own process
(tests/converted_check.py)."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from helpers import subprocess_env

from mixjax.model import hf
from mixjax.model.llama import Decoder, ModelConfig
from mixjax.pipeline import converted
from mixjax.train.loop import TrainConfig, Trainer

pytest.importorskip("safetensors")

CONFIG = ModelConfig(vocab_size=96, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=128, dtype="float32", rope_theta=10_000.0)


def write_checkpoint(directory: Path, seed: int = 0, config: ModelConfig = CONFIG) -> ModelConfig:
    params = nn.unbox(Decoder(config).init(jax.random.key(seed), *(jnp.ones((1, 8), jnp.int32),) * 3))["params"]
    hf.save_hf_checkpoint(directory, config, params)
    return hf.check_hf_checkpoint(directory)


@pytest.fixture
def conversions(monkeypatch) -> list[str]:
    """The checkpoints that were converted (every call of hf.load_hf_params)."""
    calls, real = [], hf.load_hf_params
    monkeypatch.setattr(hf, "load_hf_params", lambda path, *a, **k: calls.append(str(path)) or real(path, *a, **k))
    return calls


def assert_identical(a, b) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape and x.sharding == y.sharding
        np.testing.assert_array_equal(np.asarray(x).view(np.uint8), np.asarray(y).view(np.uint8))  # bit for bit


@pytest.mark.parametrize("dtype", [None, "bfloat16"])
def test_second_load_restores_the_conversion_bit_for_bit(tmp_path, conversions, dtype):
    model = write_checkpoint(tmp_path / "ckpt")
    shardings = Trainer(model, TrainConfig(seq_len=16, batch_size=2)).state_shardings.params
    direct = hf.load_hf_params(tmp_path / "ckpt", model, shardings, dtype=dtype)
    lines = []
    first = converted.load_init_params(tmp_path / "ckpt", model, shardings, tmp_path / "init", dtype=dtype, log=lines.append)
    second = converted.load_init_params(tmp_path / "ckpt", model, shardings, tmp_path / "init", dtype=dtype, log=lines.append)
    assert len(conversions) == 2  # the direct load and the first task's; the second restored
    assert [line.split()[2] for line in lines] == ["converted", "restored"]
    assert_identical(first, direct)
    assert_identical(second, direct)
    assert jax.tree.leaves(second)[0].dtype == (jnp.float32 if dtype is None else jnp.bfloat16)
    (entry,) = (tmp_path / "init").iterdir()  # one conversion, no temporary left
    assert json.loads((entry / "source.json").read_text())["dtype"] == dtype


def test_a_changed_source_converts_again_and_drops_the_old_conversion(tmp_path, conversions):
    model = write_checkpoint(tmp_path / "ckpt", seed=0)
    shardings = Trainer(model, TrainConfig(seq_len=16, batch_size=2)).state_shardings.params
    load = lambda: converted.load_init_params(tmp_path / "ckpt", model, shardings, tmp_path / "init", log=lambda _: None)
    old = load()
    (old_entry,) = (tmp_path / "init").iterdir()
    write_checkpoint(tmp_path / "ckpt", seed=1)  # same names and sizes, new contents and mtimes
    new = load()
    assert len(conversions) == 2
    (new_entry,) = (tmp_path / "init").iterdir()
    assert new_entry.name != old_entry.name
    assert_identical(new, hf.load_hf_params(tmp_path / "ckpt", model, shardings))
    assert not np.array_equal(np.asarray(jax.tree.leaves(old)[0]), np.asarray(jax.tree.leaves(new)[0]))
    os.utime(tmp_path / "ckpt" / "model.safetensors", ns=(1, 1))  # only the mtime changes: converted again
    load()
    assert len(conversions) == 4


def test_two_tasks_converting_at_once_leave_one_conversion(tmp_path):
    """The second finisher's rename fails (the directory exists, not empty): its copy is
    deleted, the first one stays, and both tasks go on with their own loaded params."""
    model = write_checkpoint(tmp_path / "ckpt")
    params = hf.load_hf_params(tmp_path / "ckpt", model)
    fingerprint = converted.source_fingerprint(tmp_path / "ckpt")
    assert converted.save_converted(tmp_path / "init", fingerprint, params) is True
    entry = tmp_path / "init" / converted.conversion_key(fingerprint)
    before = sorted(p.relative_to(entry) for p in entry.rglob("*"))
    assert converted.save_converted(tmp_path / "init", fingerprint, params) is False
    assert [p.name for p in (tmp_path / "init").iterdir()] == [entry.name]
    assert sorted(p.relative_to(entry) for p in entry.rglob("*")) == before


def test_pipeline_inputs_convert_once_per_experiment(tmp_path, conversions):
    """Two array tasks = two Inputs of one config: the first converts into
    <experiment_dir>/init, the second restores from it."""
    from mixjax.pipeline.config import load_config
    from mixjax.pipeline.stages import Inputs

    write_checkpoint(tmp_path / "ckpt")
    config = load_config(Path(__file__).parent / "fixtures" / "tiny_config.py")
    config = dataclasses.replace(config, workdir=str(tmp_path), checkpoint=str(tmp_path / "ckpt"))
    lines = []
    first, second = (Inputs(config, log=lines.append).init_params for _ in range(2))
    assert len(conversions) == 1
    assert [line.split()[2] for line in lines] == ["converted", "restored"]
    assert (config.experiment_dir / "init").is_dir() and len(list((config.experiment_dir / "init").iterdir())) == 1
    assert_identical(first, second)


def test_eight_devices_restore_into_the_mesh_shardings():
    """FSDP (1, 8, 1) and (2, 2, 2) meshes of 8 fake CPU devices: the restored arrays carry
    the trainer's shardings and equal the direct load bit for bit."""
    env = subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=8")
    script = Path(__file__).with_name("converted_check.py")
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    for mesh in ("1,8,1", "2,2,2"):
        assert report[mesh]["conversions"] == 1 and report[mesh]["identical"] is True
        assert report[mesh]["sharded_leaves"] >= 7  # the layer kernels and the embedding split over devices
        assert report[mesh]["devices_per_leaf"] == 8


def test_arrays_larger_than_the_in_flight_limit_still_save_and_restore(tmp_path, monkeypatch):
    """orbax raises on a shard at or over its byte limit: the limit fits the largest array
    (here a 1 kB floor against 32 kB kernels)."""
    monkeypatch.setattr(converted, "MIN_IN_FLIGHT_GB", 1e-6)
    model = write_checkpoint(tmp_path / "ckpt")
    direct = hf.load_hf_params(tmp_path / "ckpt", model)
    assert max(a.nbytes for a in jax.tree.leaves(direct)) > 1_000
    shardings = jax.tree.map(lambda a: a.sharding, direct)
    for _ in range(2):  # convert, then restore
        loaded = converted.load_init_params(tmp_path / "ckpt", model, shardings, tmp_path / "init", log=lambda _: None)
        assert_identical(loaded, direct)


def test_a_relative_experiment_directory_converts_and_restores(tmp_path, monkeypatch, conversions):
    """The demo's workdir is relative ("experiments"); orbax refuses relative paths."""
    model = write_checkpoint(tmp_path / "ckpt")
    shardings = Trainer(model, TrainConfig(seq_len=16, batch_size=2)).state_shardings.params
    monkeypatch.chdir(tmp_path)
    first = converted.load_init_params(Path("ckpt"), model, shardings, Path("experiments/demo/init"), log=lambda line: None)
    second = converted.load_init_params(Path("ckpt"), model, shardings, Path("experiments/demo/init"), log=lambda line: None)
    assert len(conversions) == 1
    assert_identical(first, second)
