from pathlib import Path

import numpy as np
import pytest

from mixjax.data.budget import BudgetError, sample_to_budget, token_budgets
from mixjax.data.domain import Domain, DomainSpec, Example, load_domain, load_domains
from mixjax.data.formats import DataError, parse_record, read_conversations
from mixjax.data.pipeline import eval_batches, select_mixture, training_dataset, weighted_stream
from mixjax.data.synthetic import generate
from mixjax.data.tokenizer import ByteTokenizer, HFTokenizer, encode_conversation, load_tokenizer

FIXTURES = Path(__file__).parent / "fixtures"


def test_three_formats_parse():
    alpaca, _ = read_conversations(FIXTURES / "alpaca.jsonl")
    assert alpaca[0] == [("user", "Add the numbers.\n\n2 and 3"), ("assistant", "5")]
    assert alpaca[1] == [("user", "Say hello."), ("assistant", "Hello!")]
    sharegpt, _ = read_conversations(FIXTURES / "sharegpt.json")
    assert sharegpt[0] == [("system", "Be brief."), ("user", "Capital of France?"), ("assistant", "Paris.")]
    assert [r for r, _ in sharegpt[1]] == ["user", "assistant", "user", "assistant"]
    openai, _ = read_conversations(FIXTURES / "openai.jsonl")
    assert openai[0] == [("user", "Reverse 'abc'."), ("assistant", "cba")]


def test_parquet_parses(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"instruction": ["Say hi."], "output": ["hi"]}), tmp_path / "d.parquet")
    assert read_conversations(tmp_path / "d.parquet")[0] == [[("user", "Say hi."), ("assistant", "hi")]]


def test_malformed_lines_reported_with_file_and_line():
    path = FIXTURES / "malformed.jsonl"
    with pytest.raises(DataError) as err:
        read_conversations(path, max_bad_fraction=0.1)
    assert f"{path}:2: invalid JSON" in str(err.value) and f"{path}:3: unknown format" in str(err.value)
    assert "2 of 4 records malformed" in str(err.value)
    with pytest.warns(UserWarning, match="skipped 2 malformed"):
        good, report = read_conversations(path, max_bad_fraction=0.5)
    assert len(good) == 2 and report.bad[0].startswith(f"{path}:2:")


def test_unknown_format_names_expected_fields():
    with pytest.raises(ValueError, match=r"Alpaca \{instruction, \[input\], output\}.*ShareGPT.*OpenAI"):
        parse_record({"prompt": "x", "completion": "y"})


def test_loss_mask_covers_only_responses():
    tok = ByteTokenizer()
    ids, mask = encode_conversation(tok, [("user", "hi"), ("assistant", "yo")])
    text = [tok.decode([i]) if i >= 7 else f"<{i}>" for i in ids]
    trained = "".join(t for t, m in zip(text, mask) if m)
    assert trained == f"yo<{tok.special('<|end|>')}>"
    assert mask.sum() == 3 and ids[0] == tok.special("<bos>") and ids[-1] == tok.special("<eos>")


