"""The two tasks of the continual post-training experiment, their verifiers and probe sets.

Task A, ``arithmetic`` (the old skill, later the ``ood`` probe set): two-digit addition,
``"12+34="`` -> ``"46"``; one correct answer.

Task B, ``letters`` (the new skill, ``in_domain``): ``"B:dgbe>"`` -> any two distinct letters
of the input in alphabetical order (``"bd"``, ``"be"``, ``"de"``, ...); six correct answers per
prompt, so methods can learn different distributions over them, as RL's Razor's ParityMNIST does
(arXiv:2509.04259).

Both tasks split their prompts once, with a fixed seed independent of any training seed, into a
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
TASKS = (ARITHMETIC, LETTERS)

LETTER_ALPHABET = "abcdefgh"
LETTERS_IN_PROMPT = 4
LETTERS_PREFIX = "B:"
LETTERS_SEPARATOR = ">"
DEMO_SEPARATOR = ";"
ANSWER_SEPARATOR = "|"

SPLIT_SEED = 20_240_601
PROBE_SEED = 7
N_HELD_OUT = {ARITHMETIC: 1024, LETTERS: 336}

PROBE_SETS = {
    ARITHMETIC: ("arithmetic_ood", "ood"),
    LETTERS: ("letters_in_domain", "in_domain"),
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


@cache
def _all_prompts(task: str) -> tuple[str, ...]:
    if task == ARITHMETIC:
        return tuple(f"{a}+{b}=" for a in range(10, 100) for b in range(10, 100))
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
    return LETTERS if prompt.startswith(LETTERS_PREFIX) else ARITHMETIC


def _letters_input(prompt: str) -> str:
    if not (prompt.startswith(LETTERS_PREFIX) and prompt.endswith(LETTERS_SEPARATOR)):
        raise ValueError(f"not a letters prompt: {prompt!r}")
    return prompt[len(LETTERS_PREFIX) : -len(LETTERS_SEPARATOR)]


def correct_answers(prompt: str) -> tuple[str, ...]:
    """Every correct answer to a prompt, sorted."""
    if task_of(prompt) == LETTERS:
        letters = sorted(set(_letters_input(prompt)))
        return tuple(a + b for a, b in itertools.combinations(letters, 2))
    left, right = prompt.rstrip("=").split("+")
    return (str(int(left) + int(right)),)


def canonical_answer(prompt: str) -> str:
    """The one fixed answer SFT trains on: the sum, or the two smallest letters."""
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


def label_items(task: str, n: int, seed: int = PROBE_SEED) -> list[dict[str, str]]:
    """``n`` held-out items disjoint from every probe set item: the ground truth that labels a
    checkpoint is never measured on the probes the service sees (positions `PROBE_SET_SIZE` onward of
    the same seeded order `probe_items` uses)."""
    task = _resolve_task(task)
    pool = split(task).held_out
    if not 1 <= n <= len(pool) - PROBE_SET_SIZE:
        raise ValueError(f"n must be between 1 and {len(pool) - PROBE_SET_SIZE} for task {task!r}, got {n}")
    order = np.random.default_rng(seed).permutation(len(pool))[PROBE_SET_SIZE:PROBE_SET_SIZE + n]
    return [{"prompt": pool[i], "reference": canonical_answer(pool[i]),
             "answer": ANSWER_SEPARATOR.join(correct_answers(pool[i]))} for i in order]


def write_probe_sets(
    directory: Path = PROBESET_DIR, *, n: int = PROBE_SET_SIZE, seed: int = PROBE_SEED, tasks: Sequence[str] = TASKS
) -> list[Path]:
    """(Re)generate the committed probe set files ``<probe set name>.jsonl`` in ``directory``.

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
