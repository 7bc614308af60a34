"""The jax range in pyproject.toml (issue 19 item 11): a lower and an upper bound, the
accelerator extras inside the same range, and the jax running the tests inside it."""

import tomllib
from pathlib import Path

import jax
import pytest

specifiers = pytest.importorskip("packaging.specifiers")
requirements = pytest.importorskip("packaging.requirements")

PYPROJECT = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]


def _jax(reqs) -> requirements.Requirement:
    (req,) = [r for r in map(requirements.Requirement, reqs) if r.name == "jax"]
    return req


def test_jax_range_has_both_bounds_and_contains_the_tested_jax():
    spec = _jax(PYPROJECT["dependencies"]).specifier
    assert {s.operator for s in spec} == {">=", "<"}
    assert spec.contains(jax.__version__)  # the jax these tests run on
    assert not spec.contains("0.4.30") and not spec.contains("1.0.0")


@pytest.mark.parametrize("extra, jax_extra", [("cuda", "cuda12"), ("tpu", "tpu")])
def test_accelerator_extras_stay_in_the_tested_range(extra, jax_extra):
    req = _jax(PYPROJECT["optional-dependencies"][extra])
    assert req.extras == {jax_extra}
    assert req.specifier == _jax(PYPROJECT["dependencies"]).specifier
