"""Tokenizers: conversation -> (token ids, loss mask), with the model's own chat template.

``load_tokenizer("byte")``: ``ByteTokenizer``, UTF-8 bytes plus mixjax's own special
tokens and template (no files needed)::

    <bos> <|user|> text <|end|> <|assistant|> text <|end|> ... <eos>

``load_tokenizer(path)``: ``HFTokenizer``, a Hugging Face model or tokenizer directory
(or its ``tokenizer.json``), read exactly as a real Llama-3 / Qwen2.5 checkpoint ships it:
``tokenizer.json`` plus ``tokenizer_config.json`` (``chat_template``, ``bos_token``,
``eos_token``, ``pad_token``, ``added_tokens_decoder``; a ``chat_template.jinja`` file
beside it wins, as in recent transformers). Conversations are rendered with the jinja2
chat template as ``transformers``' ``apply_chat_template`` does and the rendering is
tokenised as one string (``add_special_tokens=False``), so the ids equal
``apply_chat_template(..., tokenize=True)``. No token is ever added: ``check_vocab``
refuses a tokenizer whose ids exceed the model's embedding rows.

Loss mask: 1 on the tokens of assistant content (all the template writes for a turn with tool
calls or other fields; none for a ``weight`` 0 turn) and on the end-of-turn special token that
the template puts right after it (``<|eot_id|>``, ``<|im_end|>``, ``<|end|>``), 0 elsewhere.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from mixjax.data.chat_template import CHATML_TEMPLATE, ConversationTemplateError, assistant_spans, messages_of
from mixjax.data.formats import PLAIN_KEYS, AnyConversation, Chat, DataError, is_trained

SPECIALS = ("<pad>", "<bos>", "<eos>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>")
# Files of a tokenizer directory, in the order they are hashed and copied.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")
# Qwen2's pre-tokenizer split (digits one by one), used by train_bpe_tokenizer.
QWEN2_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""


class Tokenizer(Protocol):
    vocab_size: int
    pad_id: int
    bos_id: int | None
    eos_id: int | None

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def encode_conversation(self, conversation: AnyConversation, max_len: int | None = None) -> tuple[np.ndarray, np.ndarray]: ...

    def encode_conversations(self, conversations: Sequence[AnyConversation], max_len: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]: ...

    def fingerprint(self) -> str: ...


def _arrays(ids: Sequence[int], mask: Sequence[int], max_len: int | None) -> tuple[np.ndarray, np.ndarray]:
    ids, mask = np.asarray(ids, np.int32), np.asarray(mask, np.int32)
    if max_len is not None:
        ids, mask = ids[:max_len], mask[:max_len]
    return ids, mask


def _has_tools(conversation: AnyConversation) -> bool:
    """Whether the conversation has tool calls, tool results, tools or another field that
    only a model's template renders (``weight`` aside)."""
    if not isinstance(conversation, Chat):
        return False
    return bool(conversation.tools) or any(set(m) - PLAIN_KEYS or m["role"] == "tool" for m in conversation.messages)


