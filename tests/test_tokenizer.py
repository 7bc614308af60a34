"""The model's own tokenizer and chat template (issue 8 item 2), the BPE tokenizer and the
pretraining corpus of the demo (issue 9 item 1).

Llama-3-style and Qwen2.5-style tokenizer directories are built here: a small byte-level
BPE trained with ``tokenizers`` plus the family's special tokens, and a
tokenizer_config.json with the family's chat template (the Llama-3.1 and Qwen2.5 templates'
logic without tool use)."""

import json

import numpy as np
import pytest

pytest.importorskip("tokenizers")
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402

from mixjax.data.corpus import pretraining_corpus  # noqa: E402
from mixjax.data.domain import encode_documents  # noqa: E402
from mixjax.data.formats import DataError  # noqa: E402
from mixjax.data.synthetic import generate  # noqa: E402
from mixjax.data.tokenizer import ByteTokenizer, HFTokenizer, check_vocab, encode_conversation, load_tokenizer, train_bpe_tokenizer  # noqa: E402

LLAMA3_TEMPLATE = (
    "{{- bos_token }}\n"
    "{%- if not date_string is defined %}\n    {%- set date_string = \"26 Jul 2024\" %}\n{%- endif %}\n"
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {%- set system_message = messages[0]['content']|trim %}\n"
    "    {%- set messages = messages[1:] %}\n"
    "{%- else %}\n    {%- set system_message = \"\" %}\n{%- endif %}\n"
    "{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}\n"
    "{{- \"Cutting Knowledge Date: December 2023\\n\" }}\n"
    "{{- \"Today Date: \" + date_string + \"\\n\\n\" }}\n"
    "{{- system_message }}\n"
    "{{- \"<|eot_id|>\" }}\n"
    "{%- for message in messages %}\n"
    "    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n{%- endif %}\n"
)

QWEN25_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "{%- else %}\n"
    "    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or (message.role == \"assistant\" and not message.tool_calls) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n"
)

FAMILIES = {
    "llama3": dict(
        specials=["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        config={"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "chat_template": LLAMA3_TEMPLATE},
        end="<|eot_id|>",
    ),
    "qwen25": dict(
        specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        config={"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "chat_template": QWEN25_TEMPLATE},
        end="<|im_end|>",
    ),
}

CONVERSATION = [
    ("system", "Be brief."),
    ("user", "What is the first letter of 'apple'?"),
    ("assistant", "a"),
    ("user", "What is 12 + 7?"),
    ("assistant", " 12 + 7 = 19 \n"),  # spaces kept by Qwen's template, trimmed by Llama's
]


def _sentences():
    return [text for domain in ("instruct", "math", "code") for c in generate(domain, 200) for _, text in c]


def build_family(directory, family: str):
    spec = FAMILIES[family]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=spec["specials"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(_sentences(), trainer)
    if family == "llama3":  # as the real one: a post-processor that prepends <|begin_of_text|> (which chat rendering must not use)
        bos = spec["specials"][0]
        bpe.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, bpe.token_to_id(bos))])
    directory.mkdir(parents=True, exist_ok=True)
    bpe.save(str(directory / "tokenizer.json"))
    added = {str(bpe.token_to_id(s)): {"content": s, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True} for s in spec["specials"]}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "added_tokens_decoder": added, "clean_up_tokenization_spaces": False, **spec["config"]}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return directory


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    return request.param, build_family(tmp_path_factory.mktemp(request.param), request.param)


def _expected_rendering(name: str, conversation) -> str:
    """The templates' output, written out by hand."""
    if name == "llama3":
        out = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
        turns = conversation
        if turns[0][0] == "system":
            out += turns[0][1].strip()
            turns = turns[1:]
        out += "<|eot_id|>"
        return out + "".join(f"<|start_header_id|>{r}<|end_header_id|>\n\n{t.strip()}<|eot_id|>" for r, t in turns)
    out = "" if conversation[0][0] == "system" else "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    return out + "".join(f"<|im_start|>{r}\n{t}<|im_end|>\n" for r, t in conversation)


def _runs(ids, mask):
    """The masked tokens, as runs of consecutive positions."""
    runs, current = [], []
    for i, m in zip(ids.tolist(), mask.tolist()):
        if m:
            current.append(i)
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


