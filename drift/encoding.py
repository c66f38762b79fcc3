"""Probe items as token ids: plain text, or a conversation rendered with the chat template.

Text items: the prompt is tokenized as the tokenizer does by default (special tokens such as BOS
added), the reference without special tokens.

Chat items (``ProbeItem.messages``): the prompt is the conversation rendered with the tokenizer's
chat template and the generation prompt (``apply_chat_template(..., add_generation_prompt=True)``),
so the model is asked exactly as it is served. The completion is what the template renders for the
assistant's reply: the conversation with the reference appended as an assistant turn, minus the
rendered prompt; end-of-turn markers the template writes after the reply are scored as part of it.
Both are tokenized without adding special tokens (the template writes its own). Works for any
``transformers`` tokenizer: character-level, BPE, unigram.
"""

from __future__ import annotations

from drift.probes import ProbeItem, ProbeSet

__all__ = ["NoChatTemplate", "encode_probe_items", "encode_prompt"]


class NoChatTemplate(ValueError):
    """A chat probe set asked of a tokenizer without a chat template."""


def _messages(item: ProbeItem, extra: tuple[tuple[str, str], ...] = ()) -> list[dict[str, str]]:
    return [{"role": role, "content": content} for role, content in (*(item.messages or ()), *extra)]


def _render(tokenizer, messages: list[dict[str, str]], *, add_generation_prompt: bool) -> str:
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)
    if not isinstance(text, str):
        raise ValueError("the chat template did not render to text")  # noqa: TRY004 - bad input, not a bug
    return text


def _ids(tokenizer, text: str, *, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def _check_template(tokenizer, probe_set: ProbeSet) -> None:
    if probe_set.format == "chat" and not getattr(tokenizer, "chat_template", None):
        raise NoChatTemplate(
            f"probe set {probe_set.name!r} is a chat probe set but the model's tokenizer has no chat template; "
            "save the tokenizer with its chat_template (tokenizer_config.json or chat_template.jinja) "
            "or use a text probe set"
        )


def encode_prompt(tokenizer, item: ProbeItem) -> list[int]:
    """The prompt's token ids: the text as is, or the conversation with the generation prompt."""
    if item.messages is None:
        return _ids(tokenizer, item.prompt, special=True)
    return _ids(tokenizer, _render(tokenizer, _messages(item), add_generation_prompt=True), special=False)


def _chat_reply(tokenizer, item: ProbeItem, prompt_text: str) -> str:
    full = _render(tokenizer, _messages(item, (("assistant", item.reference or ""),)), add_generation_prompt=False)
    if full.startswith(prompt_text) and len(full) > len(prompt_text):
        return full[len(prompt_text):]
    return item.reference or ""  # a template that renders the prompt differently once answered


def encode_probe_items(tokenizer, probe_set: ProbeSet) -> list[tuple[list[int], list[int] | None]]:
    """Per item, (prompt ids, reference completion ids or None); raises ValueError naming the item
    when a prompt or a reference has no tokens, NoChatTemplate for a chat set without a template."""
    _check_template(tokenizer, probe_set)
    out = []
    for n, item in enumerate(probe_set.items):
        where = f"probe {n} of {probe_set.name!r}"
        if item.messages is None:
            prompt = _ids(tokenizer, item.prompt, special=True)
            reply = item.reference
        else:
            prompt_text = _render(tokenizer, _messages(item), add_generation_prompt=True)
            prompt = _ids(tokenizer, prompt_text, special=False)
            reply = _chat_reply(tokenizer, item, prompt_text) if item.reference is not None else None
        if not prompt:
            raise ValueError(f"{where}: prompt {item.prompt[:200]!r} tokenizes to no tokens")
        completion = None
        if reply is not None:
            completion = _ids(tokenizer, reply, special=False)
            if not completion:
                raise ValueError(f"{where}: reference {item.reference!r} has no tokens")
        out.append((prompt, completion))
    return out
