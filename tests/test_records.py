"""Issue 16 item 2: every conversation the chat template can render is encoded (assistant
turns located without rendering the empty prefix ``messages[:0]``); a record that cannot
be used is skipped and reported as ``file:line: reason``, counted per domain, up to
``DomainSpec.max_bad_fraction``; beyond it loading stops, naming the first offenders.

Qwen2.5 / Llama-3.1-style tokenizer directories are built here (tests/test_tokenizer.py)."""

import json

import numpy as np
import pytest

pytest.importorskip("tokenizers")
from test_tokenizer import _expected_rendering, _runs, build_family  # noqa: E402

from mixjax.data.domain import DomainSpec, load_domains  # noqa: E402
from mixjax.data.formats import DataError  # noqa: E402
from mixjax.data.tokenizer import load_tokenizer  # noqa: E402

ASSISTANT_FIRST = [("assistant", "Hello there."), ("user", "Add 2 and 3."), ("assistant", "2 + 3 = 5")]
END = {"llama3": "<|eot_id|>", "qwen25": "<|im_end|>"}

# Gemma's rule (as its template, and Mistral's, enforce it): roles must alternate user/assistant.
STRICT_CHATML = (
    "{%- for message in messages %}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


@pytest.fixture(scope="module", params=["llama3", "qwen25"])
def family(request, tmp_path_factory):
    return request.param, build_family(tmp_path_factory.mktemp(request.param), request.param)


def _sharegpt(path, n: int, bad_lines: dict[int, str]) -> None:
    """n ShareGPT records (one per line); ``bad_lines`` replaces line -> raw text."""
    with open(path, "w") as f:
        for line in range(1, n + 1):
            turns = [("human", f"What is {line} + 1?"), ("gpt", f"{line} + 1 = {line + 1}")]
            record = json.dumps({"conversations": [{"from": w, "value": v} for w, v in turns]})
            f.write(bad_lines.get(line, record) + "\n")


def _assistant_first_line() -> str:
    roles = {"assistant": "gpt", "user": "human"}
    return json.dumps({"conversations": [{"from": roles[r], "value": t} for r, t in ASSISTANT_FIRST]})


def test_a_conversation_that_opens_with_the_assistant_is_encoded(family, tmp_path):
    name, directory = family
    tok = load_tokenizer(directory)
    assert tok.render(ASSISTANT_FIRST) == _expected_rendering(name, ASSISTANT_FIRST)
    ids, mask = tok.encode_conversation(ASSISTANT_FIRST)
    trained = [tok.decode(run) for run in _runs(ids, mask)]
    assert trained == [f"Hello there.{END[name]}", f"2 + 3 = 5{END[name]}"]

    path = tmp_path / "chats.jsonl"
    _sharegpt(path, 600, {151: _assistant_first_line()})
    domain = load_domains([DomainSpec("chat", (str(path),), val_examples=16)], tok, 256)["chat"]
    assert domain.skipped == () and len(domain.train) + len(domain.val) == 600
    assert any(np.array_equal(e.tokens, ids) for e in domain.train + domain.val)


def test_matches_transformers_on_an_assistant_first_conversation(family):
    transformers = pytest.importorskip("transformers")
    name, directory = family
    reference = transformers.PreTrainedTokenizerFast.from_pretrained(str(directory))
    messages = [{"role": r, "content": t} for r, t in ASSISTANT_FIRST]
    expected = reference.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    assert load_tokenizer(directory).encode_conversation(ASSISTANT_FIRST)[0].tolist() == list(expected)


@pytest.fixture(scope="module")
def strict(tmp_path_factory):
    directory = build_family(tmp_path_factory.mktemp("strict"), "qwen25")
    config = json.loads((directory / "tokenizer_config.json").read_text())
    (directory / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": STRICT_CHATML}))
    return load_tokenizer(directory)


def test_unusable_records_are_skipped_and_reported_with_file_and_line(strict, tmp_path):
    path = tmp_path / "chats.jsonl"
    _sharegpt(path, 600, {151: _assistant_first_line(), 300: '{"conversations": [{"from": "human"'})
    spec = DomainSpec("chat", (str(path),), val_examples=16)
    with pytest.warns(UserWarning, match=r"domain chat: skipped 2 malformed or unusable records of 600"):
        domain = load_domains([spec], strict, 256)["chat"]
    assert len(domain.train) + len(domain.val) == 598
    assert domain.skipped == (
        f"{path}:300: invalid JSON (Expecting ',' delimiter)",
        f"{path}:151: chat template failed on roles ['assistant', 'user', 'assistant']:"
        " Conversation roles must alternate user/assistant/user/assistant/...",
    )


def test_too_many_unusable_records_stop_with_the_first_offenders(strict, tmp_path):
    path = tmp_path / "chats.jsonl"
    bad = {line: _assistant_first_line() for line in (10, 20, 30, 40, 50, 60, 70)}  # 7 of 600: 1.17%
    _sharegpt(path, 600, bad)
    spec = DomainSpec("chat", (str(path),), val_examples=16)
    with pytest.raises(DataError) as err:
        load_domains([spec], strict, 256)
    message = str(err.value)
    assert message.startswith("domain chat: 7 of 600 records malformed or unusable (max_bad_fraction 1.0%): ")
    assert f"{path}:10: chat template failed on roles ['assistant', 'user', 'assistant']" in message
    assert f"{path}:30: chat template" in message and f"{path}:40:" not in message and message.endswith("(and 4 more)")
    import dataclasses

    with pytest.warns(UserWarning, match="skipped 7"):
        assert len(load_domains([dataclasses.replace(spec, max_bad_fraction=0.02)], strict, 256)["chat"].skipped) == 7
