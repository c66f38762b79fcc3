"""A small, real continual post-training experiment on a tiny GPT-2, built entirely in code.

A small model of one of several families (`FAMILIES`: GPT-2, Llama or Qwen2, character or word
tokenizer) is pretrained on an old skill (e.g. two-digit addition, the ``ood`` probe set), then
continued on a new skill with several correct answers per prompt (e.g. letter pairs, ``in_domain``)
by SFT, GRPO or on-policy self-distillation (frozen or EMA teacher); every checkpoint is saved with
``save_pretrained`` and labelled with ground-truth accuracy on both tasks. Only torch, transformers, tokenizers, numpy, safetensors
and tqdm are imported here: no web, database or queue code.
"""

from experiment.arm_config import ArmConfig
from experiment.arms import (
    ARMS,
    IN_DOMAIN_ACCURACY,
    OOD_ACCURACY,
    ArmResult,
    CheckpointResult,
    NullReporter,
    Reporter,
    train_grpo,
    train_self_distillation,
    train_sft,
)
from experiment.model import (
    ModelConfig,
    build_model,
    build_tokenizer,
    load_checkpoint,
    save_checkpoint,
)
from experiment.pretrain import BaseConfig, BaseResult, pretrain, pretrained_base
from experiment.tasks import (
    ARITHMETIC,
    LETTERS,
    PROBE_SETS,
    correct_answers,
    grade,
    is_correct,
    label_items,
    probe_items,
    write_probe_sets,
)
from experiment.train import (
    DEFAULT_ARMS,
    DEMO_CONFIGS,
    ExperimentResult,
    ReporterFactory,
    format_table,
    run_experiment,
)

__all__ = [
    "ARITHMETIC",
    "ARMS",
    "DEFAULT_ARMS",
    "DEMO_CONFIGS",
    "IN_DOMAIN_ACCURACY",
    "LETTERS",
    "OOD_ACCURACY",
    "PROBE_SETS",
    "ArmConfig",
    "ArmResult",
    "BaseConfig",
    "BaseResult",
    "CheckpointResult",
    "ExperimentResult",
    "ModelConfig",
    "NullReporter",
    "Reporter",
    "ReporterFactory",
    "build_model",
    "build_tokenizer",
    "correct_answers",
    "format_table",
    "grade",
    "is_correct",
    "label_items",
    "load_checkpoint",
    "pretrain",
    "pretrained_base",
    "probe_items",
    "run_experiment",
    "save_checkpoint",
    "train_grpo",
    "train_self_distillation",
    "train_sft",
    "write_probe_sets",
]
