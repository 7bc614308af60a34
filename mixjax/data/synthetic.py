"""Embedded synthetic SFT domains for the demo and tests: deterministic, no downloads.

Three domains that differ in difficulty and share skills, so that training on one
measurably helps another (the "effective data transferred" the method models):

- ``instruct`` (easiest): string instructions on words (30% from a shared vocabulary,
  70% generated pronounceable words):
  reverse, upper-case, repeat n times, first/last letter, sort letters.
- ``math`` (medium): arithmetic with 1-3 digit numbers (+, -, x), answered with the
  equation; some as short word problems using the shared vocabulary.
- ``code`` (hardest): "what does this Python print?" for snippets that do the same
  string operations as ``instruct`` and the same arithmetic as ``math``, in Python syntax.

Shared skills: string manipulation (instruct <-> code), arithmetic (math <-> code), the
word vocabulary and the answer formats (all). Every example is a function of
(domain, seed, index), so a domain is the same on every machine.
"""

from __future__ import annotations

import numpy as np

from mixjax.data.formats import Conversation

WORDS = (
    "apple river stone cloud green tiger light music paper ocean bread chair table house "
    "plant smile water train horse lemon night sugar earth dream storm frost maple pearl "
    "robin cedar amber coral delta ember flint grape honey ivory jelly karma lunar mango"
).split()

DOMAINS = ("instruct", "math", "code", "general", "math_steps", "code_trace")
_CONSONANTS, _VOWELS = "bcdfghklmnprstvz", "aeiou"


def _pick(rng: np.random.Generator, options):
    """``rng.choice(options)`` (the same draw) without converting ``options`` to an array each time."""
    return options[int(rng.integers(len(options)))]


def _word(rng: np.random.Generator) -> str:
    """30% from the shared vocabulary, 70% new pronounceable words (so data keeps adding)."""
    if rng.random() < 0.3:
        return _pick(rng, WORDS)
    syllables = int(rng.integers(2, 5))
    return "".join(_pick(rng, _CONSONANTS) + _pick(rng, _VOWELS) for _ in range(syllables))


def _string_task(rng: np.random.Generator) -> tuple[str, str, str]:
    """(instruction, python expression, answer) for one string operation."""
    word = _word(rng)
    kind = int(rng.integers(5))
    if kind == 0:
        return f"Reverse the word '{word}'.", f"'{word}'[::-1]", word[::-1]
    if kind == 1:
        return f"Write '{word}' in capital letters.", f"'{word}'.upper()", word.upper()
    if kind == 2:
        n = int(rng.integers(2, 4))
        return f"Repeat '{word}' {n} times, separated by spaces.", f"' '.join(['{word}'] * {n})", " ".join([word] * n)
    if kind == 3:
        return f"What is the first letter of '{word}'?", f"'{word}'[0]", word[0]
    return f"Sort the letters of '{word}' alphabetically.", f"''.join(sorted('{word}'))", "".join(sorted(word))


def _arithmetic(rng: np.random.Generator) -> tuple[int, str, int]:
    a, b = (int(v) for v in rng.integers(1, 10 ** int(rng.integers(1, 4)), size=2))
    op = _pick(rng, "+-*")
    return a, op, b


