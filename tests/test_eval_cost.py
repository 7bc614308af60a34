"""benchmarks/eval_cost.py (issue 27 item 6): the evaluations a run makes and the paper
config's estimate, checked against hand counts."""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
spec = importlib.util.spec_from_file_location("eval_cost", ROOT / "benchmarks" / "eval_cost.py")
eval_cost = importlib.util.module_from_spec(spec)
sys.modules["eval_cost"] = eval_cost  # dataclasses look their module up
spec.loader.exec_module(eval_cost)


def test_evaluations_at_every_multiple_and_the_last_step():
    assert eval_cost.evaluations(90, 10) == 10  # every 9 steps: 9, ..., 90
    assert eval_cost.evaluations(67, 10) == 12  # every 6: 6, ..., 66, and 67
    assert eval_cost.evaluations(90, 3) == 3  # 30, 60, 90: the ends of 3 epochs
    assert eval_cost.evaluations(5, 10) == 5  # every step


def test_paper_estimate_by_hand():
    """IF/math/code, L = 500: the base run trains 3 x 1.98M tokens in 90 steps of 16 x 4096;
    an evaluation packs 3 x 1000 x 500 tokens into 3 x 123 rows, 384 with whole batches."""
    cost = eval_cost.paper_cost(ROOT / "configs" / "paper_if_math_code.py", 500, None)
    assert eval_cost.run_steps(1_980_000, eval_cost.load_config(ROOT / "configs" / "paper_if_math_code.py")) == 90
    assert (cost.runs, cost.steps, cost.evaluations) == (13, 1329, 142)
    assert cost.train == 3 * 1329 * 16 * 4096
    assert cost.evaluation == 142 * 384 * 4096
    assert round(cost.evaluation / cost.train, 2) == 0.85
