"""Issue 16 item 1: a domain with nothing measured is never reported as loss 0.0.

- a domain whose examples all lose their answer to truncation stops the pipeline at plan
  time (exit 2) naming domain, file, counts and the seq_len that keeps them;
- an evaluation over zero trained tokens of a domain is NaN (the run fails, no result.json);
- the fit refuses a loss column that is 0 in every run.
"""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from mixjax.data.domain import Example
from mixjax.data.pipeline import multi_domain_eval_batches
from mixjax.pipeline.config import load_config
from mixjax.run import main

TINY = Path(__file__).parent / "fixtures" / "tiny_config.py"


def _long_domain_config(tmp_path: Path) -> tuple[Path, Path]:
    """The tiny config plus an Alpaca domain of 300 records whose prompts (150-300
    characters) fill a 96-token row before the answer."""
    rng = np.random.default_rng(0)
    long = tmp_path / "long.jsonl"
    with open(long, "w") as f:
        for i in range(300):
            prompt = (f"Record {i}. " + "Summarise the following passage in one word. " * 8)[: int(rng.integers(150, 301))]
            f.write(json.dumps({"instruction": prompt, "output": "Done."}) + "\n")
    config = tmp_path / "long_config.py"
    config.write_text(
        "import dataclasses, importlib.util\n"
        "from mixjax.data.domain import DomainSpec\n"
        f"_s = importlib.util.spec_from_file_location('tiny', {str(TINY)!r})\n"
        "_m = importlib.util.module_from_spec(_s); _s.loader.exec_module(_m)\n"
        f"config = dataclasses.replace(_m.config, domains=_m.config.domains + (DomainSpec('long', ({str(long)!r},), val_examples=16),))\n"
    )
    return config, long


def test_domain_without_trained_tokens_stops_at_plan(tmp_path, capsys):
    config, long = _long_domain_config(tmp_path)
    args = ["--config", str(config), "--no-progress", "--stages", "plan,perturb,fit,solve", "--set", f"workdir='{tmp_path}'"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert f"domain long ({long}): 284 of 284 training examples, 16 of 16 validation examples lost their answer" in err
    assert "(train.seq_len=96)" in err
    # Byte tokenizer: <bos> <|user|> prompt <|end|> <|assistant|>, so the answer starts at
    # index len(prompt) + 4; the longest prompt has 300 characters.
    need = int(re.search(r"train.seq_len >= (\d+) keeps", err).group(1))
    assert need == 304
    assert not (tmp_path / "tiny" / "plan.json").exists()
    assert main(["--config", str(config), "--no-progress", "--stages", "plan", "--set", f"workdir='{tmp_path}'", f"train.seq_len={need}"]) == 0


def test_evaluation_over_no_trained_token_is_nan_and_fails_the_run(tmp_path):
    import jax

    from mixjax.train.errors import NonFiniteLossError
    from mixjax.train.loop import TrainConfig, Trainer, train
    from mixjax.train.optimizer import OptimizerConfig

    model = load_config(TINY).model
    cfg = TrainConfig(seq_len=32, batch_size=4, epochs=1, max_steps=2, eval_every=2, checkpoint_every=2, optimizer=OptimizerConfig(warmup_ratio=0.0))
    rng = np.random.default_rng(0)
    tokens = lambda: rng.integers(8, 200, 20).astype(np.int32)
    trained = [Example(t, np.r_[np.zeros(10, np.int32), np.ones(10, np.int32)]) for t in (tokens() for _ in range(8))]
    lost = [Example(t, np.zeros(20, np.int32)) for t in (tokens() for _ in range(4))]  # every answer cut off
    val = {"ok": trained[:4], "lost": lost}
    trainer = Trainer(model, cfg)
    params = trainer.init(jax.random.key(0)).params
    losses = trainer.evaluate(params, multi_domain_eval_batches(val, seq_len=32, batch_size=4), list(val))
    assert np.isnan(losses["lost"]) and 4.0 < losses["ok"] < 7.0  # ~ln(263) = 5.57 at init
    with pytest.raises(NonFiniteLossError, match="non-finite eval loss"):
        train(trainer, cfg, trained, val, tmp_path / "run", progress=False, log=lambda m: None)
    assert not (tmp_path / "run" / "result.json").exists()  # a failed run: never in runs.csv


def test_fit_refuses_a_loss_column_that_is_zero_in_every_run(tmp_path, capsys):
    from mixjax.fit import main as fit_main

    table = "tokens.a,tokens.long,loss.a,loss.long\n" + "".join(
        f"{a},{b},{2.0 + 1 / a},0.0\n" for a, b in [(1, 1), (0.5, 1), (2, 1), (3, 1), (1, 0.5), (1, 2), (1, 3)]
    )
    (tmp_path / "runs.csv").write_text(table)
    assert fit_main(["--runs", str(tmp_path / "runs.csv"), "--budget", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert "loss.long is 0 in every run" in err and "\n" not in err