def test_bare_tokenizer_json_loads_without_adding_tokens(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, trainers

    bpe = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel()
    bpe.decoder = decoders.ByteLevel()
    corpus = [" ".join(turn for _, turn in c) for c in generate("math", 300)]
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>"]))
    bpe.save(str(tmp_path / "tokenizer.json"))
    tok = load_tokenizer(tmp_path / "tokenizer.json")
    assert isinstance(tok, HFTokenizer) and tok.vocab_size == 300  # mixjax's 7 specials are not added
    assert tok.special("<|assistant|>") is None and tok.pad_id == 0
    assert tok.decode(tok.encode(" 2 + 2 = 4")) == " 2 + 2 = 4"
    with pytest.raises(DataError, match="has no chat_template"):
        encode_conversation(tok, [("user", "What is 2 + 2?"), ("assistant", "2 + 2 = 4")])


def test_synthetic_domains_are_deterministic_and_distinct():
    assert generate("code", 50, seed=1) == generate("code", 50, seed=1)
    assert generate("code", 50, seed=1) != generate("code", 50, seed=2)
    lengths = {d: np.mean([len(c[0][1]) + len(c[1][1]) for c in generate(d, 500)]) for d in ("instruct", "math", "code")}
    assert lengths["instruct"] < lengths["code"] and lengths["math"] < lengths["code"]
    assert len({repr(c) for c in generate("instruct", 2000)}) > 1500  # not a small pool repeated


def test_validation_is_disjoint_and_fixed():
    tok = ByteTokenizer()
    spec = DomainSpec("math", ("synthetic:math:500",), val_examples=50)
    a, b = load_domain(spec, tok, 128), load_domain(spec, tok, 128)
    assert len(a.val) == 50
    key = lambda e: e.tokens.tobytes()
    assert not {key(e) for e in a.val} & {key(e) for e in a.train}
    assert [key(e) for e in a.val] == [key(e) for e in b.val]


def test_validation_is_disjoint_from_every_domains_training_data():
    """Domain b holds all of domain a's conversations: a's validation examples must not be
    trained on through b (issue 8 item 7)."""
    specs = [DomainSpec("a", ("synthetic:math:50",), val_examples=5), DomainSpec("b", ("synthetic:math:50", "synthetic:code:50"), val_examples=3)]
    domains = load_domains(specs, ByteTokenizer(), 512)
    key = lambda e: e.tokens.tobytes()
    val = {key(e) for d in domains.values() for e in d.val}
    assert len(val) == 8  # the 5 + 3 validation examples are distinct here
    for d in domains.values():
        assert not {key(e) for e in d.train} & val
    assert (len(domains["a"].train), len(domains["b"].train)) == (45, 100 - 8)
    # load_domain alone (one domain) still only holds out its own validation set
    assert len(load_domain(specs[1], ByteTokenizer(), 512).train) == 97


def test_empty_domain_fails_clearly(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="no records"):
        load_domain(DomainSpec("x", (str(tmp_path / "empty.jsonl"),)), ByteTokenizer(), 64)


def test_budget_sampler_within_one_example():
    rng = np.random.default_rng(0)
    lengths = rng.integers(10, 200, size=2000)
    for budget in (0, 1, 5_000, 50_000, int(lengths.sum())):
        picks = sample_to_budget(lengths, budget, seed=3)
        assert len(set(picks.tolist())) == len(picks)
        assert abs(int(lengths[picks].sum()) - budget) <= lengths.max()
    np.testing.assert_array_equal(sample_to_budget(lengths, 9_999, 3), sample_to_budget(lengths, 9_999, 3))
    assert not np.array_equal(sample_to_budget(lengths, 9_999, 3), sample_to_budget(lengths, 9_999, 4))


def test_budget_above_available_says_how_much():
    with pytest.raises(BudgetError, match=r"domain code: budget of 1,000 tokens exceeds the 600 available \(3 examples\)"):
        sample_to_budget([100, 200, 300], 1000, 0, "code")


def test_token_budgets_sum_exactly():
    b = token_budgets([0.2, 0.3, 0.5], 1001, ["a", "b", "c"])
    assert sum(b.values()) == 1001 and b == {"a": 200, "b": 300, "c": 501}


def _tagged_domain(name: str, n: int, base: int) -> Domain:
    """Example k is k-specific: every token equals base + k, so packing errors are visible."""
    rng = np.random.default_rng(base)
    ex = [Example(np.full(int(rng.integers(5, 40)), base + k, np.int32), np.ones(1, np.int32)) for k in range(n)]
    ex = [Example(e.tokens, np.ones_like(e.tokens)) for e in ex]
    return Domain(name, tuple(ex), ())


@pytest.fixture
def tagged():
    return {"a": _tagged_domain("a", 60, 1000), "b": _tagged_domain("b", 60, 2000)}


def _epoch_batches(examples, seed, epochs=1):
    return list(training_dataset(examples, seq_len=64, batch_size=4, epochs=epochs, seed=seed))


def test_packing_never_attends_across_examples(tagged):
    examples = select_mixture(tagged, {"a": 600, "b": 900}, seed=0)
    for batch in _epoch_batches(examples, seed=0):
        seg, tokens = batch["segment_ids"], batch["inputs"]
        same_segment = (seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] > 0)
        causal = np.tril(np.ones(seg.shape[1:], bool))
        allowed = same_segment & causal
        # Every allowed (query, key) pair lies in one example: identical tags.
        assert np.all((tokens[:, :, None] == tokens[:, None, :])[allowed])
        assert np.all(batch["targets"][seg > 0] == tokens[seg > 0])  # next token within the example
        assert np.all(batch["weights"][seg == 0] == 0)


