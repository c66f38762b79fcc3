"""`forgetwatch runs list|show|archive|delete`: a run's lifecycle from the service's own machine,
straight on its database (like `forgetwatch token`), with the same query functions as the API."""

from __future__ import annotations

import argparse
import json
from typing import Any

from service import lifecycle
from service.database import command_session
from service.db import queries, status
from service.errors import NotFound
from service.settings import Settings


def add_parser(sub: Any) -> None:
    runs = sub.add_parser("runs", help="list, show, archive or delete runs")
    runs_sub = runs.add_subparsers(dest="runs_command", required=True)
    listing = runs_sub.add_parser("list", help="runs in creation order")
    listing.add_argument("--archived", action="store_true", help="list the archived runs instead")
    listing.add_argument("--method", help="only runs of this method")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    for name, text in (("show", "a run and its current status, as JSON"),
                       ("archive", "hide a run from lists, pages and /metrics (everything is kept)"),
                       ("unarchive", "bring an archived run back"),
                       ("delete", "delete a run, everything measured for it and its uploaded files")):
        command = runs_sub.add_parser(name, help=text)
        command.add_argument("run", help="run name or id")
        if name == "delete":
            command.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    runs.set_defaults(func=cmd_runs)


def cmd_runs(settings: Settings, args: argparse.Namespace) -> None:
    with command_session(settings) as session:
        if args.runs_command == "list":
            _print_list(session, archived=args.archived, method=args.method, as_json=args.json)
            return
        try:
            run = queries.get_run(session, ref=args.run)
        except NotFound as error:
            raise SystemExit(f"forgetwatch runs {args.runs_command}: {error.detail}") from error
        if args.runs_command == "show":
            body = {"id": run.id, "name": run.name, "base_model": run.base_model, "method": run.method,
                    "tags": run.tags, "created_at": run.created_at.isoformat(),
                    "archived_at": run.archived_at.isoformat() if run.archived_at else None,
                    "status": status.current_status(session, run=run, settings=settings)}
            print(json.dumps(body, indent=2, default=str))
        elif args.runs_command in ("archive", "unarchive"):
            queries.set_archived(session, run=run, archived=args.runs_command == "archive")
            session.commit()
            print(f"forgetwatch: run {run.name!r} {args.runs_command}d")
        elif args.runs_command == "delete":
            if not args.yes and input(f"Delete run {run.name!r} and everything measured for it? [y/N] ") != "y":
                raise SystemExit("forgetwatch runs delete: nothing deleted")
            name = run.name
            lifecycle.delete_run(session, settings, run)
            print(f"forgetwatch: run {name!r} deleted")


def _print_list(session: Any, *, archived: bool, method: str | None, as_json: bool) -> None:
    runs = queries.list_runs(session, archived=archived, method=method)
    last = queries.last_steps(session)
    if as_json:
        for run in runs:
            print(json.dumps({"id": run.id, "name": run.name, "method": run.method, "base_model": run.base_model,
                              "last_step": last.get(run.id), "tags": run.tags,
                              "created_at": run.created_at.isoformat()}))
        return
    if not runs:
        print("no archived runs" if archived else "no runs")
        return
    width = max(len(run.name) for run in runs)
    print(f"{'id':>6}  {'name':<{width}}  {'method':<18} {'last step':>10}  created")
    for run in runs:
        step = last.get(run.id)
        print(f"{run.id:>6}  {run.name:<{width}}  {run.method:<18} {'' if step is None else step:>10}  "
              f"{run.created_at:%Y-%m-%d %H:%M}")