@pytest.mark.parametrize("conversation", [CONVERSATION, CONVERSATION[1:3], [("user", "Reverse 'ab'."), ("assistant", "ba")]])
def test_ids_and_mask_follow_the_models_template(family, conversation):
    name, directory = family
    tok = load_tokenizer(directory)
    rendered = _expected_rendering(name, conversation)
    assert tok.render(conversation) == rendered
    ids, mask = tok.encode_conversation(conversation)
    raw = Tokenizer.from_file(str(directory / "tokenizer.json"))
    assert ids.tolist() == raw.encode(rendered, add_special_tokens=False).ids  # the whole rendering, tokenised once
    end = FAMILIES[name]["end"]
    contents = [t.strip() if name == "llama3" else t for r, t in conversation if r == "assistant"]
    assert [tok.decode(run) for run in _runs(ids, mask)] == [c + end for c in contents]
    assert int(mask.sum()) == sum(len(raw.encode(c, add_special_tokens=False).ids) + 1 for c in contents)
    assert ids.dtype == mask.dtype == np.int32
    # the module-level function and truncation
    short_ids, short_mask = encode_conversation(tok, conversation, max_len=7)
    np.testing.assert_array_equal(short_ids, ids[:7])
    np.testing.assert_array_equal(short_mask, mask[:7])


def test_specials_come_from_the_checkpoint_and_nothing_is_added(family):
    name, directory = family
    tok = load_tokenizer(directory)
    raw = Tokenizer.from_file(str(directory / "tokenizer.json"))
    assert tok.vocab_size == raw.get_vocab_size(with_added_tokens=True) == 400
    assert tok.special("<|user|>") is None  # mixjax's own specials are gone
    if name == "llama3":  # no pad token: the eos
        assert tok.pad_id == tok.eos_id == raw.token_to_id("<|eot_id|>")
        assert tok.bos_id == raw.token_to_id("<|begin_of_text|>")
    else:
        assert tok.pad_id == raw.token_to_id("<|endoftext|>") and tok.eos_id == raw.token_to_id("<|im_end|>") and tok.bos_id is None
    check_vocab(tok, 400)
    with pytest.raises(DataError, match=r"400 tokens but the model's embedding has 399 rows"):
        check_vocab(tok, 399)


