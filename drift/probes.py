"""Probe sets: named prompt collections that forgetwatch replays against every checkpoint.

A probe set has a name, a domain (``"in_domain"`` for the task being trained, ``"ood"`` for
everything the model should keep knowing) and items. Each item is a prompt with an optional
reference completion (scored by teacher forcing) and an optional checkable answer (scored by
greedy decoding and exact match).

JSONL format (UTF-8, one JSON object per line, blank lines ignored)::

    {"probe_set": "arith-ood", "domain": "ood"}          <- optional header, first line only
    {"prompt": "2+2=", "reference": "4", "answer": "4"}
    {"prompt": "Capital of France?", "reference": " Paris."}
    {"prompt": "Write a haiku about rain."}

A chat probe set (header ``"format": "chat"``) gives each item ``messages`` (a list of
``{"role": "system" | "user" | "assistant", "content": ...}`` ending with a user turn) instead of a
prompt; it is rendered with the model's chat template (``drift.encoding``), so the reference is scored
as the assistant's reply::

    {"probe_set": "capitals", "domain": "ood", "format": "chat"}
    {"messages": [{"role": "user", "content": "Capital of France?"}], "reference": "Paris."}

The header is recognised by its ``"probe_set"`` key. Name and domain come from the header or
from the loader's keyword arguments; when both give one they must agree. A file loaded without
either name falls back to the file's stem; the domain has no default. Item keys other than
``prompt`` (or ``messages``), ``reference`` and ``answer`` are rejected (a misspelt ``"refrence"`` would otherwise
silently drop the reference).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DOMAINS = ("in_domain", "ood")
FORMATS = ("text", "chat")
ROLES = ("system", "user", "assistant")
_ITEM_KEYS = frozenset({"prompt", "messages", "reference", "answer"})
_HEADER_KEYS = frozenset({"probe_set", "domain", "format"})

Message = tuple[str, str]  # (role, content)


def check_messages(messages: object, *, where: str = "messages") -> tuple[Message, ...]:
    """A chat prompt as ``((role, content), ...)``: non-empty, known roles, string contents, ending with
    a user turn (the reply scored is the assistant's next one). Accepts dicts or pairs."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError(f"{where}: must be a non-empty list of {{'role', 'content'}} objects")
    out = []
    for n, message in enumerate(messages):
        if isinstance(message, dict):
            if set(message) != {"role", "content"}:
                raise ValueError(f"{where}[{n}]: needs exactly the keys 'role' and 'content', got {sorted(message)}")
            role, content = message["role"], message["content"]
        elif isinstance(message, (list, tuple)) and len(message) == 2:
            role, content = message
        else:
            raise ValueError(f"{where}[{n}]: not a {{'role', 'content'}} object")
        if role not in ROLES:
            raise ValueError(f"{where}[{n}]: role must be one of {ROLES}, got {role!r}")
        if not isinstance(content, str) or not content.strip():
            raise ValueError(f"{where}[{n}]: 'content' must be a non-empty string")
        out.append((role, content))
    if out[-1][0] != "user":
        raise ValueError(f"{where}: the last message must be the user's (the reply scored is the assistant's)")
    return tuple(out)


@dataclass(frozen=True)
class ProbeItem:
    """One probe: a prompt, an optional reference completion and an optional checkable answer.
    In a chat probe set ``messages`` is the conversation and ``prompt`` its last user turn (for display)."""

    prompt: str
    reference: str | None = None
    answer: str | None = None
    messages: tuple[Message, ...] | None = None


@dataclass(frozen=True)
class ProbeSet:
    """A named, domain-labelled, ordered collection of probe items."""

    name: str
    domain: str
    items: tuple[ProbeItem, ...]
    format: str = "text"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"probe set name must be a non-empty string, got {self.name!r}")
        if self.domain not in DOMAINS:
            raise ValueError(f"probe set domain must be one of {DOMAINS}, got {self.domain!r}")
        if self.format not in FORMATS:
            raise ValueError(f"probe set format must be one of {FORMATS}, got {self.format!r}")
        if not self.items:
            raise ValueError(f"probe set {self.name!r} has no items")
        if not isinstance(self.items, tuple):
            object.__setattr__(self, "items", tuple(self.items))
        chat = self.format == "chat"
        for n, item in enumerate(self.items):
            if (item.messages is not None) != chat:
                raise ValueError(f"probe {n} of {self.name!r}: a {self.format} probe set needs "
                                 f"{'messages' if chat else 'a prompt and no messages'} in every item")

    def __len__(self) -> int:
        return len(self.items)

    @property
    def prompts(self) -> list[str]:
        return [item.prompt for item in self.items]

    def fingerprint(self) -> str:
        """sha256 of the canonical JSONL body (items only); caches record it to detect edits."""
        return hashlib.sha256(_items_jsonl(self.items).encode("utf-8")).hexdigest()


def _items_jsonl(items: Iterable[ProbeItem]) -> str:
    lines = []
    for item in items:
        record: dict[str, Any] = {"prompt": item.prompt}
        if item.messages is not None:
            record["messages"] = [list(m) for m in item.messages]
        if item.reference is not None:
            record["reference"] = item.reference
        if item.answer is not None:
            record["answer"] = item.answer
        lines.append(json.dumps(record, ensure_ascii=False, sort_keys=True))
    return "\n".join(lines) + "\n"


