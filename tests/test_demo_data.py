"""The demo's collection (mixjax.data.synthetic: general, math_steps, code_trace): deterministic,
and built with the properties README "The demo" claims."""

import re

from mixjax.data.synthetic import generate

STEP = re.compile(r"(-?\d+) ([+x-]) (\d+) = (-?\d+)\.")


def _check_steps(text: str) -> int:
    steps = STEP.findall(text)
    for a, op, b, result in steps:
        a, b, result = int(a), int(b), int(result)
        assert result == (a + b if op == "+" else a - b if op == "-" else a * b), text
    return len(steps)


def test_demo_domains_are_deterministic():
    for name in ("general", "math_steps", "code_trace"):
        assert generate(name, 40, seed=3) == generate(name, 40, seed=3) != generate(name, 40, seed=4)


def test_code_traces_carry_math_steps_but_math_never_shows_code():
    """Asymmetric transfer by construction: every arithmetic code trace answers in math's step
    format (correct steps), math's answers and questions never contain Python."""
    math, code = generate("math_steps", 300), generate("code_trace", 300)
    for (_, question), (_, answer) in math:
        assert 2 <= _check_steps(answer) <= 3 and answer.endswith(f"The answer is {STEP.findall(answer)[-1][3]}.")
        assert "print" not in question + answer and "```" not in question
    arithmetic = [answer for (_, question), (_, answer) in code if "'" not in question]
    assert len(arithmetic) > 150 and all(_check_steps(answer) >= 2 for answer in arithmetic)
    assert all(answer.split("It prints ")[1].rstrip(".") == STEP.findall(answer)[-1][3] for answer in arithmetic)


def test_general_touches_every_skill_and_is_short():
    general = generate("general", 500)
    text = [q + " " + a for (_, q), (_, a) in general]
    assert sum("plus" in t for t in text) > 50 and sum("print(" in t for t in text) > 50
    mean_chars = lambda convs: sum(len(q) + len(a) for (_, q), (_, a) in convs) / len(convs)
    assert mean_chars(general) < mean_chars(generate("math_steps", 500)) < mean_chars(generate("code_trace", 500)) * 1.5


def test_validation_set_is_distinct_when_a_source_repeats_conversations():
    """general repeats conversations (937 distinct of 2,560): the validation set still holds
    val_examples distinct ones, none of them in training (it held 20 distinct before)."""
    from mixjax.data.domain import DomainSpec, load_domain
    from mixjax.data.tokenizer import ByteTokenizer

    domain = load_domain(DomainSpec("general", ("synthetic:general:2560",), val_examples=64), ByteTokenizer(), 129)
    val = {tuple(e.tokens.tolist()) for e in domain.val}
    assert len(domain.val) == 64 and len(val) == 64
    assert not val & {tuple(e.tokens.tolist()) for e in domain.train}
    assert len(domain.train) == 2560 - 64 - 129  # the 129 other copies of validation conversations are dropped
