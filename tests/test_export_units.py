"""Issue 25 item 3: every export states its target's sampling unit and converts mixjax's
token shares into it; an example-level export without the mean tokens per example is
refused with one line saying how. Sampling examples with the exported probabilities gives
the token shares back."""

import json
from pathlib import Path

import numpy as np
import pytest

from mixjax.fit import main
from mixjax.mixing.export import FORMATS, export_weights

UNIT = {"levanter": "tokens", "maxtext": "examples", "llama-factory": "examples", "hf-datasets": "examples", "json": "tokens"}

NAMES = ("if", "math", "code")
SHARES = [0.543, 0.450, 0.007]  # the optimum
MEANS = {"if": 56.0, "math": 127.0, "code": 129.0}  # its mean example lengths (tokens)
EXAMPLE = Path(__file__).parents[1] / "examples" / "paper_worked_example.csv"


@pytest.fixture(autouse=True)
def _no_persistent_cache(monkeypatch):
    monkeypatch.setenv("MIXJAX_CACHE_DIR", "")


def _domains(rng, n: int = 400) -> list[np.ndarray]:
    """Example lengths of each domain with exactly the means of MEANS (spread 50%)."""
    out = []
    for mean in MEANS.values():
        lengths = rng.uniform(0.5, 1.5, n) * mean
        out.append(lengths * mean / lengths.mean())
    return out


def _token_shares(picks: np.ndarray, lengths: list[np.ndarray], rng) -> np.ndarray:
    tokens = np.array([rng.choice(lengths[d], size=int((picks == d).sum())).sum() for d in range(len(lengths))])
    return tokens / tokens.sum()


def test_sampling_examples_with_the_exported_probabilities_trains_the_token_shares():
    rng = np.random.default_rng(0)
    lengths = _domains(rng)
    data = json.loads(export_weights("hf-datasets", NAMES, {20.0: SHARES}, tokens_per_example=MEANS))
    picks = rng.choice(3, size=2_000_000, p=data["probabilities"])  # interleave_datasets' draw
    np.testing.assert_allclose(_token_shares(picks, lengths, rng), SHARES, atol=0.01 * max(SHARES), rtol=0.01)
    unconverted = _token_shares(rng.choice(3, size=2_000_000, p=SHARES), lengths, rng)  # what main exported
    np.testing.assert_allclose(unconverted, [0.344, 0.646, 0.010], atol=0.002)


def test_grain_mix_with_the_maxtext_weights_trains_the_token_shares():
    grain = pytest.importorskip("grain")
    rng = np.random.default_rng(1)
    lengths = _domains(rng)
    text = export_weights("maxtext", NAMES, {20.0: SHARES}, tokens_per_example=MEANS)
    spec = next(line for line in text.splitlines() if line.startswith("grain_train_files:")).split(": ", 1)[1]
    weights = [float(pair.split(",")[1]) for pair in json.loads(spec).split(";")]
    parts = [grain.MapDataset.source([(d, float(x)) for x in ls]).repeat() for d, ls in enumerate(lengths)]
    mixed = grain.MapDataset.mix(parts, weights)
    tokens = np.zeros(3)
    for i in range(100_000):
        d, x = mixed[i]
        tokens[d] += x
    np.testing.assert_allclose(tokens / tokens.sum(), SHARES, atol=0.01 * max(SHARES), rtol=0.01)


def test_probabilities_are_shares_over_lengths_renormalised():
    from mixjax.mixing.export import SAMPLING_UNIT, example_probabilities

    assert SAMPLING_UNIT == UNIT
    p = example_probabilities(SHARES, list(MEANS.values()))
    expected = np.array(SHARES) / np.array(list(MEANS.values()))
    np.testing.assert_allclose(p, expected / expected.sum(), rtol=1e-12)
    assert p.round(4).tolist() == [0.7294, 0.2665, 0.0041]
    with pytest.raises(ValueError, match="finite and > 0"):
        example_probabilities(SHARES, [56.0, 0.0, 129.0])


@pytest.mark.parametrize("fmt", [f for f in FORMATS if UNIT[f] == "examples"])
def test_an_example_level_export_without_lengths_is_refused_saying_how(fmt):
    with pytest.raises(ValueError, match=rf"^--export {fmt} samples examples, not tokens: .* --tokens-per-example if=T math=T code=T"):
        export_weights(fmt, NAMES, {20.0: SHARES})


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_export_states_its_unit(fmt):
    text = export_weights(fmt, NAMES, {20.0: SHARES, 5.0: SHARES}, tokens_per_example=MEANS)
    if fmt == "json":
        assert json.loads(text)["20"] == dict(zip(NAMES, SHARES))  # mixjax's own unit: token shares
    elif fmt == "hf-datasets":
        note = json.loads(text)["20"]["mixjax"]
        assert note == {"sampling_unit": "examples", "token_shares": SHARES, "tokens_per_example": MEANS}
    else:
        assert text.count(f"# sampling unit: {UNIT[fmt]}") == 2


def test_cli_refuses_before_fitting_and_converts_when_given(capsys):
    from mixjax.mixing.export import example_probabilities

    assert main(["--runs", str(EXAMPLE), "--budget", "20", "--export", "llama-factory"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--tokens-per-example if=T math=T code=T" in err
    args = ["--runs", str(EXAMPLE), "--budget", "20", "--grid-step", "0", "--export", "hf-datasets", "--tokens-per-example", "if=56", "math=127", "code=129"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    shares = out["mixjax"]["token_shares"]
    assert sum(shares) == pytest.approx(1.0, abs=1e-9) and out["mixjax"]["tokens_per_example"] == MEANS
    np.testing.assert_allclose(out["probabilities"], example_probabilities(shares, [56, 127, 129]), atol=2e-6)


def test_a_domain_gives_its_tokens_per_example():
    from mixjax.data.domain import Domain, Example

    ex = lambda n: Example(np.zeros(n, np.int32), np.ones(n, np.int32))
    assert Domain("a", (ex(50), ex(62)), (ex(3),)).tokens_per_example == 56.0
