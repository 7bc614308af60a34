"""Chat templates: render a conversation with the model's own jinja2 ``chat_template``,
exactly as ``transformers``' ``apply_chat_template`` does, and locate the assistant turns.

The environment matches transformers (``ImmutableSandboxedEnvironment`` with
``trim_blocks``, ``lstrip_blocks``, the ``loopcontrols`` extension, a ``{% generation %}``
tag, the ``tojson`` filter without HTML escaping, ``raise_exception`` and
``strftime_now``); templates get ``messages``, ``tools=None``, ``documents=None``,
``add_generation_prompt`` and the tokenizer's special tokens (``bos_token``,
``eos_token``, ...).

Assistant content is located by rendering prefixes: the rendering of the turns before an
assistant turn with ``add_generation_prompt=True`` must be a prefix of the full rendering,
and the assistant's content (verbatim, or stripped for templates that ``trim`` it) follows
there, or, for templates that add scaffolding first (an empty ``<think></think>``), it is
the last occurrence within the rendering of the turns up to and including that one (which
must then also be a prefix). An assistant turn with no turn before it (a conversation that
opens with the assistant) is located the second way: its prefix would be the empty list,
which templates are not written for (``messages[0]`` fails), while the conversation itself
renders. A conversation for which neither holds, or that the template refuses
(``raise_exception``), raises ``ConversationTemplateError``; a template that does not
parse raises ``ChatTemplateError``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime

from mixjax.data.formats import Conversation, DataError

# ChatML, as Qwen2.5 uses it (without Qwen's default system prompt and tool support).
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


class ChatTemplateError(DataError):
    """A chat template that cannot be rendered, or whose assistant turns cannot be located."""


class ConversationTemplateError(ChatTemplateError):
    """One conversation that the template refuses, or whose assistant turns cannot be located
    in its rendering (the conversation is unusable; the template itself is fine)."""


@functools.lru_cache(maxsize=16)
def compile_template(source: str):
    """The compiled jinja2 template, in transformers' environment."""
    import jinja2
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        """``{% generation %}...{% endgeneration %}`` (transformers' assistant tracker): rendered as is."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as err:
        raise ChatTemplateError(f"chat_template does not parse: {err}") from None


def messages_of(conversation: Conversation) -> list[dict[str, str]]:
    return [{"role": role, "content": text} for role, text in conversation]


def render(
    template: str, messages: Sequence[Mapping[str, str]], special_tokens: Mapping[str, object], add_generation_prompt: bool = False
) -> str:
    """``apply_chat_template(messages, tokenize=False, add_generation_prompt=...)``."""
    import jinja2

    try:
        return compile_template(template).render(
            messages=list(messages), tools=None, documents=None, add_generation_prompt=add_generation_prompt, **special_tokens
        )
    except jinja2.TemplateError as err:
        raise ConversationTemplateError(f"chat template failed on roles {[m['role'] for m in messages]}: {err}") from None


def assistant_spans(
    template: str, conversation: Conversation, special_tokens: Mapping[str, object], end_markers: Collection[str] = ()
) -> tuple[str, list[tuple[int, int]]]:
    """The full rendering and the character span of every assistant turn's content in it.
    ``end_markers`` (the tokenizer's special tokens) must follow content found by search."""
    compile_template(template)  # a template that does not parse is not this conversation's fault
    messages = messages_of(conversation)
    full = render(template, messages, special_tokens)
    spans = []
    for k, (role, content) in enumerate(conversation):
        if role != "assistant":
            continue
        start = 0
        if k > 0:  # messages[:0] is no conversation: templates index messages[0]
            prefix = render(template, messages[:k], special_tokens, add_generation_prompt=True)
            if not full.startswith(prefix):
                raise ConversationTemplateError(
                    f"chat template: the rendering of the turns before assistant turn {k} with add_generation_prompt=True"
                    " is not a prefix of the whole conversation's rendering, so the assistant content cannot be located"
                )
            start = len(prefix)
            shown = next((c for c in (content, content.strip()) if full.startswith(c, start)), None)
            if shown is not None:
                spans.append((start, start + len(shown)))
                continue
        elif not content.strip():
            continue  # an empty opening assistant turn: nothing to train, nothing to locate
        # The template puts scaffolding after the generation prompt (e.g. an empty <think></think>
        # block), or the turn opens the conversation: find the content as the last occurrence
        # within this turn's own rendering.
        turn = render(template, messages[: k + 1], special_tokens)
        found = _last_before_marker(turn, (content, content.strip()), start, end_markers) if full.startswith(turn) else None
        if found is None:
            raise ConversationTemplateError(
                f"chat template: cannot locate assistant turn {k}'s content after the generation prompt"
                f" (found {full[start:start + 40]!r})"
            )
        spans.append(found)
    return full, spans


def _last_before_marker(text: str, candidates, start: int, end_markers: Collection[str]) -> tuple[int, int] | None:
    """The span of the last occurrence (at or after ``start``) of a candidate that is directly
    followed by an end marker (any, when none are given); the longest candidate first."""
    for candidate in sorted(set(candidates), key=len, reverse=True):
        at = text.rfind(candidate, start) if candidate else -1
        while at >= start:
            end = at + len(candidate)
            if not end_markers or any(text.startswith(m, end) for m in end_markers):
                return at, end
            at = text.rfind(candidate, start, end - 1)
    return None
