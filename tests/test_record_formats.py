"""Issue 25 items 1-2: every record format is rendered as the model's own chat template
renders it: Alpaca ``system`` and ``history``, ShareGPT's top-level ``system``, tool calls,
tool results and ``tools`` (OpenAI and ShareGPT function_call/observation); ids equal
transformers' ``apply_chat_template``. What cannot be rendered is skipped and reported with
file:line, never dropped silently."""

import json

import numpy as np
import pytest

pytest.importorskip("tokenizers")
from test_tokenizer import build_family  # noqa: E402

from mixjax.data.domain import DomainSpec, load_domain  # noqa: E402
from mixjax.data.formats import RecordError, parse_record  # noqa: E402
from mixjax.data.tokenizer import ByteTokenizer, load_tokenizer  # noqa: E402

# Qwen2.5-Instruct's template logic with its tool support (tools in the system prompt,
# <tool_call> blocks, consecutive tool results in one user turn).
QWEN25_TOOLS = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}{%- else %}{{- 'You are Qwen.' }}{%- endif %}"
    "{{- '\\n\\n# Tools\\n\\n<tools>' }}{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}"
    "{{- '\\n</tools><|im_end|>\\n' }}"
    "{%- else %}{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are Qwen.<|im_end|>\\n' }}{%- endif %}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) or (message.role == 'assistant' and not message.tool_calls) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- elif message.role == 'assistant' %}{{- '<|im_start|>' + message.role }}"
    "{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}"
    "{%- for tool_call in message.tool_calls %}{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}"
    "{{- '\\n<tool_call>\\n{\"name\": \"' }}{{- tool_call.name }}{{- '\", \"arguments\": ' }}{{- tool_call.arguments | tojson }}"
    "{{- '}\\n</tool_call>' }}{%- endfor %}{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != 'tool') %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' }}{{- message.content }}{{- '\\n</tool_response>' }}"
    "{%- if loop.last or (messages[loop.index0 + 1].role != 'tool') %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
ALPACA = {"instruction": "Q", "output": "A", "system": "S", "history": [["q0", "a0"]]}


def _tool_record(i: int) -> dict:
    call = {"id": f"c{i}", "type": "function", "function": {"name": "get_weather", "arguments": {"city": f"Paris{i}"}}}
    return {"tools": [WEATHER], "messages": [
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": f"Weather in Paris{i}?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": f"c{i}", "content": f"{10 + i} C"},
        {"role": "assistant", "content": f"It is {10 + i} C."},
    ]}


def _qwen_with(directory, template: str):
    """A Qwen2.5-style tokenizer directory whose chat template is ``template``."""
    build_family(directory, "qwen25")
    config = json.loads((directory / "tokenizer_config.json").read_text())
    (directory / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": template}))
    return directory


@pytest.fixture(scope="module")
def qwen_tools(tmp_path_factory):
    return _qwen_with(tmp_path_factory.mktemp("qwen_tools"), QWEN25_TOOLS)


def _trained(tok, ids, mask) -> str:
    return tok.decode([i for i, m in zip(ids, mask) if m])


def test_alpaca_system_and_history_are_turns():
    assert parse_record(ALPACA) == [("system", "S"), ("user", "q0"), ("assistant", "a0"), ("user", "Q"), ("assistant", "A")]
    tok = ByteTokenizer()
    ids, mask = tok.encode_conversation(parse_record(ALPACA))
    end = tok.decode([tok.special("<|end|>")])
    assert _trained(tok, ids, mask) == "a0" + end + "A" + end  # main trained "QA": no history, no system
    assert tok.decode(ids).count("S") == 1 and "q0" in tok.decode(ids)


def test_sharegpt_top_level_system_is_the_first_turn():
    record = {"system": "S", "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}
    assert parse_record(record) == [("system", "S"), ("user", "Q"), ("assistant", "A")]


@pytest.mark.parametrize("record, why", [
    ({"instruction": "Q", "output": "A", "history": [["q0"]]}, "history"),
    ({"instruction": "Q", "output": "A", "images": ["a.png"]}, "images"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}, {"role": "assistant", "content": "A"}]}, "image_url"),
    ({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": None, "tool_calls": "x"}]}, "tool_calls"),
])
def test_what_cannot_be_trained_is_a_malformed_record(record, why):
    with pytest.raises(RecordError, match=why):
        parse_record(record)


def test_text_parts_are_joined():
    record = {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                           {"role": "assistant", "content": "c"}]}
    assert parse_record(record) == [("user", "ab"), ("assistant", "c")]


def test_tool_calls_are_rendered_and_trained_in_every_row(qwen_tools, tmp_path):
    path = tmp_path / "tools.jsonl"
    path.write_text("".join(json.dumps(_tool_record(i)) + "\n" for i in range(24)))
    tok = load_tokenizer(qwen_tools)
    domain = load_domain(DomainSpec("tools", (str(path),), val_examples=6), tok, 4096)
    rows = domain.train + domain.val
    texts = [tok.decode(e.tokens) for e in rows]
    assert sum("<tool_call>" in t for t in texts) == len(rows) == 24  # main: 0 of 24
    assert all('"arguments": {"city": "Paris' in t and "<tool_response>" in t and "# Tools" in t for t in texts)
    for e in rows:  # the call is trained, the tool's result is not
        trained = _trained(tok, e.tokens, e.loss_mask)
        assert trained.startswith("<tool_call>\n{\"name\": \"get_weather\"") and "</tool_call><|im_end|>" in trained
        assert "<tool_response>" not in trained and trained.endswith(" C.<|im_end|>")


