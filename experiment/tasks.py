"""The tasks of the continual post-training experiment, their verifiers and probe sets.

Two pairs of skills (`SKILL_PAIRS`), each an old skill the base is pretrained on (later the ``ood``
probe set) and a new one post-training teaches (``in_domain``):

``add-letters``
    old ``arithmetic``: two-digit addition, ``"12+34="`` -> ``"46"``; one correct answer.
    new ``letters``: ``"B:dgbe>"`` -> any two distinct letters of the input in alphabetical order
    (``"bd"``, ``"be"``, ``"de"``, ...); six correct answers per prompt, so methods can learn
    different distributions over them, as RL's Razor's ParityMNIST does (arXiv:2509.04259).
``reverse-between``
    old ``reverse``: ``"R:dgbe>"`` -> ``"ebgd"``; one correct answer.
    new ``between``: ``"N:37,52>"`` -> any whole number strictly between the two (``"38"`` ...
    ``"51"``); at least one and up to 87 correct answers.

Every task splits its prompts once, with a fixed seed independent of any training seed, into a
training pool and a held-out pool; probe sets and ground-truth evaluation only use held-out prompts.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

ARITHMETIC = "arithmetic"
LETTERS = "letters"
REVERSE = "reverse"
BETWEEN = "between"
TASKS = (ARITHMETIC, LETTERS, REVERSE, BETWEEN)

SKILL_PAIRS: dict[str, tuple[str, str]] = {
    "add-letters": (ARITHMETIC, LETTERS),
    "reverse-between": (REVERSE, BETWEEN),
}
"""skill pair -> (old task, new task)."""
DEFAULT_SKILLS = "add-letters"

LETTER_ALPHABET = "abcdefgh"
LETTERS_IN_PROMPT = 4
LETTERS_PREFIX = "B:"
LETTERS_SEPARATOR = ">"
REVERSE_PREFIX = "R:"
BETWEEN_PREFIX = "N:"
REVERSE_LENGTH = 4
DEMO_SEPARATOR = ";"
ANSWER_SEPARATOR = "|"

SPLIT_SEED = 20_240_601
PROBE_SEED = 7
N_HELD_OUT = {ARITHMETIC: 1024, LETTERS: 336, REVERSE: 512, BETWEEN: 768}

PROBE_SETS = {
    ARITHMETIC: ("arithmetic_ood", "ood"),
    LETTERS: ("letters_in_domain", "in_domain"),
    REVERSE: ("reverse_ood", "ood"),
    BETWEEN: ("between_in_domain", "in_domain"),
}
"""task -> (probe set name, domain)."""

PROBESET_DIR = Path(__file__).resolve().parent / "probesets"


@dataclass(frozen=True)
class Split:
    train: tuple[str, ...]
    held_out: tuple[str, ...]


def _resolve_task(task: str) -> str:
    """A task name, or its probe set name or domain (``"ood"`` / ``"in_domain"``)."""
    for name, (probe_set, domain) in PROBE_SETS.items():
        if task in (name, probe_set, domain):
            return name
    known = [*TASKS, *(n for pair in PROBE_SETS.values() for n in pair)]
    raise ValueError(f"task must be one of {known}, got {task!r}")


def skill_pair(name: str) -> tuple[str, str]:
    """(old task, new task) of a skill pair."""
    if name not in SKILL_PAIRS:
        raise ValueError(f"unknown skill pair {name!r}; choose from {sorted(SKILL_PAIRS)}")
    return SKILL_PAIRS[name]


@cache
def _all_prompts(task: str) -> tuple[str, ...]:
    if task == ARITHMETIC:
        return tuple(f"{a}+{b}=" for a in range(10, 100) for b in range(10, 100))
    if task == REVERSE:
        return tuple(REVERSE_PREFIX + "".join(p) + LETTERS_SEPARATOR
                     for p in itertools.permutations(LETTER_ALPHABET, REVERSE_LENGTH))
    if task == BETWEEN:
        return tuple(f"{BETWEEN_PREFIX}{a},{b}{LETTERS_SEPARATOR}" for a in range(10, 98) for b in range(a + 2, 100))
    return tuple(
        LETTERS_PREFIX + "".join(p) + LETTERS_SEPARATOR
        for p in itertools.permutations(LETTER_ALPHABET, LETTERS_IN_PROMPT)
    )


@cache
def split(task: str) -> Split:
    """The fixed train / held-out split of a task's prompts (independent of training seeds)."""
    task = _resolve_task(task)
    prompts = _all_prompts(task)
    order = np.random.default_rng([SPLIT_SEED, TASKS.index(task)]).permutation(len(prompts))
    n = N_HELD_OUT[task]
    return Split(
        train=tuple(prompts[i] for i in order[n:]),
        held_out=tuple(prompts[i] for i in order[:n]),
    )


def task_of(prompt: str) -> str:
    for prefix, task in ((LETTERS_PREFIX, LETTERS), (REVERSE_PREFIX, REVERSE), (BETWEEN_PREFIX, BETWEEN)):
        if prompt.startswith(prefix):
            return task
    return ARITHMETIC


def _input(prompt: str, prefix: str) -> str:
    if not (prompt.startswith(prefix) and prompt.endswith(LETTERS_SEPARATOR)):
        raise ValueError(f"not a {prefix!r} prompt: {prompt!r}")
    return prompt[len(prefix) : -len(LETTERS_SEPARATOR)]


