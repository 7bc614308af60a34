"""``mixjax.fit``'s weights and predicted losses on every pinned table and flag set equal
the recorded ones (tests/fixtures/pinned_fits.json) to 1e-9."""

import json

import numpy as np
import pytest

from pinned_fits import FLAGS, PINNED, answer, cases, tables


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return tables(tmp_path_factory.mktemp("pinned"))


@pytest.fixture(autouse=True)
def _no_persistent_cache(monkeypatch):
    monkeypatch.setenv("MIXJAX_CACHE_DIR", "")


@pytest.mark.parametrize("table,flags", list(cases()))
def test_pinned_answer(paths, table, flags):
    recorded = json.loads(PINNED.read_text())[f"{table}/{flags}"]
    path, budgets = paths[table]
    got = answer(path, budgets, FLAGS[flags])
    for what in ("weights", "predicted_losses"):
        assert got[what].keys() == recorded[what].keys()
        for budget in recorded[what]:
            np.testing.assert_allclose(got[what][budget], recorded[what][budget], rtol=0, atol=1e-9, err_msg=f"{what} at {budget}")
