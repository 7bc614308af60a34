"""Chat templates: render a conversation with the model's own jinja2 ``chat_template``,
exactly as ``transformers``' ``apply_chat_template`` does, and locate the assistant turns.

The environment matches transformers (``ImmutableSandboxedEnvironment`` with
``trim_blocks``, ``lstrip_blocks``, the ``loopcontrols`` extension, a ``{% generation %}``
tag, the ``tojson`` filter without HTML escaping, ``raise_exception`` and
``strftime_now``); templates get ``messages``, ``tools`` (a record's, else None), ``documents=None``,
``add_generation_prompt`` and the tokenizer's special tokens (``bos_token``,
``eos_token``, ...).

Assistant content is located by rendering prefixes: the rendering of the turns before an
assistant turn with ``add_generation_prompt=True`` must be a prefix of the full rendering,
and the assistant's content (verbatim, or stripped for templates that ``trim`` it) follows
there (an assistant turn with more than content, such as tool calls or reasoning: everything
the template writes for it up to the turn's last end marker; one with ``weight`` 0 is not
trained), or, for templates that add scaffolding first (an empty ``<think></think>``), it is
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
from typing import Any

from mixjax.data.formats import PLAIN_KEYS, AnyConversation, Chat, DataError, is_trained

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


def messages_of(conversation: AnyConversation) -> list[dict[str, Any]]:
    """The messages ``apply_chat_template`` takes for a conversation (a copy)."""
    if isinstance(conversation, Chat):
        return [dict(m) for m in conversation.messages]
    return [{"role": role, "content": text} for role, text in conversation]


def tools_of(conversation: AnyConversation) -> list | None:
    """The ``tools`` the template gets: a :class:`Chat`'s, else None."""
    return list(conversation.tools) if isinstance(conversation, Chat) and conversation.tools else None


def render(
    template: str, messages: Sequence[Mapping[str, Any]], special_tokens: Mapping[str, object], add_generation_prompt: bool = False,
    tools: Sequence[Any] | None = None,
) -> str:
    """``apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=...)``."""
    import jinja2

    try:
        return compile_template(template).render(
            messages=list(messages), tools=tools, documents=None, add_generation_prompt=add_generation_prompt, **special_tokens
        )
    except jinja2.TemplateError as err:
        raise ConversationTemplateError(f"chat template failed on roles {[m['role'] for m in messages]}: {err}") from None


def assistant_spans(
    template: str, conversation: AnyConversation, special_tokens: Mapping[str, object], end_markers: Collection[str] = ()
) -> tuple[str, list[tuple[int, int]]]:
    """The full rendering and the character span of every assistant turn's content in it
    (with its tool calls as the template renders them). ``end_markers`` (the tokenizer's
    special tokens) must follow content found by search, and end a tool-call turn.

    Raises:
      ConversationTemplateError: the template refuses the conversation, or an assistant
        turn cannot be located (module docstring).
    """
    compile_template(template)  # a template that does not parse is not this conversation's fault
    messages, tools = messages_of(conversation), tools_of(conversation)
    draw = lambda upto, prompt=False: render(template, messages[:upto], special_tokens, prompt, tools)
    full = draw(len(messages))
    spans = []
    for k, message in enumerate(messages):
        if is_trained(message):
            span = _assistant_span(full, draw, k, message, end_markers)
            if span is not None:
                spans.append(span)
    return full, spans


def _assistant_span(full: str, draw, k: int, message: Mapping[str, Any], end_markers: Collection[str]) -> tuple[int, int] | None:
    """The span of assistant turn ``k`` in ``full`` (None: an empty opening turn, nothing to train).
    ``draw(upto, add_generation_prompt)`` renders ``messages[:upto]``."""
    content = message.get("content") or ""
    start = 0
    if k > 0:  # messages[:0] is no conversation: templates index messages[0]
        prefix = draw(k, True)
        if not full.startswith(prefix):
            raise ConversationTemplateError(
                f"chat template: the rendering of the turns before assistant turn {k} with add_generation_prompt=True"
                " is not a prefix of the whole conversation's rendering, so the assistant content cannot be located"
            )
        start = len(prefix)
        if set(message) - PLAIN_KEYS:  # tool calls, reasoning, ...: what the template makes of them is trained
            return _whole_turn(full, draw(k + 1), start, k, end_markers)
        shown = next((c for c in (content, content.strip()) if full.startswith(c, start)), None)
        if shown is not None:
            return start, start + len(shown)
    elif not content.strip() and not set(message) - PLAIN_KEYS:
        return None  # an empty opening assistant turn: nothing to train, nothing to locate
    # The template puts scaffolding after the generation prompt (e.g. an empty <think></think>
    # block), or the turn opens the conversation: find the content as the last occurrence
    # within this turn's own rendering.
    turn = draw(k + 1)
    found = _last_before_marker(turn, (content, content.strip()), start, end_markers) if full.startswith(turn) else None
    if found is None:
        raise ConversationTemplateError(
            f"chat template: cannot locate assistant turn {k}'s content after the generation prompt"
            f" (found {full[start:start + 40]!r})"
        )
    return found


def _whole_turn(full: str, turn: str, start: int, k: int, end_markers: Collection[str]) -> tuple[int, int]:
    """A turn with more than content (tool calls, reasoning): everything the template writes
    after the generation prompt up to the turn's last end marker, in its own syntax."""
    if not full.startswith(turn):
        raise ConversationTemplateError(
            f"chat template: the rendering up to assistant turn {k} is not a prefix of the whole conversation's rendering"
        )
    ends = [turn.rfind(m, start) for m in end_markers]
    end = max(ends, default=-1)
    if end < start:
        end = len(turn.rstrip())
    if end <= start:
        raise ConversationTemplateError(f"chat template: assistant turn {k} renders nothing to train")
    return start, end


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
