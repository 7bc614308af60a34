import json
from pathlib import Path

import numpy as np
import pytest

from mixjax.mix import main
from mixjax.mixing.fit import Fit
from mixjax.mixing.law import LawParams

CONFIG = str(Path(__file__).parent / "fixtures" / "tiny_config.py")


def _tiny_config_file(tmp_path: Path) -> Path:
    """The tiny config with its workdir in ``tmp_path``, as a config file."""
    config_file = tmp_path / "config.py"
    config_file.write_text(
        "import dataclasses, importlib.util\n"
        f"_s = importlib.util.spec_from_file_location('tiny', {CONFIG!r})\n"
        "_m = importlib.util.module_from_spec(_s); _s.loader.exec_module(_m)\n"
        f"config = dataclasses.replace(_m.config, workdir={str(tmp_path)!r})\n"
    )
    return config_file


def _read(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def _counts(rows):
    out = {}
    for r in rows:
        out[r["domain"]] = out.get(r["domain"], 0) + len(r["input_ids"])
    return out


def test_mix_exact_budget_seeded_and_deterministic(tmp_path, capsys):
    out = tmp_path / "mixed.jsonl"
    args = ["--config", CONFIG, "--budget", "3000", "--out", str(out), "--weights", "instruct=0.7", "math=0.3"]
    assert main(args) == 0
    rows = _read(out)
    longest = max(len(r["input_ids"]) for r in rows)
    counts = _counts(rows)
    assert abs(counts["instruct"] - 2100) <= longest and abs(counts["math"] - 900) <= longest
    assert all(len(r["input_ids"]) == len(r["loss_mask"]) and r["text"] for r in rows)
    first = out.read_bytes()
    assert main(args) == 0 and out.read_bytes() == first  # deterministic
    assert main([*args[:-3], "--weights", "instruct=0.7", "math=0.3", "--seed", "1"]) == 0
    assert out.read_bytes() != first  # seeded


def test_mix_from_fit_json_solves_at_the_budget(tmp_path, capsys):
    params = LawParams(*(np.array(v, np.float64) for v in ([0.3, 0.3], [1.0, 1.0], [0.1, 0.1], [0.5, 0.5], [1.0, 1.0])))
    fit = Fit(domains=("instruct", "math"), params=params, diagnostics=())
    (tmp_path / "fit.json").write_text(json.dumps(fit.to_dict()))
    out = tmp_path / "mixed.jsonl"
    assert main(["--config", CONFIG, "--budget", "2000", "--out", str(out), "--fit", str(tmp_path / "fit.json")]) == 0
    counts = _counts(_read(out))  # symmetric law: half and half
    assert abs(counts["instruct"] - 1000) <= 80 and abs(counts["math"] - 1000) <= 80


def test_mix_bad_weights_exit_2(tmp_path, capsys):
    assert main(["--config", CONFIG, "--budget", "100", "--out", str(tmp_path / "x.jsonl"), "--weights", "nope=1"]) == 2
    assert "unknown domain" in capsys.readouterr().err


def test_mix_writes_the_examples_the_validation_run_trained(tmp_path, capsys, monkeypatch):
    """Issue 16 item 5: for a config with a pretrain stage (demo-shaped), mixjax.mix at the
    validation budget writes exactly the optimal validation run's examples: the base model's
    BPE tokenizer (not config.tokenizer "byte") and the pipeline's selection and seed."""
    import dataclasses
    import hashlib

    import jax
    import jax.numpy as jnp
    from flax import linen as nn

    from mixjax.data.corpus import pretraining_corpus
    from mixjax.data.tokenizer import load_tokenizer, train_bpe_tokenizer
    from mixjax.io import write_json_atomic
    from mixjax.model.hf import save_hf_checkpoint
    from mixjax.model.llama import Decoder
    from mixjax.pipeline.config import PretrainConfig, load_config
    from mixjax.pipeline.pretrain import base_fingerprint, base_model_dir
    from mixjax.pipeline.stages import Options, Pipeline
    from mixjax.train.loop import TrainConfig

    pre = PretrainConfig(num_documents=240, val_documents=24, vocab_size=300, train=TrainConfig(seq_len=64, batch_size=4, epochs=1.0))
    config = dataclasses.replace(load_config(CONFIG), workdir=str(tmp_path), pretrain=pre)
    # The base model where the pretrain stage puts it (random weights: no training needed here).
    fingerprint = base_fingerprint(pre, config.model_config(), pre.train.seq_len)
    base = base_model_dir(tmp_path, fingerprint)
    train_bpe_tokenizer(pretraining_corpus(pre.num_documents, pre.seed), pre.vocab_size, base)
    model = dataclasses.replace(config.model_config(), vocab_size=load_tokenizer(base).vocab_size)
    shapes = jax.eval_shape(Decoder(model).init, jax.random.key(0), *(jnp.ones((1, 8), jnp.int32),) * 3)
    params = jax.tree.map(lambda s: np.full(s.shape, 0.01, np.float32), nn.unbox(shapes)["params"])
    save_hf_checkpoint(base, model, params)
    write_json_atomic(base / "fingerprint.json", {"fingerprint": fingerprint})

    trained = {}

    def fake_train(trainer, cfg, examples, val_sets, workdir, **kwargs):
        trained[Path(workdir).name] = examples
        losses = {n: 3.0 for n in val_sets}
        write_json_atomic(Path(workdir) / "result.json", {"best_step": 1, "best_losses": losses, "final_step": 1, "history": []})

    config_file = tmp_path / "config.py"
    config_file.write_text(
        "import dataclasses, importlib.util\n"
        "from mixjax.pipeline.config import PretrainConfig\nfrom mixjax.train.loop import TrainConfig\nfrom mixjax.train.optimizer import OptimizerConfig\n"
        f"_s = importlib.util.spec_from_file_location('tiny', {CONFIG!r})\n"
        "_m = importlib.util.module_from_spec(_s); _s.loader.exec_module(_m)\n"
        f"config = dataclasses.replace(_m.config, workdir={str(tmp_path)!r}, pretrain={pre!r})\n"
    )
    from helpers import use_train

    use_train(monkeypatch, fake_train)
    pipeline = Pipeline(load_config(config_file), Options(progress=False), log=lambda m: None)
    pipeline.run(("pretrain", "plan", "perturb"))
    # The solve stage's output (its weights at the validation budget; solving is tested elsewhere).
    write_json_atomic(tmp_path / "tiny" / "solution.json", {"domains": ["instruct", "math"], "weights": {"4000": [0.3125, 0.6875]}})
    pipeline.run(("validate",))
    [optimal] = [name for name in trained if name.startswith("validate-optimal-")]

    out = tmp_path / "mixed.jsonl"
    assert main(["--config", str(config_file), "--budget", "4000", "--out", str(out)]) == 0
    digest = lambda ids, mask: hashlib.sha256(np.asarray(ids, np.int32).tobytes() + b"|" + np.asarray(mask, np.int32).tobytes()).hexdigest()
    written = sorted(digest(r["input_ids"], r["loss_mask"]) for r in _read(out))
    validated = sorted(digest(e.tokens, e.loss_mask) for e in trained[optimal])
    assert len(written) == len(validated) > 10 and written == validated
    assert max(max(r["input_ids"]) for r in _read(out)) < model.vocab_size  # BPE ids (a byte id would reach 262)


def test_mix_uses_the_answer_after_the_probe_runs(tmp_path, capsys):
    """Once validation's probe runs refitted the law, the pipeline's answer is
    solution_final.json (and fit_final.json), not the first solve's solution.json."""
    from mixjax.io import write_json_atomic

    config_file = _tiny_config_file(tmp_path)
    exp = tmp_path / "tiny"
    exp.mkdir()
    write_json_atomic(exp / "solution.json", {"domains": ["instruct", "math"], "weights": {"3000": [0.8, 0.2]}})
    out = tmp_path / "mixed.jsonl"
    args = ["--config", str(config_file), "--budget", "3000", "--out", str(out)]
    assert main(args) == 0
    assert abs(_counts(_read(out))["instruct"] - 2400) <= 120
    assert "solution.json" in capsys.readouterr().err

    write_json_atomic(exp / "solution_final.json", {"domains": ["instruct", "math"], "weights": {"3000": [0.3, 0.7]}})
    assert main(args) == 0
    assert abs(_counts(_read(out))["instruct"] - 900) <= 120
    assert "solution_final.json" in capsys.readouterr().err

    # A budget the final solve did not cover: the optimum of fit_final.json, not of fit.json.
    symmetric = LawParams(*(np.array(v, np.float64) for v in ([0.3, 0.3], [1.0, 1.0], [0.1, 0.1], [0.5, 0.5], [1.0, 1.0])))
    lopsided = symmetric._replace(c=np.array([1.0, 3.0]))
    (exp / "fit.json").write_text(json.dumps(Fit(domains=("instruct", "math"), params=lopsided, diagnostics=()).to_dict()))
    (exp / "fit_final.json").write_text(json.dumps(Fit(domains=("instruct", "math"), params=symmetric, diagnostics=()).to_dict()))
    assert main([*args[:3], "2000", *args[4:]]) == 0
    counts = _counts(_read(out))
    assert abs(counts["instruct"] - 1000) <= 80 and abs(counts["math"] - 1000) <= 80
    assert "fit_final.json" in capsys.readouterr().err


def test_mix_exports_the_answer_and_refuses_flags_without_effect(tmp_path, capsys):
    """`mixjax.mix --export` hands the experiment's answer (solution_final.json once it exists)
    to another trainer and says which file it read; --out/--export, --weights/--fit and
    --seed with --export are refused, exit 2."""
    config_file = _tiny_config_file(tmp_path)
    from mixjax.io import write_json_atomic

    exp = tmp_path / "tiny"
    exp.mkdir()
    write_json_atomic(exp / "solution.json", {"domains": ["instruct", "math"], "weights": {"3000": [0.8, 0.2]}})
    write_json_atomic(exp / "solution_final.json", {"domains": ["instruct", "math"], "weights": {"3000": [0.3, 0.7]}})
    assert main(["--config", str(config_file), "--budget", "3000", "--export", "json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"3000": {"instruct": 0.3, "math": 0.7}}
    assert "solution_final.json (after the probe runs refitted the law)" in captured.err
    for flags in (["--export", "json", "--out", "x.jsonl"], ["--out", "x.jsonl", "--weights", "instruct=1", "math=1", "--fit", "f.json"],
                  ["--export", "json", "--seed", "3"]):
        with pytest.raises(SystemExit) as exit_:
            main(["--config", str(config_file), "--budget", "3000", *flags])
        assert exit_.value.code == 2
        capsys.readouterr()