def _value(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def instruct_example(rng: np.random.Generator) -> Conversation:
    instruction, _, answer = _string_task(rng)
    return [("user", instruction), ("assistant", answer)]


def math_example(rng: np.random.Generator) -> Conversation:
    a, op, b = _arithmetic(rng)
    symbol = {"+": "+", "-": "-", "*": "x"}[op]
    if op == "+" and rng.random() < 0.3:
        thing = _word(rng)
        question = f"I have {a} {thing}s and get {b} more. How many {thing}s do I have?"
    else:
        question = f"What is {a} {symbol} {b}?"
    return [("user", question), ("assistant", f"{a} {symbol} {b} = {_value(a, op, b)}")]


def code_snippet(rng: np.random.Generator) -> tuple[str, str]:
    """A short Python snippet (a string operation or arithmetic) and what it prints."""
    if rng.random() < 0.5:
        _, expression, answer = _string_task(rng)
        return f"s = {expression}\nprint(s)", answer
    a, op, b = _arithmetic(rng)
    return f"x = {a}\ny = {b}\nprint(x {op} y)", str(_value(a, op, b))


def code_example(rng: np.random.Generator) -> Conversation:
    snippet, answer = code_snippet(rng)
    return [("user", f"What does this Python code print?\n```python\n{snippet}\n```"), ("assistant", answer)]


# ---------------------------------------------------------------------------- the demo's collection
#
# Three domains built like a real SFT collection (Tulu 3, OpenHermes 2.5; see README "The demo"):
# a large, easy, broad ``general`` domain that touches every skill; a medium-sized ``math_steps``
# domain of two-step word problems answered step by step; and a scarce, hard ``code_trace`` domain
# whose answers trace the program in the same step format before the output. Transfer is not
# symmetric: every code trace contains math's step lines (code teaches math's format and
# arithmetic), while math never shows Python (math teaches only part of what code needs).

_NAMES = ("Ana", "Ben", "Chen", "Dia", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun")


def general_example(rng: np.random.Generator) -> Conversation:
    """Easy, broad: a string task on a known word, a sentence, one-digit arithmetic in words, or
    reading a one-line program; a little of every other domain's skill."""
    kind = rng.random()
    word = _pick(rng, WORDS)
    if kind < 0.35:
        task = int(rng.integers(3))
        if task == 0:
            return [("user", f"Write '{word}' in capital letters."), ("assistant", word.upper())]
        if task == 1:
            return [("user", f"What is the first letter of '{word}'?"), ("assistant", f"The first letter of '{word}' is '{word[0]}'.")]
        n = int(rng.integers(2, 4))
        return [("user", f"Repeat '{word}' {n} times."), ("assistant", " ".join([word] * n))]
    if kind < 0.6:
        word, other = _word(rng), _word(rng)
        return [("user", f"Use '{word}' and '{other}' in a sentence."), ("assistant", f"The {word} is near the {other}.")]
    if kind < 0.8:
        a, b = (int(v) for v in rng.integers(1, 10, size=2))
        return [("user", f"What is {a} plus {b}?"), ("assistant", f"{a} plus {b} is {a + b}.")]
    return [("user", f"What does print('{word}'.upper()) print?"), ("assistant", f"It prints {word.upper()}.")]


def math_steps_example(rng: np.random.Generator) -> Conversation:
    """Medium-hard, data-hungry: a word problem of two or three steps (six templates, two-digit
    numbers), answered one step per sentence."""
    name, thing = _pick(rng, _NAMES), _pick(rng, WORDS)
    a, b, c, d = int(rng.integers(10, 100)), int(rng.integers(2, 13)), int(rng.integers(2, 13)), int(rng.integers(2, 13))
    kind = int(rng.integers(6))
    if kind == 0:
        question = f"{name} has {a} {thing}s and buys {b} bags of {c} {thing}s. How many {thing}s does {name} have?"
        steps = [(b, "x", c), (a, "+", b * c)]
    elif kind == 1:
        given = int(rng.integers(1, b * c))
        question = f"{name} has {b} boxes of {c} {thing}s and gives away {given}. How many {thing}s are left?"
        steps = [(b, "x", c), (b * c, "-", given)]
    elif kind == 2:
        question = f"{name} has {a} {thing}s, finds {b} more, then doubles them. How many {thing}s now?"
        steps = [(a, "+", b), (a + b, "x", 2)]
    elif kind == 3:
        question = f"{name} buys {b} packs of {c} {thing}s and {d} packs of {b} {thing}s. How many {thing}s in all?"
        steps = [(b, "x", c), (d, "x", b), (b * c, "+", d * b)]
    elif kind == 4:
        lost = int(rng.integers(1, a))
        question = f"{name} has {a} {thing}s and loses {lost}. Each {thing} is worth {c} coins. How many coins are the rest worth?"
        steps = [(a, "-", lost), (a - lost, "x", c)]
    else:
        question = f"{name} has {a} {thing}s, gets {b} on Monday and {c} on Tuesday, then gives {d} away. How many {thing}s are left?"
        steps = [(a, "+", b), (a + b, "+", c), (a + b + c, "-", d)]
    lines = [f"{x} {op} {y} = {_value(x, '*' if op == 'x' else op, y)}." for x, op, y in steps]
    answer = _value(*steps[-1][:1], "*" if steps[-1][1] == "x" else steps[-1][1], steps[-1][2])
    return [("user", question), ("assistant", " ".join(lines) + f" The answer is {answer}.")]


def code_trace_example(rng: np.random.Generator) -> Conversation:
    """Hard: what a short program prints, traced step by step in math's format (arithmetic with
    variables, a loop, or string operations) before the output."""
    kind = rng.random()
    if kind < 0.4:
        a, b, c = int(rng.integers(2, 10)), int(rng.integers(2, 10)), int(rng.integers(10, 60))
        program = f"a = {a}\nb = {b}\nc = a * b + {c}\nprint(c)"
        steps, out = [f"{a} x {b} = {a * b}.", f"{a * b} + {c} = {a * b + c}."], a * b + c
    elif kind < 0.7:
        n, k, start = int(rng.integers(2, 5)), int(rng.integers(2, 10)), int(rng.integers(0, 20))
        program = f"total = {start}\nfor i in range({n}):\n    total += {k}\nprint(total)"
        values = [start + k * i for i in range(n + 1)]
        steps, out = [f"{values[i]} + {k} = {values[i + 1]}." for i in range(n)], values[-1]
    else:
        word, n = _pick(rng, WORDS), int(rng.integers(2, 4))
        program = f"s = '{word}'\nt = s.upper() * {n}\nprint(t[:{len(word) + 2}])"
        full = word.upper() * n
        steps, out = [f"'{word}'.upper() = '{word.upper()}'.", f"'{word.upper()}' x {n} = '{full}'."], full[: len(word) + 2]
    question = f"What does this Python code print?\n```python\n{program}\n```"
    return [("user", question), ("assistant", " ".join(steps) + f" It prints {out}.")]


_GENERATORS = {
    "instruct": instruct_example, "math": math_example, "code": code_example,
    "general": general_example, "math_steps": math_steps_example, "code_trace": code_trace_example,
}


def generate(domain: str, num_examples: int, seed: int = 0) -> list[Conversation]:
    """``num_examples`` conversations of a synthetic domain, a pure function of its arguments."""
    if domain not in _GENERATORS:
        raise ValueError(f"unknown synthetic domain {domain!r} (have: {', '.join(DOMAINS)})")
    stream = DOMAINS.index(domain)
    rng = np.random.default_rng([seed, stream])
    return [_GENERATORS[domain](rng) for _ in range(num_examples)]
