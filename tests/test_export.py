import json

import numpy as np
import pytest

from mixjax.mixing.export import FORMATS, export_weights

yaml = pytest.importorskip("yaml")
NAMES = ("if", "math", "code")
W = {5.0: [0.4116, 0.2684, 0.32], 20.0: [0.42, 0.2573, 0.3227]}


def _parse(fmt: str, text: str) -> dict[float, list[float]]:
    if fmt in ("json", "hf-datasets"):
        data = json.loads(text)
        if fmt == "hf-datasets":
            return {float(b): v["probabilities"] for b, v in data.items()} if "probabilities" not in data else {None: data["probabilities"]}
        return {float(b): [v[n] for n in NAMES] for b, v in data.items()}
    docs = list(yaml.safe_load_all(text))
    out = []
    for doc in docs:
        if fmt == "levanter":
            weights = doc["data"]["train_weights"]
            out.append([weights[n] for n in NAMES])
        elif fmt == "maxtext":
            pairs = [p.split(",") for p in doc["grain_train_files"].split(";")]
            assert [p[0] for p in pairs] == list(NAMES)
            out.append([float(p[1]) for p in pairs])
        else:
            assert doc["dataset"].split(",") == list(NAMES) and doc["mix_strategy"] == "interleave_under"
            out.append([float(v) for v in doc["interleave_probs"].split(",")])
    return dict(zip(W, out))


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_parses_back_to_the_same_weights(fmt):
    same_length = dict.fromkeys(NAMES, 100.0)  # equal example lengths: probabilities = token shares
    parsed = _parse(fmt, export_weights(fmt, NAMES, W, tokens_per_example=same_length))
    assert list(parsed) == list(W)
    for budget, w in W.items():
        np.testing.assert_allclose(parsed[budget], w, atol=1e-6)
        assert sum(parsed[budget]) == pytest.approx(1.0, abs=1e-9)


def test_export_single_budget_hf_kwargs():
    data = json.loads(export_weights("hf-datasets", NAMES, {20.0: W[20.0]}, seed=3, tokens_per_example=dict.fromkeys(NAMES, 7)))
    assert data["seed"] == 3 and data["stopping_strategy"] == "all_exhausted"
    np.testing.assert_allclose(data["probabilities"], W[20.0], atol=1e-6)
    with pytest.raises(ValueError, match="export format"):
        export_weights("nope", NAMES, W)