def test_tool_call_ids_equal_transformers(qwen_tools):
    transformers = pytest.importorskip("transformers")
    reference = transformers.PreTrainedTokenizerFast.from_pretrained(str(qwen_tools))
    tok = load_tokenizer(qwen_tools)
    for record in (_tool_record(3), {"messages": _tool_record(4)["messages"]}):
        chat = parse_record(record)
        assert not isinstance(chat, list)  # a Chat: messages with their tool calls, and the tools
        expected = reference.apply_chat_template(record["messages"], tools=record.get("tools"), tokenize=True, return_dict=True)
        assert tok.encode_conversation(chat)[0].tolist() == list(expected["input_ids"])
    alpaca = parse_record(ALPACA)
    expected = reference.apply_chat_template([{"role": r, "content": t} for r, t in alpaca], tokenize=True, return_dict=True)
    ids, mask = tok.encode_conversation(alpaca)
    assert ids.tolist() == list(expected["input_ids"])
    assert _trained(tok, ids, mask) == "a0<|im_end|>A<|im_end|>"


def test_sharegpt_function_call_and_observation_render_as_openai_tool_calls(qwen_tools):
    openai = _tool_record(1)
    sharegpt = {"system": "Use tools.", "tools": json.dumps([WEATHER]), "conversations": [
        {"from": "human", "value": "Weather in Paris1?"},
        {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": "Paris1"}})},
        {"from": "observation", "value": "11 C"},
        {"from": "gpt", "value": "It is 11 C."},
    ]}
    tok = load_tokenizer(qwen_tools)
    a, b = tok.encode_conversation(parse_record(openai)), tok.encode_conversation(parse_record(sharegpt))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_the_byte_tokenizer_reports_tool_records_with_file_and_line(tmp_path):
    path = tmp_path / "mixed.jsonl"
    plain = [{"instruction": f"Say {i}.", "output": f"{i}"} for i in range(200)]
    lines = [json.dumps(r) for r in plain[:100]] + [json.dumps(_tool_record(0))] + [json.dumps(r) for r in plain[100:]]
    path.write_text("\n".join(lines) + "\n")
    with pytest.warns(UserWarning, match=rf"domain a: skipped 1 .* {path}:101: the byte tokenizer cannot render tool calls"):
        domain = load_domain(DomainSpec("a", (str(path),), val_examples=8), ByteTokenizer(), 256)
    assert domain.skipped == (f"{path}:101: the byte tokenizer cannot render tool calls, tool results or tools;"
                                    " use the model's own tokenizer (tokenizer=<model dir>), whose chat template renders them",)
    assert len(domain.train) + len(domain.val) == 200


# A template that renders a field beyond content (Qwen3's reasoning_content, simplified).
THINKING = (
    "{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' }}"
    "{%- if message.reasoning_content %}{{- '<think>\\n' + message.reasoning_content + '\\n</think>\\n\\n' }}{%- endif %}"
    "{{- message.content + '<|im_end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


@pytest.fixture(scope="module")
def thinking(tmp_path_factory):
    return _qwen_with(tmp_path_factory.mktemp("thinking"), THINKING)


def test_a_field_the_template_renders_is_rendered_and_trained(thinking):
    record = {"messages": [{"role": "user", "content": "What is 2 + 3?"},
                           {"role": "assistant", "reasoning_content": "Add them.", "content": "5"}]}
    tok = load_tokenizer(thinking)
    ids, mask = tok.encode_conversation(parse_record(record))
    assert _trained(tok, ids, mask) == "<think>\nAdd them.\n</think>\n\n5<|im_end|>"
    transformers = pytest.importorskip("transformers")
    reference = transformers.PreTrainedTokenizerFast.from_pretrained(str(thinking))
    assert ids.tolist() == list(reference.apply_chat_template(record["messages"], tokenize=True, return_dict=True)["input_ids"])


def test_openai_weight_zero_turns_are_shown_not_trained(thinking):
    record = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Bad answer", "weight": 0},
                           {"role": "user", "content": "Again"}, {"role": "assistant", "content": "Good answer", "weight": 1}]}
    for tok in (ByteTokenizer(), load_tokenizer(thinking)):
        ids, mask = tok.encode_conversation(parse_record(record))
        assert "Bad answer" in tok.decode(ids)
        assert "Bad" not in _trained(tok, ids, mask) and _trained(tok, ids, mask).startswith("Good answer")
    with pytest.raises(RecordError, match="no non-empty assistant turn"):
        parse_record({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "x", "weight": 0}]})
    with pytest.raises(RecordError, match="'weight' must be 0"):
        parse_record({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "x", "weight": 0.5}]})


def test_fields_no_conversation_renders_are_named_once_per_file(tmp_path):
    path = tmp_path / "meta.jsonl"
    rows = [{"id": i, "instruction": f"Say {i}.", "output": f"{i}"} for i in range(3)] + [{"instruction": "Q", "output": "A", "rejected": "B"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    from mixjax.data.formats import read_records

    with pytest.warns(UserWarning, match=rf"^{path}: fields not rendered .*: 'id' \(first at {path}:1\), 'rejected' \(first at {path}:4\)$"):
        records, report = read_records(path)
    assert len(records) == 4 and report.bad == ()
