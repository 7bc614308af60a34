"""A general synthetic pretraining corpus: plain text (not chat) that shares vocabulary and
skills with the synthetic SFT domains of ``mixjax.data.synthetic``.

Four kinds of document, each a few sentences:

- ``prose``: sentences over the shared word list and generated pronounceable words;
- ``arithmetic``: facts written out ("12 + 7 = 19.", "I had 3 apples and got 4 more, so I had 7 apples.");
- ``code``: short Python snippets followed by what they print (the same string operations
  and arithmetic as the ``code`` domain);
- ``strings``: string-operation facts ("'cedar' reversed is 'radec'.").

A base model pretrained on it has the skills the SFT domains build on, so fine-tuning moves
the per-domain losses a little with the mixture, as with a real pretrained model. Document
``i`` is a pure function of ``(seed, i)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mixjax.data.domain import Example, encode_documents
from mixjax.data.synthetic import WORDS, _arithmetic, _pick, _value, _word, code_snippet

KINDS = ("prose", "arithmetic", "code", "strings")
_STREAM = 7919  # keeps corpus draws apart from the SFT domains' streams

_PROSE = (
    "The {a} is near the {b}.",
    "A {a} and a {b} went to the {c}.",
    "We saw {n} {a}s by the {b} at night.",
    "Every {a} needs a {b} and some {c}.",
    "The word {a} has {m} letters.",
    "She put the {a} on the {b}, then found a {c}.",
    "After the {a}, the {b} was quiet.",
    "My {a} is older than your {b}.",
)


def _prose(rng: np.random.Generator) -> str:
    template = _PROSE[int(rng.integers(len(_PROSE)))]
    a = _word(rng)
    return template.format(a=a, b=_pick(rng, WORDS), c=_word(rng), n=int(rng.integers(2, 20)), m=len(a))


def _arithmetic_fact(rng: np.random.Generator) -> str:
    a, op, b = _arithmetic(rng)
    value = _value(a, op, b)
    if op == "+" and rng.random() < 0.3:
        thing = _word(rng)
        return f"I had {a} {thing}s and got {b} more, so I had {value} {thing}s."
    symbol = {"+": "+", "-": "-", "*": "x"}[op]
    if rng.random() < 0.5:
        return f"{a} {symbol} {b} = {value}."
    word = {"+": "plus", "-": "minus", "*": "times"}[op]
    return f"{a} {word} {b} is {value}."


def _code_fact(rng: np.random.Generator) -> str:
    snippet, answer = code_snippet(rng)
    return f"```python\n{snippet}\n```\nThis prints {answer}."


def _string_fact(rng: np.random.Generator) -> str:
    word = _word(rng)
    kind = int(rng.integers(5))
    if kind == 0:
        return f"'{word}' reversed is '{word[::-1]}'."
    if kind == 1:
        return f"'{word}' in capital letters is '{word.upper()}'."
    if kind == 2:
        n = int(rng.integers(2, 4))
        return f"'{word}' repeated {n} times is '{' '.join([word] * n)}'."
    if kind == 3:
        return f"The first letter of '{word}' is '{word[0]}'."
    return f"The letters of '{word}' in alphabetical order are '{''.join(sorted(word))}'."


_SENTENCES = {"prose": _prose, "arithmetic": _arithmetic_fact, "code": _code_fact, "strings": _string_fact}


def document(seed: int, index: int) -> str:
    """Document ``index`` of the corpus with ``seed``: 3 to 6 sentences of one kind."""
    rng = np.random.default_rng([seed, _STREAM, index])
    kind = KINDS[int(rng.integers(len(KINDS)))]
    sentences = [_SENTENCES[kind](rng) for _ in range(int(rng.integers(3, 7)))]
    return ("\n" if kind == "code" else " ").join(sentences)


def pretraining_corpus(num_documents: int, seed: int) -> list[str]:
    """``num_documents`` plain-text documents, a pure function of ``(num_documents, seed)``
    (each document depends only on ``(seed, index)``, so a longer corpus extends a shorter one)."""
    return [document(seed, i) for i in range(num_documents)]


def pretraining_data(tokenizer, num_documents: int, val_documents: int, seed: int, max_len: int) -> tuple[list[Example], list[Example]]:
    """Training and validation examples (loss mask all ones) of the pretraining corpus:
    documents ``0 .. num_documents-1`` train, the next ``val_documents`` validate (minus any
    whose text is also a training document)."""
    texts = pretraining_corpus(num_documents + val_documents, seed)
    train, held_out = texts[:num_documents], texts[num_documents:]
    seen = set(train)
    return encode_documents(tokenizer, train, max_len), encode_documents(tokenizer, [t for t in held_out if t not in seen], max_len)


def tokenizer_texts(corpus: Sequence[str], conversations: Sequence[Sequence[tuple[str, str]]] = ()) -> list[str]:
    """The texts a demo tokenizer is trained on: the corpus plus every turn of the SFT conversations."""
    return list(corpus) + [text for conversation in conversations for _, text in conversation]
