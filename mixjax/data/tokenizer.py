"""Tokenizers and the chat template: conversation -> (tokens, loss mask).

``ByteTokenizer`` (default, no files needed): UTF-8 bytes plus a few special tokens.
``HFTokenizer``: a Hugging Face ``tokenizers`` ``tokenizer.json`` from a local path
(extra ``hf``). The template is the same for both:

    <bos> <|user|> text <|end|> <|assistant|> text <|end|> ... <eos>

Only assistant content and its ``<|end|>`` count in the loss.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from mixjax.data.formats import Conversation

SPECIALS = ("<pad>", "<bos>", "<eos>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>")


class Tokenizer(Protocol):
    vocab_size: int
    pad_id: int

    def encode(self, text: str) -> list[int]: ...

    def special(self, name: str) -> int: ...


class ByteTokenizer:
    """Bytes 0..255 shifted past the special tokens. vocab_size = 256 + len(SPECIALS)."""

    pad_id = 0

    def __init__(self) -> None:
        self.vocab_size = 256 + len(SPECIALS)

    def encode(self, text: str) -> list[int]:
        return [b + len(SPECIALS) for b in text.encode("utf-8")]

    def decode(self, ids) -> str:
        return bytes(i - len(SPECIALS) for i in ids if i >= len(SPECIALS)).decode("utf-8", errors="replace")

    def special(self, name: str) -> int:
        return SPECIALS.index(name)


class HFTokenizer:
    """A local ``tokenizer.json``; special tokens missing from its vocabulary are added."""

    def __init__(self, path: str | Path) -> None:
        from tokenizers import Tokenizer as _Tokenizer

        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.exists():
            raise FileNotFoundError(f"{path}: no tokenizer.json there")
        self._tok = _Tokenizer.from_file(str(path))
        self._tok.add_special_tokens([s for s in SPECIALS if self._tok.token_to_id(s) is None])
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.pad_id = self.special("<pad>")

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self._tok.decode(list(ids))

    def special(self, name: str) -> int:
        return self._tok.token_to_id(name)


def encode_conversation(tokenizer: Tokenizer, conversation: Conversation, max_len: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and loss mask (1 on assistant content and its end marker), truncated to max_len."""
    ids, mask = [tokenizer.special("<bos>")], [0]
    end = tokenizer.special("<|end|>")
    for role, text in conversation:
        body = tokenizer.encode(text)
        trained = int(role == "assistant")
        ids += [tokenizer.special(f"<|{role}|>"), *body, end]
        mask += [0] + [trained] * (len(body) + 1)
    ids.append(tokenizer.special("<eos>"))
    mask.append(0)
    ids, mask = np.asarray(ids, np.int32), np.asarray(mask, np.int32)
    if max_len is not None:
        ids, mask = ids[:max_len], mask[:max_len]
    return ids, mask
