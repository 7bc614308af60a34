"""Issue 16 item 4: a run's fingerprint covers exactly what can change its result.

Speed / memory / logging / I/O settings are declared neutral on the config fields
(mixjax.config_fields); changing them reuses finished runs, changing a result field
refuses them."""

import dataclasses
import json

import pytest
from test_pipeline import FakeTrain, _main

from mixjax.config_fields import neutral, neutral_fields, result, unclassified
from mixjax.model.llama import ModelConfig
from mixjax.pipeline.fingerprint import config_dict, differences
from mixjax.train.loop import TrainConfig


def test_every_train_config_field_is_classified():
    assert unclassified(TrainConfig) == []
    assert set(neutral_fields(TrainConfig)) == {
        "checkpoint_every", "checkpoint_interval_s", "best_params_dtype", "mesh_shape", "dcn_mesh_shape", "profile", "loss_chunk", "prefetch", "async_checkpoints",
    }
    assert set(neutral_fields(ModelConfig)) == {"remat", "attention_impl", "scan_layers"}

    # A field added without a classification is caught.
    @dataclasses.dataclass(frozen=True)
    class Grown(TrainConfig):
        log_every: int = 10

    assert unclassified(Grown) == ["log_every"]

    @dataclasses.dataclass(frozen=True)
    class Classified(TrainConfig):
        log_every: int = neutral(10, "logging cadence")
        label_smoothing: float = result(0.0)

    assert unclassified(Classified) == [] and "log_every" not in config_dict(Classified())
    assert config_dict(Classified())["label_smoothing"] == 0.0


def test_config_dict_keeps_exactly_the_result_fields():
    d = config_dict(TrainConfig())
    assert set(d) == {"seq_len", "batch_size", "epochs", "max_steps", "eval_every", "seed", "optimizer"}
    assert d["optimizer"]["learning_rate"] == 1e-3  # nested sections kept whole


def test_model_speed_fields_are_not_fingerprinted():
    m = ModelConfig(vocab_size=8, dim=4, n_layers=1, n_heads=1, n_kv_heads=1, hidden_dim=8)
    fast = dataclasses.replace(m, remat="full", scan_layers=False, attention_impl="flash")
    assert config_dict(m) == config_dict(fast) and "remat" not in config_dict(m)
    assert config_dict(m) != config_dict(dataclasses.replace(m, dtype="float32"))


def test_old_records_with_neutral_keys_still_match():
    new = {"train": config_dict(TrainConfig()), "seed": 0}
    old = {"train": {**dataclasses.asdict(TrainConfig()), "prefetch": 0}, "seed": 0}  # a record from before
    assert differences(old, new) == []
    old["train"]["seq_len"] = 128
    assert differences(old, new) == [("train.seq_len", 128, 256)]


@pytest.mark.parametrize(
    "overrides",
    [
        ["train.prefetch=0"],
        ["train.async_checkpoints=False", "train.profile=True", "train.loss_chunk=0"],
        ["train.mesh_shape=(1,-1,1)", "train.checkpoint_every=1"],
    ],
)
def test_speed_only_changes_reuse_finished_runs(tmp_path, capsys, overrides):
    fake = FakeTrain()
    assert _main(["--stages", "plan,perturb"], tmp_path, fake) == 0
    assert len(fake.calls) == 9
    spec = tmp_path / "tiny" / "runs" / "base" / "spec.json"
    before = spec.read_bytes()
    capsys.readouterr()
    assert _main(["--stages", "plan,perturb", "--set", *overrides], tmp_path, fake) == 0, capsys.readouterr().err
    assert len(fake.calls) == 9  # nothing retrained
    assert spec.read_bytes() == before
    assert "9 already finished" in (tmp_path / "tiny" / "log.txt").read_text()
    # A result field still refuses them.
    assert _main(["--stages", "plan,perturb", "--set", *overrides, "train.batch_size=8"], tmp_path, fake) == 2
    assert "train.batch_size: 4 -> 8" in capsys.readouterr().err


def test_a_record_written_before_fields_were_neutral_is_reused(tmp_path):
    fake = FakeTrain()
    assert _main(["--stages", "plan,perturb"], tmp_path, fake) == 0
    for spec in (tmp_path / "tiny" / "runs").glob("*/spec.json"):  # as the previous version wrote them
        record = json.loads(spec.read_text())
        record["fingerprint"]["train"] |= {"prefetch": 2, "async_checkpoints": True, "mesh_shape": None, "loss_chunk": None, "checkpoint_every": 3}
        spec.write_text(json.dumps(record))
    assert _main(["--stages", "plan,perturb"], tmp_path, fake) == 0
    assert len(fake.calls) == 9


def test_a_base_model_written_before_fields_were_neutral_is_reused(tmp_path, monkeypatch):
    from mixjax.pipeline.config import PretrainConfig, load_config
    from mixjax.pipeline.pretrain import base_fingerprint, ensure_base_model
    from test_pipeline import TINY

    pre = PretrainConfig(num_documents=240, val_documents=24, vocab_size=300)
    model = load_config(TINY).model_config()
    old = base_fingerprint(pre, model, pre.train.seq_len)
    old["train"] |= {"prefetch": 2, "async_checkpoints": True, "mesh_shape": None, "loss_chunk": None, "checkpoint_every": 50}
    old["model"] |= {"remat": "none", "attention_impl": None, "scan_layers": True}
    legacy = tmp_path / "base-models" / "0123456789abcdef"  # the digest of the old fingerprint
    legacy.mkdir(parents=True)
    (legacy / "fingerprint.json").write_text(json.dumps({"fingerprint": old}))

    def no_training(*args, **kwargs):
        raise AssertionError("retrained the base model")

    from helpers import use_train

    use_train(monkeypatch, no_training)
    assert ensure_base_model(pre, model, tmp_path, log=lambda m: None) == legacy
    old["train"]["seq_len"] = 32  # a result field: not that base model
    (legacy / "fingerprint.json").write_text(json.dumps({"fingerprint": old}))
    from mixjax.pipeline.pretrain import existing_base_model

    assert existing_base_model(tmp_path, base_fingerprint(pre, model, pre.train.seq_len)) is None


def test_max_bad_fraction_is_neutral_and_data_fields_still_count():
    from mixjax.data.domain import DomainSpec
    from mixjax.pipeline.fingerprint import data_stamp

    a = data_stamp([DomainSpec("x", ("synthetic:math:10",), max_bad_fraction=0.01)])
    b = data_stamp([DomainSpec("x", ("synthetic:math:10",), max_bad_fraction=0.05)])
    assert a == b and "max_bad_fraction" not in a["x"]
    old = {"data": {"x": {**a["x"], "max_bad_fraction": 0.01}}}  # recorded before it was neutral
    assert differences(old, {"data": b}) == []
    c = data_stamp([DomainSpec("x", ("synthetic:math:10",), val_examples=64)])
    assert differences({"data": a}, {"data": c}) == [("data.x.val_examples", 128, 64)]
