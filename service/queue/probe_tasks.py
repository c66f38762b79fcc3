"""Response drift of a checkpoint on the run's probe sets (queue `probes`, GPU workers welcome).

The base model's side of every probe set is computed once per (base, probe set) and stored in
PostgreSQL, so any worker on any machine reuses it; each checkpoint then costs one forward pass
plus greedy decoding of the probes that have checkable answers.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import procrastinate
from sqlalchemy.orm import Session

from drift.base_cache import BaseTopKCache, build_base_cache
from drift.checkpoints import check_adapter_fits, is_adapter_folder
from drift.confined import check_model_folder
from drift.encoding import encode_probe_items
from drift.forgetting import base_scores, evaluate_checkpoint
from drift.models import LOADING
from drift.remote import RemotePath
from drift.staging import stage_folder
from service.db import param_drift as analyses
from service.db import queries
from service.db import response_drift as store
from service.db.models import Run
from service.paths import resolve_location
from service.queue.defer import defer_job, enqueue_risk, task_name
from service.queue.tasks import (
    TRANSIENT,
    TRANSIENT_ERRORS,
    blueprint,
    fail_analysis,
    failing_analysis,
    reason_of,
    resolve_base,
    resolve_confined,
    services_of,
)

log = logging.getLogger("forgetwatch")
KIND = "responses"
NAME = "probe_drift"
BASE_NAME = "measure_base"


def enqueue_base(session: Session, run_id: int) -> None:
    """Measure the run's base on its probe sets (the "step 0" row); one waiting request per run."""
    defer_job(session, task=task_name(BASE_NAME), queue="probes", args={"run_id": run_id},
              queueing_lock=f"base-{run_id}")


def enqueue(session: Session, checkpoint_id: int) -> None:
    analyses.set_analysis(session, checkpoint_id=checkpoint_id, kind=KIND, status="pending")
    defer_job(session, task=task_name(NAME), queue="probes", args={"checkpoint_id": checkpoint_id},
              lock=f"probe-{checkpoint_id}")


def is_model_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").exists()


def local_folder(settings, location: Path | RemotePath) -> Path:
    """A folder transformers can load: local folders as they are, object storage folders copied into
    the bounded local cache (FORGETWATCH_CACHE_MAX_BYTES)."""
    if not isinstance(location, RemotePath):
        return location
    return stage_folder(location, settings.remote_cache_dir, max_bytes=settings.cache_max_bytes,
                        roots=settings.confinement_roots)


def loading_roots(settings) -> tuple[Path, ...]:
    """Where model files may be opened from: the allowed roots and the service's own remote cache."""
    return (*settings.allowed_roots, Path(os.path.realpath(settings.remote_cache_dir)))


def _tokenizer_folder(checkpoint: Path, base: Path) -> Path:
    """Trainer checkpoints often carry no tokenizer; the base's is the one they were trained with."""
    has_tokenizer = any((checkpoint / f).exists() for f in ("tokenizer.json", "tokenizer_config.json"))
    return checkpoint if has_tokenizer else base




def load(model_folder: Path, tokenizer_folder: Path, device: str, roots: tuple[Path, ...]):
    """A model and tokenizer, after checking that every file transformers may open in their
    folders lies inside `roots` (transformers opens files by name: no symlink escapes, no index
    entries pointing elsewhere, bounded JSON) and that config.json describes the stored weights
    (a hostile config must not make transformers allocate what it describes)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from drift.models import check_config_fits_weights, resolve_device

    for folder in dict.fromkeys((model_folder, tokenizer_folder)):
        check_model_folder(folder, roots)
    check_config_fits_weights(model_folder, roots=roots)
    target = resolve_device(device)
    with LOADING:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(model_folder, local_files_only=True)
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token
    model = model.float() if target.type == "cpu" else model
    return model.to(target).eval(), tokenizer


GENERATION_TOKENS = 64


def max_new_tokens(model, tokenizer, texts: list[str]) -> int:
    """Up to GENERATION_TOKENS new tokens, but never past the model's context window."""
    return _cap(model, max((len(tokenizer(t)["input_ids"]) for t in texts), default=0))