def dumps_probe_set(probe_set: ProbeSet) -> str:
    """Serialize to JSONL with a header line; `loads_probe_set` reads it back unchanged."""
    head = {"probe_set": probe_set.name, "domain": probe_set.domain}
    if probe_set.format != "text":
        head["format"] = probe_set.format
    body = _items_jsonl(probe_set.items)
    if probe_set.format == "chat":  # the prompt of a chat item is derived from its messages
        body = "\n".join(json.dumps({k: v for k, v in json.loads(line).items() if k != "prompt"}, ensure_ascii=False,
                                    sort_keys=True) for line in body.splitlines()) + "\n"
    return json.dumps(head, ensure_ascii=False) + "\n" + body


def _quote(line: str, limit: int = 200) -> str:
    line = line.rstrip("\n")
    return line if len(line) <= limit else line[:limit] + "..."


def chat_item(messages: object, *, reference: str | None = None, answer: str | None = None,
              where: str = "messages") -> ProbeItem:
    """A chat probe item; its ``prompt`` is the last user turn, for display."""
    checked = check_messages(messages, where=where)
    return ProbeItem(prompt=checked[-1][1], reference=reference, answer=answer, messages=checked)


def _parse_item(record: object, *, where: str, line: str, chat: bool = False) -> ProbeItem:
    if not isinstance(record, dict):
        raise ValueError(  # noqa: TRY004 - the house rule: validation errors are ValueErrors
            f"{where}: expected a JSON object, got {type(record).__name__}: {_quote(line)!r}"
        )
    unknown = sorted(set(record) - _ITEM_KEYS)
    if unknown:
        raise ValueError(
            f"{where}: unknown keys {unknown} (allowed: prompt or messages, reference, answer): {_quote(line)!r}"
        )
    fields: dict[str, str | None] = {}
    for key in ("reference", "answer"):
        value = record.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ValueError(f"{where}: {key!r} must be a non-empty string or absent: {_quote(line)!r}")
        fields[key] = value
    if chat:
        if "prompt" in record or "messages" not in record:
            raise ValueError(f"{where}: a chat probe set's items give 'messages', not 'prompt': {_quote(line)!r}")
        return chat_item(record["messages"], where=f"{where}: messages", **fields)
    if "messages" in record:
        raise ValueError(f"{where}: 'messages' needs a chat probe set (header \"format\": \"chat\"): {_quote(line)!r}")
    prompt = record.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"{where}: 'prompt' must be a non-empty string: {_quote(line)!r}")
    return ProbeItem(prompt=prompt, reference=fields["reference"], answer=fields["answer"])


def loads_probe_set(
    text: str | Iterable[str],
    *,
    name: str | None = None,
    domain: str | None = None,
    source: str = "<string>",
    default_name: str | None = None,
) -> ProbeSet:
    """Parse JSONL text (a string or an iterable of lines) into a `ProbeSet`.

    The name is ``name``, else the header's, else ``default_name``. Raises ValueError naming
    ``source`` and the line number, quoting the offending line.
    """
    lines = text.splitlines() if isinstance(text, str) else list(text)
    header: dict[str, Any] | None = None
    items: list[ProbeItem] = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{source}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: invalid JSON ({exc.msg}): {_quote(line)!r}") from None
        if isinstance(record, dict) and "probe_set" in record:
            if header is not None or items:
                raise ValueError(f"{where}: a header line is only allowed as the first line: {_quote(line)!r}")
            unknown = sorted(set(record) - _HEADER_KEYS)
            if unknown:
                raise ValueError(f"{where}: unknown header keys {unknown}: {_quote(line)!r}")
            if not isinstance(record["probe_set"], str) or not record["probe_set"].strip():
                raise ValueError(f"{where}: header 'probe_set' must be a non-empty string: {_quote(line)!r}")
            if "domain" in record and record["domain"] not in DOMAINS:
                raise ValueError(f"{where}: header 'domain' must be one of {DOMAINS}: {_quote(line)!r}")
            if record.get("format", "text") not in FORMATS:
                raise ValueError(f"{where}: header 'format' must be one of {FORMATS}: {_quote(line)!r}")
            header = record
            continue
        chat = header is not None and header.get("format") == "chat"
        items.append(_parse_item(record, where=where, line=line, chat=chat))

    resolved_name = _resolve("name", name, header.get("probe_set") if header else None, source)
    resolved_domain = _resolve("domain", domain, header.get("domain") if header else None, source)
    resolved_name = resolved_name if resolved_name is not None else default_name
    if resolved_name is None:
        raise ValueError(f"{source}: no probe set name (give name= or a header line with 'probe_set')")
    if resolved_domain is None:
        raise ValueError(f"{source}: no domain (give domain= or a header 'domain': one of {DOMAINS})")
    if resolved_domain not in DOMAINS:
        raise ValueError(f"{source}: domain must be one of {DOMAINS}, got {resolved_domain!r}")
    if not items:
        raise ValueError(f"{source}: probe set {resolved_name!r} has no items")
    return ProbeSet(name=resolved_name, domain=resolved_domain, items=tuple(items),
                    format=header.get("format", "text") if header else "text")


def _resolve(field: str, given: str | None, from_header: str | None, source: str) -> str | None:
    if given is not None and from_header is not None and given != from_header:
        raise ValueError(f"{source}: {field}={given!r} disagrees with the header's {from_header!r}")
    return given if given is not None else from_header


def load_probe_set(path: str | Path, *, name: str | None = None, domain: str | None = None) -> ProbeSet:
    """Read a JSONL probe set file; the name defaults to the header's, then to the file stem."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    return loads_probe_set(text, name=name, domain=domain, source=str(path), default_name=path.stem)


def save_probe_set(probe_set: ProbeSet, path: str | Path) -> None:
    Path(path).write_text(dumps_probe_set(probe_set), encoding="utf-8")