def test_every_token_exactly_once_per_epoch(tagged):
    examples = select_mixture(tagged, {"a": 600, "b": 900}, seed=0)
    expected = np.sort(np.concatenate([e.tokens[:-1] for e in examples]))
    for epochs in (1, 3):
        batches = _epoch_batches(examples, seed=0, epochs=epochs)
        seen = np.sort(np.concatenate([b["inputs"][b["segment_ids"] > 0] for b in batches]))
        np.testing.assert_array_equal(seen, np.sort(np.tile(expected, epochs)))
        assert all(b["inputs"].shape == (4, 64) for b in batches)


def test_mixture_hits_token_budgets(tagged):
    examples = select_mixture(tagged, {"a": 600, "b": 900}, seed=0)
    a_tokens = sum(e.num_tokens for e in examples if e.tokens[0] < 2000)
    b_tokens = sum(e.num_tokens for e in examples if e.tokens[0] >= 2000)
    assert abs(a_tokens - 600) <= 40 and abs(b_tokens - 900) <= 40


def test_same_seed_same_stream_other_seed_other_stream(tagged):
    examples = select_mixture(tagged, {"a": 600, "b": 900}, seed=0)
    one, two, other = (_epoch_batches(examples, seed=s) for s in (5, 5, 6))
    assert all(np.array_equal(x["inputs"], y["inputs"]) for x, y in zip(one, two))
    assert not all(np.array_equal(x["inputs"], y["inputs"]) for x, y in zip(one, other))


def test_process_shards_partition_the_stream(tagged):
    examples = select_mixture(tagged, {"a": 600, "b": 900}, seed=0)
    shard = lambda i: np.concatenate(
        [b["inputs"][b["segment_ids"] > 0] for b in training_dataset(examples, seq_len=64, batch_size=2, epochs=1, seed=0, process_index=i, process_count=2)]
    )
    both = np.sort(np.concatenate([shard(0), shard(1)]))
    np.testing.assert_array_equal(both, np.sort(np.concatenate([e.tokens[:-1] for e in examples])))


def test_weighted_stream_follows_weights(tagged):
    stream = iter(weighted_stream(tagged, {"a": 0.8, "b": 0.2}, seq_len=64, batch_size=4, seed=0))
    tokens = np.concatenate([b["inputs"][b["segment_ids"] > 0] for b in (next(stream) for _ in range(30))])
    share_a = np.mean(tokens < 2000)
    assert 0.7 < share_a < 0.9


def test_eval_batches_cover_validation_once(tagged):
    examples = tagged["a"].train[:20]
    batches = eval_batches(examples, seq_len=64, batch_size=4)
    assert sum(int(b["weights"].sum()) for b in batches) == sum(e.num_tokens - 1 for e in examples)


def test_tfds_source_skips_cleanly_when_absent():
    pytest.importorskip("tensorflow_datasets")
    from mixjax.data.domain import _tfds_conversations  # noqa: F401  (import path works)