def _cap(model, longest: int) -> int:
    config = model.config
    context = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    if not context:
        return GENERATION_TOKENS
    return max(1, min(GENERATION_TOKENS, context - longest))


def load_checkpoint(checkpoint: Path, base: Path, device: str, roots: tuple[Path, ...]):
    """The checkpoint's model and tokenizer. A peft adapter folder is applied to a fresh copy of the
    base in memory (no merged copy is written), after checking it was trained on that base."""
    tokenizer_folder = _tokenizer_folder(checkpoint, base)
    if not is_adapter_folder(checkpoint):
        return load(checkpoint, tokenizer_folder, device, roots)
    from drift.models import attach_adapter

    check_model_folder(checkpoint, roots)
    check_adapter_fits(checkpoint, base, roots=roots)
    model, tokenizer = load(base, tokenizer_folder, device, roots)
    with LOADING:
        model = attach_adapter(model, checkpoint)
    return model, tokenizer


@functools.lru_cache(maxsize=1)
def _base_model(path: str, device: str, roots: tuple[Path, ...]):
    """The base stays loaded between checkpoints of the same run (one base per worker process)."""
    return load(Path(path), Path(path), device, roots)


@blueprint.task(name=NAME, queue="probes", pass_context=True, retry=TRANSIENT)
def probe_drift(context: procrastinate.JobContext, checkpoint_id: int) -> None:
    services = services_of(context)
    with services.sessions.begin() as session:
        row = queries.checkpoint_for_analysis(session, checkpoint_id=checkpoint_id)
        if row is None:
            return
        probe_sets = store.run_probe_sets(session, run_id=row.run_id)
        analyses.set_analysis(session, checkpoint_id=checkpoint_id, kind=KIND, status="processing")
    checkpoint = resolve_confined(services, checkpoint_id=checkpoint_id, kind=KIND, uri=row.uri, what="checkpoint")
    base = resolve_base(services, checkpoint_id=checkpoint_id, kind=KIND, base_uri=row.base_model)
    if not probe_sets:
        fail_analysis(services, checkpoint_id=checkpoint_id, kind=KIND, message="the run has no probe sets",
                      status="skipped")
        return
    with failing_analysis(services, checkpoint_id=checkpoint_id, kind=KIND):
        outcome = _evaluate(services, probe_sets, checkpoint, base)
    if isinstance(outcome, str):
        fail_analysis(services, checkpoint_id=checkpoint_id, kind=KIND, message=outcome, status="skipped")
        return
    caches, results = outcome
    with services.sessions.begin() as session:
        for probe_set_id, cache in caches:
            store.store_base_scores(session, run_id=row.run_id, probe_set_id=probe_set_id, scores=base_scores(cache))
        for probe_set_id, evaluation in results:
            store.store_probe_result(session, checkpoint_id=checkpoint_id, probe_set_id=probe_set_id,
                                     evaluation=evaluation)
        analyses.set_analysis(session, checkpoint_id=checkpoint_id, kind=KIND, status="ready")
        enqueue_risk(session, checkpoint_id)
    log.info("action=probe_drift_ready checkpoint=%s probe_sets=%s", checkpoint_id, len(results))


NOT_A_MODEL = ("response drift needs a transformers model folder (config.json) for the base and a model "
               "folder or a peft adapter folder (adapter_config.json) for the checkpoint")


