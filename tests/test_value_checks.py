"""Issue 25 item 4: per-domain values outside their domain are refused with one line naming
the flag, the value and what is allowed (exit 2); infeasible bounds name the bound that
breaks them."""

import re
from pathlib import Path

import numpy as np
import pytest
from helpers import PUBLISHED_PARAMS

from mixjax.cli import per_domain_values
from mixjax.fit import main
from mixjax.mixing.solve import Constraints, check_feasible

EXAMPLE = Path(__file__).parents[1] / "examples" / "paper_worked_example.csv"
NAMES = ("if", "math", "code")


@pytest.fixture(autouse=True)
def _no_persistent_cache(monkeypatch):
    monkeypatch.setenv("MIXJAX_CACHE_DIR", "")


@pytest.mark.parametrize("flag, item, allowed", [
    ("--lower", "code=-0.5", r"\[0, 1\]"),
    ("--upper", "code=1.5", r"\[0, 1\]"),
    ("--available", "if=nan", r"\(0, inf\)"),
    ("--available", "if=0", r"\(0, inf\)"),
    ("--available", "if=inf", r"\(0, inf\)"),
    ("--importance", "if=-1", r"\[0, inf\)"),
    ("--lower", "code=x", r"\[0, 1\]"),
])
def test_a_value_outside_its_domain_is_one_line_and_exit_2(capsys, flag, item, allowed):
    items = [item] + (["math=10", "code=10"] if flag == "--available" and not item.startswith("math") else [])
    assert main(["--runs", str(EXAMPLE), "--budget", "20", flag, *items]) == 2  # main: --lower code=-0.5 exported -0.5
    err = capsys.readouterr().err.strip()
    name, value = item.split("=")
    assert err.count("\n") == 0
    assert f"{flag} {name}={value!r}: expected a finite number in" in err
    assert re.search(allowed, err)


def test_values_inside_their_domain_pass():
    assert per_domain_values(["if=0", "code=1"], NAMES, "--lower") == {"if": 0.0, "code": 1.0}
    assert per_domain_values(["if=0"], NAMES, "--importance") == {"if": 0.0}
    assert per_domain_values(["if=1e9"], NAMES, "--available") == {"if": 1e9}


def test_upper_bounds_below_one_blame_the_upper_bounds():
    cons = Constraints.create(3, upper=[0.3, 0.3, 0.3])
    with pytest.raises(ValueError, match=r"^upper bounds sum to 0.9 < 1 \(if=0.3, math=0.3, code=0.3\).*raise an upper bound$"):
        check_feasible(cons, 20.0, NAMES)


def test_lower_bound_beyond_availability_names_tokens():
    cons = Constraints.create(3, lower=[0.5, 0.0, 0.0], available=[4.0, np.inf, np.inf])
    with pytest.raises(ValueError, match=r"domain if: lower bound 0.5 needs 10 tokens at budget 20 but only 4 are available"):
        check_feasible(cons, 20.0, NAMES)


def test_lower_bounds_above_one_name_them():
    cons = Constraints.create(3, lower=[0.5, 0.6, 0.0])
    with pytest.raises(ValueError, match=r"lower bounds sum to 1.1 > 1 \(if=0.5, math=0.6, code=0\)"):
        check_feasible(cons, 20.0, NAMES)


def test_cli_upper_bounds_message(capsys):
    assert main(["--runs", str(EXAMPLE), "--budget", "20", "--upper", "if=0.3", "math=0.3", "code=0.3"]) == 2
    assert "upper bounds sum to 0.9 < 1" in capsys.readouterr().err


@pytest.mark.parametrize("budget", ["nan", "inf", "-5"])
def test_a_budget_that_is_no_token_count_is_refused(capsys, budget):
    assert main(["--runs", str(EXAMPLE), "--budget", "20", budget]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"--budget={float(budget)!r}: expected a finite number in (0, inf)" in err