class ByteTokenizer:
    """Bytes 0..255 shifted past the special tokens. vocab_size = 256 + len(SPECIALS)."""

    pad_id = 0

    def __init__(self) -> None:
        self.vocab_size = 256 + len(SPECIALS)
        self.bos_id, self.eos_id = self.special("<bos>"), self.special("<eos>")

    def encode(self, text: str) -> list[int]:
        return [b + len(SPECIALS) for b in text.encode("utf-8")]

    def decode(self, ids) -> str:
        return bytes(i - len(SPECIALS) for i in ids if i >= len(SPECIALS)).decode("utf-8", errors="replace")

    def special(self, name: str) -> int:
        return SPECIALS.index(name)

    def fingerprint(self) -> str:
        return "byte"

    def encode_conversations(self, conversations: Sequence[AnyConversation], max_len: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        return [self.encode_conversation(c, max_len) for c in conversations]

    def encode_conversation(self, conversation: AnyConversation, max_len: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Raises ConversationTemplateError for tool calls, tool results, tools or other
        template fields: mixjax's byte format has no syntax for them (a model's own tokenizer
        renders them)."""
        if _has_tools(conversation):
            raise ConversationTemplateError(
                "the byte tokenizer cannot render tool calls, tool results or tools; use the model's own tokenizer"
                " (tokenizer=<model dir>), whose chat template renders them"
            )
        ids, mask = [self.special("<bos>")], [0]
        end = self.special("<|end|>")
        for message in messages_of(conversation):
            body = self.encode(message["content"])
            trained = int(is_trained(message))
            ids += [self.special(f"<|{message['role']}|>"), *body, end]
            mask += [0] + [trained] * (len(body) + 1)
        ids.append(self.special("<eos>"))
        mask.append(0)
        return _arrays(ids, mask, max_len)


def _token_text(value) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


class HFTokenizer:
    """A local Hugging Face tokenizer directory (or ``tokenizer.json``), never extended."""

    def __init__(self, path: str | Path) -> None:
        from tokenizers import Tokenizer as _Tokenizer

        path = Path(path)
        self.directory = path if path.is_dir() else path.parent
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.exists():
            raise DataError(f"{file}: no tokenizer.json there")
        self._tok = _Tokenizer.from_file(str(file))
        self._files = [file] + [self.directory / f for f in TOKENIZER_FILES[1:] if (self.directory / f).exists()]
        config_file = self.directory / "tokenizer_config.json"
        config = json.loads(config_file.read_text()) if config_file.exists() else {}
        vocab = self._tok.get_vocab(with_added_tokens=True)
        self.vocab_size = max(vocab.values()) + 1
        for key, added in (config.get("added_tokens_decoder") or {}).items():
            content = _token_text(added)
            if vocab.get(content) != int(key):
                raise DataError(
                    f"{config_file}: added token {content!r} has id {key} there but {vocab.get(content)} in {file};"
                    " mixjax never adds tokens, so the two files must agree"
                )
        map_file = self.directory / "special_tokens_map.json"
        legacy = json.loads(map_file.read_text()) if map_file.exists() else {}
        named = {}
        for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
            token = _token_text(config.get(key)) or _token_text(legacy.get(key))
            if token is not None and token not in vocab:
                raise DataError(f"{config_file}: {key} {token!r} is not in the vocabulary of {file}")
            named[key] = token
        # What templates see (as transformers' special_tokens_map: only the tokens that are set).
        self.special_tokens = {k: v for k, v in named.items() if v is not None}
        extra = config.get("additional_special_tokens") or legacy.get("additional_special_tokens")
        if extra:
            self.special_tokens["additional_special_tokens"] = [_token_text(t) for t in extra]
        token_id = lambda key: vocab[named[key]] if named[key] is not None else None
        self.bos_id, self.eos_id = token_id("bos_token"), token_id("eos_token")
        pad = token_id("pad_token")
        self.pad_id = pad if pad is not None else self.eos_id if self.eos_id is not None else 0
        self._special_ids = {t.content: i for i, t in self._tok.get_added_tokens_decoder().items() if t.special}
        self._special_id_set = set(self._special_ids.values())
        self.chat_template = self._chat_template(config)

    def _chat_template(self, config: dict) -> str | None:
        jinja_file = self.directory / "chat_template.jinja"
        if jinja_file.exists():
            return jinja_file.read_text()
        template = config.get("chat_template")
        if isinstance(template, list):  # [{"name": ..., "template": ...}]: the default one
            template = {t["name"]: t["template"] for t in template}.get("default")
        return template

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def special(self, name: str) -> int | None:
        return self._tok.token_to_id(name)

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for f in self._files:
            digest.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
        return digest.hexdigest()

    def render(self, conversation: AnyConversation) -> str:
        return assistant_spans(self._template(), conversation, self.special_tokens, self._special_ids)[0]

    def _template(self) -> str:
        if self.chat_template is None:
            raise DataError(
                f"{self.directory}: the tokenizer has no chat_template (tokenizer_config.json or chat_template.jinja);"
                " SFT needs the model's chat template"
            )
        return self.chat_template

    def encode_conversation(self, conversation: AnyConversation, max_len: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        return self.encode_conversations([conversation], max_len)[0]

    def encode_conversations(self, conversations: Sequence[AnyConversation], max_len: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """``encode_conversation`` of each, tokenised in one batch."""
        template = self._template()
        rendered = [assistant_spans(template, c, self.special_tokens, self._special_ids) for c in conversations]
        encodings = self._tok.encode_batch([text for text, _ in rendered], add_special_tokens=False)
        return [self._masked(e.ids, e.offsets, spans, max_len) for e, (_, spans) in zip(encodings, rendered)]

    def _masked(self, ids: list[int], offsets: list[tuple[int, int]], spans, max_len: int | None) -> tuple[np.ndarray, np.ndarray]:
        mask = np.zeros(len(ids), np.int32)
        bounds = np.asarray(offsets, np.int64).reshape(-1, 2)
        starts, ends = bounds[:, 0], bounds[:, 1]
        for lo, hi in spans:
            inside = (ends > lo) & (starts < hi)  # tokens overlapping the content
            mask[inside] = 1
            after = int(np.searchsorted(starts, hi, side="left"))  # first token starting at or after the content's end
            if after < len(ids) and starts[after] == hi and ids[after] in self._special_id_set:
                mask[after] = 1  # the template's end-of-turn token
        return _arrays(ids, mask, max_len)


def load_tokenizer(spec: str | Path) -> ByteTokenizer | HFTokenizer:
    """``"byte"`` or a local tokenizer / model directory, or its ``tokenizer.json``."""
    if str(spec) == "byte":
        return ByteTokenizer()
    return HFTokenizer(spec)


def check_vocab(tokenizer: Tokenizer, model_vocab_size: int) -> None:
    """Raise DataError when the tokenizer can produce ids beyond the model's embedding rows."""
    if tokenizer.vocab_size > model_vocab_size:
        raise DataError(
            f"the tokenizer has {tokenizer.vocab_size:,} tokens but the model's embedding has {model_vocab_size:,} rows:"
            " ids past the embedding would index garbage (use the model's own tokenizer)"
        )


def encode_conversation(tokenizer: Tokenizer, conversation: AnyConversation, max_len: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and loss mask (1 on assistant content and its end-of-turn token), truncated to max_len."""
    return tokenizer.encode_conversation(conversation, max_len)


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | Path) -> Path:
    """Train a byte-level BPE on ``texts`` (Qwen2's pre-tokenizer: single digits, words, punctuation)
    and write a tokenizer directory like a Qwen checkpoint's: ``tokenizer.json`` and ``tokenizer_config.json`` with a ChatML ``chat_template``, specials
    ``<|endoftext|>`` (eos and pad), ``<|im_start|>``, ``<|im_end|>``. Returns ``out_dir``."""
    from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
    from tokenizers import Tokenizer as _Tokenizer

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = _Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator(texts, trainer)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bpe.save(str(out / "tokenizer.json"))
    added = {
        str(bpe.token_to_id(s)): {"content": s, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
        for s in specials
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added,
        "bos_token": None,
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "chat_template": CHATML_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1 << 20,
        "split_special_tokens": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    return out