def _evaluate(services, probe_sets, checkpoint: Path | RemotePath, base: Path | RemotePath):
    """(base caches, results) per probe set, or the reason the checkpoint is skipped. The base is
    loaded (and its caches built) before the checkpoint is fetched, so a small local cache may evict
    the base's files while the checkpoint's are copied."""
    settings, roots = services.settings, loading_roots(services.settings)
    base_key = str(base)  # the base's probe caches are stored under the URI the run gives
    base = local_folder(settings, base)
    if not is_model_folder(base):
        return NOT_A_MODEL
    base_model, base_tokenizer = _base_model(str(base), settings.probe_device, roots)
    caches = [(probe_set_id, _base_cache(services, base_key, probe_set_id, probe_set, base_model, base_tokenizer))
              for probe_set_id, probe_set in probe_sets]
    checkpoint = local_folder(settings, checkpoint)
    if not (is_model_folder(checkpoint) or is_adapter_folder(checkpoint)):
        return NOT_A_MODEL
    model, tokenizer = load_checkpoint(checkpoint, base, settings.probe_device, roots)
    results = [(probe_set_id, evaluate_checkpoint(model, tokenizer, cache, random_state=0))
               for probe_set_id, cache in caches]
    return caches, results


def _base_cache(services, base: str, probe_set_id: int, probe_set, model, tokenizer) -> BaseTopKCache:
    k = services.settings.probe_topk
    fingerprint = probe_set.fingerprint()
    with services.sessions.begin() as session:
        data = store.load_base_cache(session, base_model=base, probe_set_id=probe_set_id, k=k, fingerprint=fingerprint)
    if data is not None:
        return BaseTopKCache.from_bytes(data)
    longest = max(len(prompt) + len(reference or ()) for prompt, reference in encode_probe_items(tokenizer, probe_set))
    cache = build_base_cache(model, tokenizer, probe_set, k=k, base_model=base, max_new_tokens=_cap(model, longest))
    with services.sessions.begin() as session:
        store.store_base_cache(session, base_model=base, probe_set_id=probe_set_id, k=k, fingerprint=fingerprint,
                               data=cache.to_bytes())
    log.info("action=probe_base_cache_built base=%s probe_set=%s", base, probe_set.name)
    return cache


@blueprint.task(name=BASE_NAME, queue="probes", pass_context=True, retry=TRANSIENT)
def measure_base(context: procrastinate.JobContext, run_id: int) -> None:
    """The base's accuracy, reference log-likelihood and entropy on each of the run's probe sets,
    from its cache (built here if needed): no feature waits for the trainer to post step 0. A base
    that cannot be loaded is recorded with the reason."""
    services = services_of(context)
    settings = services.settings
    with services.sessions.begin() as session:
        run = session.get(Run, run_id)
        base_uri = run.base_model if run is not None else None
        probe_sets = store.run_probe_sets(session, run_id=run_id) if run is not None else []
    if not probe_sets:
        return
    try:
        location = resolve_location(base_uri, settings.allowed_roots, settings.remote_prefixes,
                          hf_cache=settings.hf_cache_dir)
        base = local_folder(settings, location)
        if not is_model_folder(base):
            raise ValueError("the base is not a transformers model folder (no config.json)")
        model, tokenizer = _base_model(str(base), settings.probe_device, loading_roots(settings))
        scores = [(probe_set_id, base_scores(_base_cache(services, str(location), probe_set_id, probe_set, model,
                                                         tokenizer)))
                  for probe_set_id, probe_set in probe_sets]
    except TRANSIENT_ERRORS:
        raise
    except Exception as error:  # noqa: BLE001 - any load failure is the base's, recorded for the user
        message = f"the base cannot be loaded: {reason_of(error)}"
        with services.sessions.begin() as session:
            for probe_set_id, _ in probe_sets:
                store.store_base_scores(session, run_id=run_id, probe_set_id=probe_set_id, scores=None, error=message)
        log.warning("action=base_unmeasured run=%s reason=%s", run_id, message)
        return
    with services.sessions.begin() as session:
        for probe_set_id, measured in scores:
            store.store_base_scores(session, run_id=run_id, probe_set_id=probe_set_id, scores=measured)
    log.info("action=base_measured run=%s probe_sets=%s", run_id, len(scores))