def correct_answers(prompt: str) -> tuple[str, ...]:
    """Every correct answer to a prompt (sorted, the canonical one first)."""
    task = task_of(prompt)
    if task == LETTERS:
        letters = sorted(set(_input(prompt, LETTERS_PREFIX)))
        return tuple(a + b for a, b in itertools.combinations(letters, 2))
    if task == REVERSE:
        return (_input(prompt, REVERSE_PREFIX)[::-1],)
    if task == BETWEEN:
        low, high = (int(x) for x in _input(prompt, BETWEEN_PREFIX).split(","))
        return tuple(str(n) for n in range(low + 1, high))
    left, right = prompt.rstrip("=").split("+")
    return (str(int(left) + int(right)),)


def random_answer(task: str, rng: np.random.Generator) -> str:
    """An answer in the new task's format that carries no information about its rule (pretraining)."""
    if task == LETTERS:
        return "".join(rng.choice(np.array(list(LETTER_ALPHABET)), 2))
    if task == BETWEEN:
        return str(int(rng.integers(10, 100)))
    raise ValueError(f"random_answer is defined for new tasks ({LETTERS}, {BETWEEN}), got {task!r}")


def canonical_answer(prompt: str) -> str:
    """The one fixed answer SFT trains on: the sum, the two smallest letters, the reversal, or the
    smallest number in between."""
    return correct_answers(prompt)[0]


def is_correct(prompt: str, answer: str) -> bool:
    """Verifier: whether ``answer`` (stripped of surrounding whitespace) solves ``prompt``."""
    return answer.strip() in correct_answers(prompt)


def grade(response: str, answer: str) -> bool:
    """Grade a response against a probe item's ``answer`` field (``|``-separated accepted answers)."""
    return response.strip() in answer.split(ANSWER_SEPARATOR)


def demonstration_prompt(prompt: str, demo_answer: str) -> str:
    """The prompt with a worked example in context, ``"B:dgbe>bd;B:dgbe>"`` (the SDFT teacher's view)."""
    return f"{prompt}{demo_answer}{DEMO_SEPARATOR}{prompt}"


def probe_items(task: str, n: int, seed: int = PROBE_SEED) -> list[dict[str, str]]:
    """``n`` held-out probe items ``{"prompt", "reference", "answer"}`` for ``task``.

    ``reference`` is one correct response (the canonical one); ``answer`` lists every accepted
    answer separated by ``|`` (see `grade`). Items are a seeded shuffle of the held-out pool, so a
    smaller ``n`` with the same seed gives a prefix of a larger one. ``task`` may also be given as
    its probe set name or domain.
    """
    task = _resolve_task(task)
    pool = split(task).held_out
    if not 1 <= n <= len(pool):
        raise ValueError(f"n must be between 1 and {len(pool)} for task {task!r}, got {n}")
    order = np.random.default_rng(seed).permutation(len(pool))[:n]
    return [
        {
            "prompt": pool[i],
            "reference": canonical_answer(pool[i]),
            "answer": ANSWER_SEPARATOR.join(correct_answers(pool[i])),
        }
        for i in order
    ]


#: The committed probe sets hold the first this-many items of the held-out order (`write_probe_sets`).
PROBE_SET_SIZE = 64


def probe_set_name(task: str, n: int = PROBE_SET_SIZE) -> str:
    """The name of ``task``'s probe set of ``n`` items: the committed set's name at `PROBE_SET_SIZE`,
    ``<name>_<n>`` otherwise (a larger set is generated at registration, `probe_items(task, n)`)."""
    name = PROBE_SETS[_resolve_task(task)][0]
    return name if n == PROBE_SET_SIZE else f"{name}_{n}"


def label_items(task: str, n: int, seed: int = PROBE_SEED, *, after: int = PROBE_SET_SIZE) -> list[dict[str, str]]:
    """``n`` held-out items disjoint from every probe set item: the ground truth that labels a
    checkpoint is never measured on the probes the service sees (positions ``after`` onward of the
    same seeded order `probe_items` uses; ``after`` is the largest probe set of the task in use, at
    least `PROBE_SET_SIZE`, so the labels are disjoint from the committed set too)."""
    task = _resolve_task(task)
    pool = split(task).held_out
    if after < PROBE_SET_SIZE:
        raise ValueError(f"after must be at least {PROBE_SET_SIZE} (the committed probe sets), got {after}")
    if not 1 <= n <= len(pool) - after:
        raise ValueError(f"n must be between 1 and {len(pool) - after} for task {task!r} with {after} probe "
                         f"items, got {n}")
    order = np.random.default_rng(seed).permutation(len(pool))[after:after + n]
    return [{"prompt": pool[i], "reference": canonical_answer(pool[i]),
             "answer": ANSWER_SEPARATOR.join(correct_answers(pool[i]))} for i in order]


def write_probe_sets(
    directory: Path = PROBESET_DIR, *, n: int = PROBE_SET_SIZE, seed: int = PROBE_SEED, tasks: Sequence[str] = TASKS
) -> list[Path]:
    """(Re)generate the committed probe set files ``<probe set name>.jsonl`` in ``directory``
    (one per task).

    The first line is a header ``{"probe_set": name, "domain": "ood" | "in_domain"}``, then one item
    per line.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for task in tasks:
        name, domain = PROBE_SETS[task]
        path = directory / f"{name}.jsonl"
        lines = [json.dumps({"probe_set": name, "domain": domain})]
        lines += [json.dumps(item) for item in probe_items(task, n, seed)]
        path.write_text("\n".join(lines) + "\n")
        paths.append(path)
    return paths


def sample_prompts(task: str, n: int, rng: np.random.Generator) -> list[str]:
    """``n`` training prompts drawn with replacement from the task's training pool."""
    pool = split(task).train
    return [pool[i] for i in rng.integers(0, len(pool), size=n)]
