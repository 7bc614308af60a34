"""Mesh shapes and the batch's split over data-parallel devices (issue 19 item 3): checked
when the config is validated (exit 2 with the numbers and the fix), not at the first step."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import subprocess_env

from mixjax.pipeline.config import ConfigError, apply_overrides, load_config, validate
from mixjax.train.sharding import batch_split_error, hybrid_device_grid, mesh_sizes, resolve_mesh_shape

TINY = Path(__file__).parent / "fixtures" / "tiny_config.py"


def test_resolve_mesh_shape():
    assert resolve_mesh_shape(None, 8) == (8, 1, 1)
    assert resolve_mesh_shape((1, -1, 1), 32) == (1, 32, 1)
    assert resolve_mesh_shape((-1, 1, 2), 8) == (4, 1, 2)
    with pytest.raises(ValueError, match=r"needs 4 devices, have 8"):
        resolve_mesh_shape((2, 2, 1), 8)


@pytest.mark.parametrize("batch, shape, devices", [(16, None, 8), (16, (1, -1, 1), 16), (4, (4, 1, 2), 8), (4, (2, 1, 4), 8), (3, None, 1)])
def test_batch_that_splits_has_no_error(batch, shape, devices):
    assert batch_split_error(batch, shape, devices) is None


@pytest.mark.parametrize("batch, shape, devices, parallel", [(4, None, 8, 8), (16, (1, -1, 1), 32, 32), (6, (2, 2, 2), 8, 4)])
def test_batch_that_does_not_split_names_numbers_and_a_fix_that_works(batch, shape, devices, parallel):
    error = batch_split_error(batch, shape, devices)
    assert f"train.batch_size={batch} cannot be split over the {parallel} data-parallel devices" in error
    multiple = int(re.search(r"--set train\.batch_size=(\d+)", error).group(1))
    assert multiple % parallel == 0 and multiple >= batch and multiple - batch < parallel
    mesh = tuple(int(x) for x in re.search(r"train\.mesh_shape=\((\d+),(\d+),(\d+)\)", error).groups())
    assert batch_split_error(multiple, shape, devices) is None and batch_split_error(batch, mesh, devices) is None


def test_validate_checks_the_batch_split_on_the_given_devices():
    config = apply_overrides(load_config(TINY), ["train.batch_size=4"])
    validate(config, device_count=4)
    with pytest.raises(ConfigError, match=r"train\.batch_size=4 cannot be split over the 8 data-parallel devices"):
        validate(config, device_count=8)
    with pytest.raises(ConfigError, match=r"train\.mesh_shape: mesh shape \(3, 1, 1\) needs 3 devices, have 8"):
        validate(apply_overrides(config, ["train.mesh_shape=(3,1,1)"]), device_count=8)


def test_run_exits_2_before_training_on_8_devices(tmp_path):
    """The reproduction (batch 4 on 8 devices): exit 2 with the fix, before any training."""
    env = subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=8")
    out = subprocess.run(
        [sys.executable, "-m", "mixjax.run", "--config", str(TINY), "--no-progress", "--set", f"workdir='{tmp_path}'", "train.batch_size=4"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert "train.batch_size=4 cannot be split over the 8 data-parallel devices" in out.stderr
    assert "--set train.batch_size=8" in out.stderr and "train.mesh_shape=(4,1,2)" in out.stderr
    assert not list(tmp_path.rglob("checkpoints"))


def test_a_trainer_for_a_batch_that_does_not_split_says_so_when_built():
    """A library user building a Trainer (no config validation) gets the numbers and the
    fix when it is built, not a shape error at the first step."""
    code = (
        "from mixjax.model.llama import PRESETS\n"
        "from mixjax.train.loop import TrainConfig, Trainer\n"
        "try:\n"
        "    Trainer(PRESETS['demo'], TrainConfig(batch_size=4, seq_len=16, mesh_shape=(1, 8, 1)))\n"
        "except ValueError as err:\n"
        "    print(err)\n"
    )
    env = subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=8")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "train.batch_size=4 cannot be split over the 8 data-parallel devices" in out.stdout


def test_constrain_places_by_the_rules_and_leaves_what_does_not_split(monkeypatch):
    """The blocks' activation constraint: batch over (data, fsdp) under the rules; a batch
    the devices do not divide stays whole; no rules, no constraint (as flax's)."""
    import jax
    import jax.numpy as jnp
    from flax import linen as nn
    from jax.sharding import AbstractMesh

    from mixjax.train import sharding

    monkeypatch.setattr(sharding, "current_mesh", lambda: AbstractMesh((2, 4, 1), ("data", "fsdp", "tensor")))
    specs = lambda x: [str(e.params["sharding"].spec) for e in jax.make_jaxpr(
        lambda a: sharding.constrain(a, ("batch", "length", "embed")))(x).eqns]
    assert specs(jnp.ones((8, 3, 6))) == []
    with nn.logical_axis_rules(sharding.LOGICAL_RULES):
        assert specs(jnp.ones((8, 3, 6))) == ["P(('data', 'fsdp'), None, None)"]
        assert specs(jnp.ones((3, 3, 6))) == ["P(None, None, None)"]


def test_mesh_across_nodes_multiplies_the_node_mesh():
    assert mesh_sizes((1, -1, 1), 32, (-1, 1, 1), nodes=4) == (4, 8, 1)
    assert mesh_sizes((1, -1, 2), 32, (-1, 1, 1), nodes=4) == (4, 4, 2)
    assert mesh_sizes((1, -1, 1), 32) == (1, 32, 1)  # no dcn shape: the node mesh spans every device
    with pytest.raises(ValueError, match="do not split evenly over 3 nodes"):
        mesh_sizes(None, 32, (-1, 1, 1), nodes=3)


class FakeDevice:
    def __init__(self, i):
        self.id, self.node = i, i // 4

    def __repr__(self):
        return f"d{self.id}"


def test_hybrid_grid_keeps_fsdp_within_a_node_and_data_across_nodes():
    """2 nodes x 4 devices, FSDP within, data across: each fsdp row is one node's devices."""
    devices = [FakeDevice(i) for i in (5, 1, 7, 0, 2, 6, 3, 4)]  # any order
    grid = hybrid_device_grid(devices, (1, -1, 1), (-1, 1, 1), node_of=lambda d: d.node)
    assert grid.shape == (2, 4, 1)
    assert [[d.id for d in row[:, 0]] for row in grid] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    grid = hybrid_device_grid(devices, (1, -1, 2), (-1, 1, 1), node_of=lambda d: d.node)
    assert grid.shape == (2, 2, 2) and {d.node for d in grid[1].flat} == {1}  # tensor pairs within a node
    with pytest.raises(ValueError, match="different numbers of devices"):
        hybrid_device_grid(devices[:7], None, (-1, 1, 1), node_of=lambda d: d.node)


def test_four_node_paper_batch_names_fixes_that_work():
    """Batch 16, FSDP within 8-GPU nodes, data across 4 nodes: 32 data-parallel devices.
    The error's fixes: batch 32, tensor parallel 2 within a node, or 2 nodes; each splits."""
    error = batch_split_error(16, (1, -1, 1), 32, "train", (-1, 1, 1), nodes=4)
    assert "cannot be split over the 32 data-parallel devices" in error and "on 4 nodes x 8 devices" in error
    assert "--set train.batch_size=32" in error and "sbatch --nodes=2" in error
    assert "--set 'train.mesh_shape=(1,-1,2)'" in error
    assert batch_split_error(16, (1, -1, 2), 32, "train", (-1, 1, 1), nodes=4) is None
    assert batch_split_error(16, (1, -1, 1), 16, "train", (-1, 1, 1), nodes=2) is None
    assert batch_split_error(32, (1, -1, 1), 32, "train", (-1, 1, 1), nodes=4) is None


def test_check_launch_needs_no_device_and_exits_2_on_the_four_node_example(tmp_path, capsys, monkeypatch):
    """``mixjax.run --check-launch`` on the paper config with stand-in paths: 4 x 8 exits 2
    with the fixes, 2 x 8 prints the mesh."""
    from mixjax.run import main

    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    for name in ("if", "math", "code"):
        (tmp_path / f"{name}.jsonl").write_text("")
    monkeypatch.setenv("MIXJAX_CKPT", str(tmp_path / "ckpt"))
    monkeypatch.setenv("MIXJAX_DATA", str(tmp_path))
    args = ["--config", str(Path(__file__).parents[1] / "configs" / "paper_if_math_code.py"), "--set", "train.dcn_mesh_shape=(-1,1,1)"]
    assert main([*args, "--check-launch", "4x8"]) == 2
    err = capsys.readouterr().err
    assert "train.batch_size=16 cannot be split over the 32 data-parallel devices" in err and "\n" not in err.strip()
    assert main([*args, "--check-launch", "2x8"]) == 0
    assert capsys.readouterr().out.strip() == (
        "ok: 2 node(s) x 8 devices; train mesh (data, fsdp, tensor) = (2, 8, 1);"
        " batch_size=16: 1 row(s) of 4096 tokens per data-parallel device"
    )
