"""The experiment's training core, on configs small enough to run in seconds."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from experiment import (
    ARITHMETIC,
    IN_DOMAIN_ACCURACY,
    LETTERS,
    OOD_ACCURACY,
    ArmConfig,
    BaseConfig,
    ModelConfig,
    build_model,
    build_tokenizer,
    correct_answers,
    grade,
    is_correct,
    label_items,
    objectives,
    pretrain,
    pretrained_base,
    probe_items,
    run_experiment,
    save_checkpoint,
    train_grpo,
    train_self_distillation,
    train_sft,
    write_probe_sets,
)
from experiment.arms import label_prompts
from experiment.model import FAMILIES, Codec, accuracy, family_config, load_checkpoint, sample_ids
from experiment.pretrain import lm_loss, pretrain_batch
from experiment.tasks import (
    BETWEEN,
    PROBESET_DIR,
    REVERSE,
    SKILL_PAIRS,
    TASKS,
    canonical_answer,
    probe_set_name,
    split,
)

TINY = ModelConfig(n_layer=1, n_embd=32, n_head=2, n_positions=32)
TINY_BASE = BaseConfig(model=TINY, max_steps=20, batch_size=32, warmup_steps=5, eval_every=10_000)
TINY_ARM = ArmConfig(steps=4, checkpoint_every=2, batch_size=4, group_size=4, lr=1e-3, n_eval=16, n_samples=2)


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    return pretrained_base(tmp_path_factory.mktemp("cache"), config=TINY_BASE, seed=0).path


class RecordingReporter:
    def __init__(self):
        self.checkpoints: list[tuple[int, Path, dict[str, float]]] = []
        self.samples: list[tuple[int, list[dict[str, str]]]] = []
        self.metrics: list[tuple[int, dict[str, float]]] = []

    def on_checkpoint(self, step, path, labels):
        self.checkpoints.append((step, path, labels))

    def on_samples(self, step, items):
        self.samples.append((step, items))

    def on_metrics(self, step, values):
        self.metrics.append((step, values))


def test_tokenizer_and_model_round_trip_through_save_pretrained_and_auto_classes(tmp_path):
    tokenizer, model = build_tokenizer(), build_model(TINY, seed=0).eval()
    save_checkpoint(model, tokenizer, tmp_path)
    assert (tmp_path / "model.safetensors").exists()

    loaded_tok = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, local_files_only=True).eval()

    text = "12+34=46"
    ids = loaded_tok(text).input_ids
    assert ids == tokenizer(text).input_ids
    assert len(ids) == len(text)  # one token per character
    assert loaded_tok.decode(ids) == text
    with_eos = [*loaded_tok("B:dgbe>bd").input_ids, loaded_tok.eos_token_id]
    assert loaded_tok.decode(with_eos, skip_special_tokens=True) == "B:dgbe>bd"
    assert loaded_tok.pad_token == "<pad>" and loaded_tok.eos_token == "<eos>"
    x = torch.tensor([ids])
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=x).logits, model(input_ids=x).logits)


def test_letters_verifier_accepts_exactly_the_sorted_pairs_of_input_letters():
    prompt = "B:dgbe>"
    expected = {"bd", "be", "bg", "de", "dg", "eg"}
    assert set(correct_answers(prompt)) == expected
    for a, b in itertools.product("abcdefgh", repeat=2):
        assert is_correct(prompt, a + b) == (a + b in expected), a + b
    for wrong in ["", "b", "bde", "db", "bb", "BD", "46"]:
        assert not is_correct(prompt, wrong)
    assert is_correct(prompt, " bd\n")


def test_arithmetic_verifier_accepts_only_the_sum():
    assert is_correct("12+34=", "46")
    assert not is_correct("12+34=", "45")
    assert not is_correct("12+34=", "046")
    assert correct_answers("99+99=") == ("198",)


def test_reverse_and_between_verifiers():
    assert correct_answers("R:dgbe>") == ("ebgd",) and is_correct("R:dgbe>", "ebgd")
    assert not is_correct("R:dgbe>", "dgbe")
    assert correct_answers("N:37,40>") == ("38", "39")
    assert is_correct("N:37,52>", "51") and not is_correct("N:37,52>", "52") and not is_correct("N:37,52>", "37")
    assert {len(p) for p in split(REVERSE).held_out} == {7} and {len(p) for p in split(BETWEEN).train} == {8}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_tokenizes_every_task_like_its_codec_and_round_trips(family, tmp_path):
    """The fast codec the arms use and the saved tokenizer the service loads agree on every task,
    and prompts of a task have one token length (batches need no padding)."""
    config = family_config(family)
    tokenizer = build_tokenizer(config.tokenizer)
    model = build_model(config, seed=0).eval()
    save_checkpoint(model, tokenizer, tmp_path)
    loaded_tok = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    codec = Codec(loaded_tok)
    for task in TASKS:
        prompts = list(split(task).held_out[:50])
        assert len({codec.length(p) for p in prompts}) == 1, (family, task)
        for p in prompts[:10]:
            text = p + canonical_answer(p)
            assert loaded_tok(text).input_ids == codec.encode(text) and loaded_tok.decode(codec.encode(text)) == text
    if config.tokenizer == "word":
        assert codec.encode("12+34=46") == [codec.to_id[t] for t in ("12", "+", "34", "=", "46")]
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, local_files_only=True).eval()
    x = torch.tensor([codec.encode("R:dgbe>ebgd")])
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=x).logits, model(input_ids=x).logits)


def test_a_word_level_llama_runs_every_arm_on_the_other_skill_pair(tmp_path):
    config = replace(family_config("small-llama-word"), n_layer=1, n_embd=32, n_head=2, intermediate_size=64)
    base = BaseConfig(model=config, skills="reverse-between", max_steps=20, batch_size=32, warmup_steps=5,
                      eval_every=10_000)
    reporters: dict[str, RecordingReporter] = {}
    result = run_experiment(tmp_path / "runs", arms=["sft", "grpo", "self_distillation_ema"], steps=2,
                            checkpoint_every=2, seed=0, cache_dir=tmp_path / "cache", base_config=base,
                            arm_configs=None, progress=False, num_threads=1,
                            reporter_factory=lambda arm, name, d: reporters.setdefault(arm, RecordingReporter()))
    assert set(result.arms) == {"sft", "grpo", "self_distillation_ema"}
    for arm, reporter in reporters.items():
        assert [step for step, _, _ in reporter.checkpoints] == [0, 2], arm
        assert {it["probe_set"] for it in reporter.samples[0][1]} == {"reverse_ood", "between_in_domain"}
    with pytest.raises(ValueError, match="unknown skill pair"):
        BaseConfig(skills="chemistry")
    assert set(SKILL_PAIRS) == {"add-letters", "reverse-between"}


def test_label_items_are_held_out_and_disjoint_from_every_probe_item():
    for task in TASKS:
        probes = {it["prompt"] for it in probe_items(task, 64)}
        labels = label_items(task, 256)
        assert len({it["prompt"] for it in labels}) == 256
        assert probes.isdisjoint(it["prompt"] for it in labels)


def test_a_larger_ood_probe_set_moves_the_labels_past_it():
    assert probe_set_name(ARITHMETIC) == "arithmetic_ood" and probe_set_name("ood", 256) == "arithmetic_ood_256"
    for task in (ARITHMETIC, REVERSE):
        probes = probe_items(task, 256)
        assert probes[:64] == probe_items(task, 64)  # the committed set is a prefix of the larger one
        labels = label_items(task, 256, after=256)
        assert {it["prompt"] for it in probes}.isdisjoint(it["prompt"] for it in labels)
        assert label_items(task, 64, after=256) == labels[:64]
    with pytest.raises(ValueError, match="between 1 and 256"):  # reverse holds 512 held-out items
        label_items(REVERSE, 300, after=256)
    with pytest.raises(ValueError, match="at least 64"):
        label_items(REVERSE, 8, after=10)
    with pytest.raises(ValueError, match="between 1 and 212"):
        ArmConfig(skills="reverse-between", ood_probe_items=300)
    with pytest.raises(ValueError, match="at least 64"):
        ArmConfig(ood_probe_items=32)


def test_the_arms_label_on_the_items_after_the_ood_probe_set(tiny_base, tmp_path):
    config = replace(TINY_ARM, steps=1, n_eval=64, ood_probe_items=256)
    prompts = label_prompts(config)
    assert prompts[OOD_ACCURACY] == [it["prompt"] for it in label_items(ARITHMETIC, 64, after=256)]
    assert set(prompts[OOD_ACCURACY]).isdisjoint(it["prompt"] for it in probe_items(ARITHMETIC, 256))
    assert prompts[IN_DOMAIN_ACCURACY] == [it["prompt"] for it in label_items(LETTERS, 64)]
    reporter = RecordingReporter()
    train_sft(tiny_base, tmp_path / "sft", config=config, reporter=reporter)
    model, tokenizer = load_checkpoint(tiny_base)
    step, _, labels = reporter.checkpoints[0]
    assert step == 0 and labels[OOD_ACCURACY] == accuracy(model, Codec(tokenizer), prompts[OOD_ACCURACY])


def test_probe_items_are_held_out_and_their_answer_field_grades_like_the_verifier():
    for task in TASKS:
        items = probe_items(task, 64)
        assert probe_items(task, 8) == items[:8]  # smaller n is a prefix
        held_out, train = set(split(task).held_out), set(split(task).train)
        assert all(it["prompt"] in held_out and it["prompt"] not in train for it in items)
        for it in items:
            assert is_correct(it["prompt"], it["reference"]) and grade(it["reference"], it["answer"])
            for candidate in correct_answers(it["prompt"]):
                assert grade(candidate, it["answer"])
    assert not grade("ba", probe_items(LETTERS, 1)[0]["answer"])
    assert probe_items("ood", 4) == probe_items("arithmetic_ood", 4) == probe_items(ARITHMETIC, 4)
    assert probe_items("in_domain", 4) == probe_items(LETTERS, 4)
    with pytest.raises(ValueError, match="task must be one of"):
        probe_items("chemistry", 4)


def test_committed_probe_set_files_match_the_generator(tmp_path):
    for path in write_probe_sets(tmp_path):
        committed = PROBESET_DIR / path.name
        assert committed.read_text() == path.read_text(), f"regenerate with write_probe_sets(): {committed}"
        header, *items = [json.loads(line) for line in path.read_text().splitlines()]
        assert header["domain"] in ("ood", "in_domain") and len(items) == 64
        assert all(set(it) == {"prompt", "reference", "answer"} for it in items)


def test_pretraining_lowers_the_loss(tmp_path):
    codec = Codec(build_tokenizer())
    batch = pretrain_batch(codec, TINY_BASE, np.random.default_rng(123))
    with torch.no_grad():
        before = lm_loss(build_model(TINY, seed=0).eval(), batch).item()
    path, stats = pretrain(tmp_path, config=TINY_BASE, seed=0)
    after_model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True).eval()
    with torch.no_grad():
        after = lm_loss(after_model, batch).item()
    assert after < before - 0.5, (before, after)
    assert stats["steps"] == TINY_BASE.max_steps


def test_pretrained_base_is_cached_by_config_and_seed(tmp_path):
    first = pretrained_base(tmp_path, config=TINY_BASE, seed=0)
    again = pretrained_base(tmp_path, config=TINY_BASE, seed=0)
    assert not first.cached and again.cached and again.path == first.path
    other = pretrained_base(tmp_path, config=TINY_BASE, seed=1)
    assert other.path != first.path
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.path.name, other.path.name])


def test_sampling_stops_at_eos_and_masks_what_follows(tiny_base):
    model = AutoModelForCausalLM.from_pretrained(tiny_base, local_files_only=True).eval()
    codec = Codec(AutoTokenizer.from_pretrained(tiny_base, local_files_only=True))
    ids = codec.encode_batch(["12+34=", "56+78="] * 8)
    tokens, mask = sample_ids(
        model, ids, eos_id=codec.eos_id, pad_id=codec.pad_id, generator=torch.Generator().manual_seed(0)
    )
    for row, m in zip(tokens.tolist(), mask.tolist(), strict=True):
        if codec.eos_id in row:
            first = row.index(codec.eos_id)
            assert all(m[: first + 1]) and not any(m[first + 1 :])
            assert all(t == codec.pad_id for t in row[first + 1 :])


@pytest.mark.parametrize(
    "train, config",
    [
        (train_sft, TINY_ARM),
        (train_grpo, TINY_ARM),
        (train_grpo, ArmConfig(**{**TINY_ARM.__dict__, "kl_coef": 0.1})),
        (train_self_distillation, ArmConfig(**{**TINY_ARM.__dict__, "teacher": "frozen"})),
        (train_self_distillation, ArmConfig(**{**TINY_ARM.__dict__, "teacher": "ema"})),
    ],
    ids=["sft", "grpo", "grpo-kl", "self_distillation-frozen", "self_distillation-ema"],
)
def test_each_arm_saves_loadable_checkpoints_and_reports_labels(tiny_base, tmp_path, train, config):
    reporter = RecordingReporter()
    result = train(tiny_base, tmp_path, config=config, reporter=reporter)

    assert [c.step for c in result.checkpoints] == [0, 2, 4]
    assert [step for step, _, _ in reporter.checkpoints] == [0, 2, 4]
    for step, path, labels in reporter.checkpoints:
        assert path == tmp_path / f"step-{step}"
        assert set(labels) == {OOD_ACCURACY, IN_DOMAIN_ACCURACY}
        assert all(0.0 <= v <= 1.0 for v in labels.values())
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
        AutoTokenizer.from_pretrained(path, local_files_only=True)
        assert sum(p.numel() for p in model.parameters()) > 0
    assert [step for step, _ in reporter.samples] == [0, 2, 4]
    items = reporter.samples[-1][1]
    assert len(items) == 2 * config.n_samples
    assert all(set(it) == {"prompt", "response", "probe_set"} for it in items)
    assert {it["probe_set"] for it in items} == {"arithmetic_ood", "letters_in_domain"}
    assert [step for step, _ in reporter.metrics] == [2, 4]  # nothing trained before the base checkpoint
    assert all(np.isfinite(v) for _, values in reporter.metrics for v in values.values())
    if train is train_self_distillation:  # read by the service's collapse finding
        assert all(values["teacher_student_divergence"] >= 0 for _, values in reporter.metrics)
    if train is not train_grpo:  # GRPO leaves the weights alone when every group is all-wrong
        final = AutoModelForCausalLM.from_pretrained(tmp_path / "step-4", local_files_only=True)
        base = AutoModelForCausalLM.from_pretrained(tiny_base, local_files_only=True)
        assert any(not torch.equal(a, b) for a, b in zip(final.parameters(), base.parameters(), strict=True))


def test_first_checkpoints_add_steps_before_the_regular_cadence(tiny_base, tmp_path):
    config = ArmConfig(**{**TINY_ARM.__dict__, "steps": 6, "checkpoint_every": 4, "first_checkpoints": (1, 3)})
    reporter = RecordingReporter()
    result = train_sft(tiny_base, tmp_path, config=config, reporter=reporter)
    assert [c.step for c in result.checkpoints] == [0, 1, 3, 4, 6]
    assert [step for step, _, _ in reporter.checkpoints] == [0, 1, 3, 4, 6]
    with pytest.raises(ValueError, match="first_checkpoints must be steps between 1 and 6"):
        ArmConfig(**{**config.__dict__, "first_checkpoints": (0,)})


def test_grpo_step_raises_the_probability_of_rewarded_responses(monkeypatch):
    codec = Codec(build_tokenizer())
    model = build_model(TINY, seed=0)
    target = codec.to_id["a"]
    # Reward responses that start with "a": about 1 in 27 samples of an untrained model.
    monkeypatch.setattr(objectives, "is_correct", lambda prompt, response: response.startswith("a"))
    config = ArmConfig(group_size=16, lr=3e-3)
    state = objectives.StepState(
        codec=codec, config=config, rng=np.random.default_rng(0), generator=torch.Generator().manual_seed(0)
    )
    prompts = [it["prompt"] for it in probe_items(LETTERS, 8)]
    ids = codec.encode_batch(prompts)

    def p_first_a() -> float:
        with torch.no_grad():
            return torch.softmax(model(input_ids=ids).logits[:, -1], -1)[:, target].mean().item()

    before = p_first_a()
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
    for _ in range(10):
        loss, _ = objectives.grpo_step(model, prompts, state)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert p_first_a() > 2 * before, (before, p_first_a())


def test_run_experiment_runs_each_arm_from_the_cached_base_and_builds_one_reporter_per_arm(tmp_path, caplog):
    calls = []

    def factory(arm, run_name, base_dir):
        calls.append((arm, run_name, base_dir))
        return RecordingReporter()

    kwargs = {
        "arms": ("sft", "grpo", "self_distillation_ema"),
        "steps": 2,
        "checkpoint_every": 2,
        "batch_size": 4,
        "cache_dir": tmp_path / "cache",
        "base_config": TINY_BASE,
        "progress": False,
        "num_threads": 1,
    }
    with caplog.at_level("WARNING", logger="experiment.train"):
        result = run_experiment(tmp_path / "runs", reporter_factory=factory, **kwargs)
    # 20 pretraining steps never reach the target: the experiment says so instead of training on it silently
    assert result.base.stats["train_accuracy"] < TINY_BASE.target_accuracy
    assert "the base of seed 0 stopped at step 20" in caplog.text
    assert [c[0] for c in calls] == ["sft", "grpo", "self_distillation_ema"]
    assert all(base_dir == result.base.path for _, _, base_dir in calls)
    for arm, run_name, _ in calls:
        assert result.run_names[arm] == run_name
        assert (tmp_path / "runs" / run_name / "step-2" / "model.safetensors").exists()
        assert [c.step for c in result.arms[arm].checkpoints] == [0, 2]
    assert result.arms["self_distillation_ema"].config.teacher == "ema"
    assert not result.base.cached
    assert run_experiment(tmp_path / "runs", **{**kwargs, "arms": ("sft",)}).base.cached


def test_unknown_arm_is_rejected_before_any_training(tmp_path):
    with pytest.raises(ValueError, match="unknown arm"):
        run_experiment(
            tmp_path, arms=("sft", "ppo"), cache_dir=tmp_path, base_config=TINY_BASE, progress=False
        )
    assert not any(tmp_path.iterdir())


def test_the_package_imports_no_web_database_or_queue_code():
    code = (
        "import sys, experiment; "
        "print(sorted({'fastapi', 'sqlalchemy', 'procrastinate', 'prometheus_client', 'httpx'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_pretraining_override_names_a_family_and_a_base_config_field():
    from experiment.demo import PRETRAINING

    assert set(PRETRAINING) <= set(FAMILIES)
    for family, override in PRETRAINING.items():
        BaseConfig(model=family_config(family), **override)  # an unknown field raises TypeError