def test_fingerprint_is_a_hash_of_the_tokenizer_files(tmp_path):
    a = build_family(tmp_path / "a", "qwen25")
    b = build_family(tmp_path / "b", "qwen25")
    assert load_tokenizer(a).fingerprint() == load_tokenizer(b).fingerprint()
    config = json.loads((b / "tokenizer_config.json").read_text())
    (b / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": CHATML_NO_SYSTEM}))
    assert load_tokenizer(a).fingerprint() != load_tokenizer(b).fingerprint()
    assert load_tokenizer(b / "tokenizer.json").fingerprint() == load_tokenizer(b).fingerprint()
    assert ByteTokenizer().fingerprint() == load_tokenizer("byte").fingerprint() == "byte"


CHATML_NO_SYSTEM = "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"


TAGGED_CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' }}{% if m['role'] == 'assistant' %}{% generation %}"
    "{{ m['content'] + '<|im_end|>' }}{% endgeneration %}{% else %}{{ m['content'] + '<|im_end|>' }}{% endif %}{{ '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def test_chat_template_jinja_file_wins_and_generation_tags_render(tmp_path):
    directory = build_family(tmp_path / "q", "qwen25")
    (directory / "chat_template.jinja").write_text(TAGGED_CHATML)
    tok = load_tokenizer(directory)
    conv = [("user", "hi"), ("assistant", "hello there")]
    assert tok.render(conv) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello there<|im_end|>\n"
    ids, mask = tok.encode_conversation(conv)
    assert [tok.decode(r) for r in _runs(ids, mask)] == ["hello there<|im_end|>"]


def test_unset_special_tokens_render_as_transformers_does(tmp_path):
    """An unset bos_token (Qwen) is undefined in the template (renders ""), never "None";
    special tokens may come from a legacy special_tokens_map.json."""
    directory = build_family(tmp_path / "q", "qwen25")
    config = json.loads((directory / "tokenizer_config.json").read_text())
    template = "{{ bos_token }}{% for m in messages %}{{ m['content'] + eos_token }}{% endfor %}"
    del config["eos_token"]
    (directory / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": template}))
    (directory / "special_tokens_map.json").write_text(json.dumps({"eos_token": {"content": "<|im_end|>"}}))
    tok = load_tokenizer(directory)
    assert tok.render([("user", "a"), ("assistant", "b")]) == "a<|im_end|>b<|im_end|>"
    assert tok.eos_id == tok.special("<|im_end|>") and tok.bos_id is None


def test_scaffolding_before_the_answer_is_not_trained(tmp_path):
    """A Qwen3-like template that writes an empty think block before the final answer."""
    directory = build_family(tmp_path / "q", "qwen25")
    template = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' }}"
        "{% if m['role'] == 'assistant' and loop.last %}{{ '<think>\\n\\n</think>\\n\\n' }}{% endif %}"
        "{{ m['content'] + '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    config = json.loads((directory / "tokenizer_config.json").read_text())
    (directory / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": template}))
    tok = load_tokenizer(directory)
    conv = [("user", "Say think."), ("assistant", "think")]
    ids, mask = tok.encode_conversation(conv)
    assert tok.decode(ids).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\nthink<|im_end|>\n")
    assert [tok.decode(r) for r in _runs(ids, mask)] == ["think<|im_end|>"]
    ids, mask = tok.encode_conversation(conv + [("user", "Again."), ("assistant", "think")])
    assert [tok.decode(r) for r in _runs(ids, mask)] == ["think<|im_end|>"] * 2
    upper = template.replace("m['content'] +", "m['content'] | upper +")
    (directory / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": upper}))
    with pytest.raises(DataError, match="cannot locate assistant turn 1's content"):
        load_tokenizer(directory).encode_conversation(conv)


def test_bad_tokenizer_directories_are_clear_errors(tmp_path):
    directory = build_family(tmp_path / "q", "qwen25")
    config = json.loads((directory / "tokenizer_config.json").read_text())
    (directory / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": None}))
    with pytest.raises(DataError, match="has no chat_template"):
        load_tokenizer(directory).encode_conversation([("user", "a"), ("assistant", "b")])
    shifted = {str(int(k) + 1000): v for k, v in config["added_tokens_decoder"].items()}
    (directory / "tokenizer_config.json").write_text(json.dumps({**config, "added_tokens_decoder": shifted}))
    with pytest.raises(DataError, match="mixjax never adds tokens"):
        load_tokenizer(directory)
    (directory / "tokenizer_config.json").write_text(json.dumps({**config, "eos_token": "<|eot_id|>"}))
    with pytest.raises(DataError, match="eos_token '<\\|eot_id\\|>' is not in the vocabulary"):
        load_tokenizer(directory)
    with pytest.raises(DataError, match="no tokenizer.json"):
        load_tokenizer(tmp_path / "nowhere")


def test_matches_transformers_apply_chat_template(family):
    transformers = pytest.importorskip("transformers")
    name, directory = family
    reference = transformers.PreTrainedTokenizerFast.from_pretrained(str(directory))
    tok = load_tokenizer(directory)
    messages = [{"role": r, "content": t} for r, t in CONVERSATION]
    assert tok.render(CONVERSATION) == reference.apply_chat_template(messages, tokenize=False)
    expected = reference.apply_chat_template(messages, tokenize=True)
    expected = expected["input_ids"] if isinstance(expected, dict) or hasattr(expected, "keys") else expected
    assert tok.encode_conversation(CONVERSATION)[0].tolist() == list(expected)


def test_mask_matches_transformers_assistant_tokens_mask(tmp_path):
    """With a template that marks assistant turns by {% generation %}, transformers computes
    the assistant mask itself: ours equals it."""
    transformers = pytest.importorskip("transformers")
    directory = build_family(tmp_path / "q", "qwen25")
    config = json.loads((directory / "tokenizer_config.json").read_text())
    (directory / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": TAGGED_CHATML}))
    reference = transformers.PreTrainedTokenizerFast.from_pretrained(str(directory))
    tok = load_tokenizer(directory)
    for conversation in (CONVERSATION, [("user", "What is 3 x 4?"), ("assistant", "3 x 4 = 12")]):
        messages = [{"role": r, "content": t} for r, t in conversation]
        out = reference.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        ids, mask = tok.encode_conversation(conversation)
        assert ids.tolist() == list(out["input_ids"])
        assert mask.tolist() == list(out["assistant_masks"])


# --- the demo's own tokenizer and pretraining corpus (issue 9 item 1) ---


def test_pretraining_corpus_is_deterministic_plain_text():
    corpus = pretraining_corpus(200, seed=0)
    assert corpus == pretraining_corpus(200, seed=0)
    assert corpus[:50] == pretraining_corpus(50, seed=0)  # document i depends on (seed, i) only
    assert corpus != pretraining_corpus(200, seed=1)
    assert len(set(corpus)) == 200
    text = "\n".join(corpus)
    assert "<|" not in text and "assistant" not in text  # not chat
    for skill in (" = ", "print(", "reversed is", "in capital letters", " the "):
        assert skill in text
    from mixjax.data.synthetic import WORDS

    assert sum(w in text for w in WORDS) >= 0.9 * len(WORDS)  # the SFT domains' vocabulary


def test_trained_bpe_tokenizer_round_trips_and_masks_chat(tmp_path):
    corpus = pretraining_corpus(300, seed=0)
    directory = train_bpe_tokenizer(corpus + _sentences(), vocab_size=512, out_dir=tmp_path / "tok")
    assert sorted(p.name for p in directory.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    tok = load_tokenizer(directory)
    assert isinstance(tok, HFTokenizer) and tok.vocab_size == 512
    for text in corpus[:20] + ["Héllo wörld, 12 x 3 = 36 🙂"]:
        assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode(corpus[0])) < 0.5 * len(corpus[0])  # merges learned: < 1 token per 2 characters
    raw = Tokenizer.from_file(str(directory / "tokenizer.json"))
    assert tok.eos_id == tok.pad_id == raw.token_to_id("<|endoftext|>")
    conv = [("user", "What is 3 + 4?"), ("assistant", "3 + 4 = 7")]
    ids, mask = tok.encode_conversation(conv)
    assert tok.decode(ids) == "<|im_start|>user\nWhat is 3 + 4?<|im_end|>\n<|im_start|>assistant\n3 + 4 = 7<|im_end|>\n"
    assert [tok.decode(r) for r in _runs(ids, mask)] == ["3 + 4 = 7<|im_end|>"]
    docs = encode_documents(tok, corpus[:3], max_len=16)
    assert all(e.num_tokens <= 16 and e.loss_mask.tolist() == [1] * e.num_tokens for e in docs)
    expected = [ids for d in corpus[:3] for ids in _pieces(tok.encode(d) + [tok.eos_id], 16)]
    assert [e.tokens.tolist() for e in docs] == expected


def _pieces(ids, n):
    return [ids[i : i + n] for i in range(0, len(ids), n) if len(ids[i : i + n]) >= 2]


def test_examples_truncated_before_any_answer_are_reported(family):
    """Issue 16 item 1: a domain whose every example loses its answer to truncation is an
    error naming the domain, source, counts and the seq_len that keeps them; at that
    seq_len every example keeps a trained token, one below it some do not."""
    name, directory = family
    import re

    from mixjax.data.domain import DomainSpec, load_domains

    tok = load_tokenizer(directory)
    specs = [DomainSpec("math", ("synthetic:math:20",), val_examples=4)]
    with pytest.raises(DataError, match=r"domain math \(synthetic:math:20\): 16 of 16 training examples, 4 of 4 validation examples lost their answer") as err:
        load_domains(specs, tok, 8)
    need = int(re.search(r"train.seq_len >= (\d+) keeps", str(err.value)).group(1))
    assert need == {"llama3": 123, "qwen25": 120}[name]
    domains = load_domains(specs, tok, need + 1)  # rows of seq_len + 1 tokens
    assert all(e.loss_mask.sum() > 0 for e in domains["math"].train + domains["math"].val)
    with pytest.warns(UserWarning, match=r"domain math \(synthetic:math:20\): \d+ of 16 training examples, \d+ of 4 validation"):
        load_domains(specs, tok, need)


def test_trained_tokenizer_dir_loads_in_transformers_identically(tmp_path):
    transformers = pytest.importorskip("transformers")
    directory = train_bpe_tokenizer(pretraining_corpus(200, seed=0) + _sentences(), vocab_size=512, out_dir=tmp_path / "tok")
    reference = transformers.AutoTokenizer.from_pretrained(str(directory))
    tok = load_tokenizer(directory)
    assert reference.eos_token_id == tok.eos_id and reference.pad_token_id == tok.pad_id and len(reference) == tok.vocab_size
    out = reference.apply_chat_template([{"role": r, "content": t} for r, t in CONVERSATION], tokenize=True, return_dict=True)
    assert tok.encode_conversation(CONVERSATION)[0].tolist() == list(out["input_ids"])


def test_pretraining_data_splits_disjoint_documents():
    from mixjax.data.corpus import pretraining_data, tokenizer_texts

    tok = ByteTokenizer()
    train, val = pretraining_data(tok, num_documents=40, val_documents=8, seed=3, max_len=64)
    corpus = pretraining_corpus(48, seed=3)
    assert all(e.loss_mask.all() and e.num_tokens <= 64 for e in train + val)
    assert sum(e.num_tokens for e in train) == sum(len(tok.encode(d)) + 2 for d in corpus[:40]) - _dropped(tok, corpus[:40], 64)
    assert not {e.tokens.tobytes() for e in train} & {e.tokens.tobytes() for e in val}
    assert train[0].tokens[0] == tok.bos_id
    assert tokenizer_texts(["doc"], [[("user", "q"), ("assistant", "a")]]) == ["doc", "q", "a"]


def _dropped(tok, docs, n):
    """Tokens in the 1-token tail pieces encode_documents drops."""
    return sum(1 for d in docs if (len(tok.encode(d)) + 2) % n == 1)
