"""Storage of parameter-drift results and of each checkpoint's analysis status."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from drift.aggregate import DriftStats, DriftSummary, SpectralDrift, TensorDrift, block_index, module_kind
from service.db.encoding import json_safe

ANALYSES = ("params",)


def row_to_json(row: TensorDrift) -> dict[str, Any]:
    data: dict[str, Any] = json_safe(dataclasses.asdict(row))
    return data


def row_from_json(data: dict[str, Any]) -> TensorDrift:
    fields = dict(data)
    fields["shape"] = tuple(fields["shape"])
    fields["base_shape"] = tuple(fields["base_shape"])
    if fields.get("spectral") is not None:
        fields["spectral"] = SpectralDrift(**fields["spectral"])
    return TensorDrift(**fields)


# --- analysis status -------------------------------------------------------------------------

def set_analysis(session: Session, *, checkpoint_id: int, kind: str, status: str, error: str | None = None,
                 details: dict[str, Any] | None = None) -> None:
    """Record one analysis' status and refresh its checkpoint's, serialized per checkpoint.

    The checkpoint row is locked first: two analyses finishing at once then refresh one after the
    other, and the second's refresh (a new statement, a new snapshot) sees the first's result.
    Without the lock each saw the other still running and the checkpoint stayed `processing`."""
    session.execute(text("SELECT 1 FROM checkpoints WHERE id = :c FOR UPDATE"), {"c": checkpoint_id})
    session.execute(
        text(
            """
            INSERT INTO checkpoint_analyses (checkpoint_id, kind, status, error, details, updated_at)
            VALUES (:c, :k, :s, :e, COALESCE(CAST(:d AS jsonb), '{}'::jsonb), now())
            ON CONFLICT (checkpoint_id, kind) DO UPDATE
               SET status = EXCLUDED.status, error = EXCLUDED.error, updated_at = now(),
                   details = CASE WHEN CAST(:d AS jsonb) IS NULL THEN checkpoint_analyses.details
                                  ELSE EXCLUDED.details END
            """
        ),
        {"c": checkpoint_id, "k": kind, "s": status, "e": error, "d": json.dumps(details) if details else None},
    )
    refresh_checkpoint_status(session, checkpoint_id=checkpoint_id)


def start_analyses(session: Session, *, checkpoint_id: int, kinds: Sequence[str]) -> None:
    """The pending rows of the analyses of a checkpoint inserted in this transaction, in one statement:
    nobody sees the checkpoint before the commit, so `set_analysis`'s lock is not needed, and its
    status stays what it was inserted with (pending), so nothing is refreshed."""
    session.execute(text("INSERT INTO checkpoint_analyses (checkpoint_id, kind) "
                         "SELECT :c, kind FROM unnest(CAST(:kinds AS text[])) AS kind"),
                    {"c": checkpoint_id, "kinds": list(kinds)})


def refresh_checkpoint_status(session: Session, *, checkpoint_id: int) -> None:
    """A checkpoint is failed if any analysis failed, ready when all are ready, else processing."""
    session.execute(
        text(
            """
            WITH a AS (
                SELECT bool_or(status = 'failed') AS failed, bool_and(status = 'ready') AS ready,
                       bool_or(status <> 'pending') AS started,
                       string_agg(kind || ': ' || error, '; ') FILTER (WHERE status = 'failed') AS errors
                  FROM checkpoint_analyses WHERE checkpoint_id = :c
            )
            UPDATE checkpoints SET updated_at = now(), error = a.errors,
                   status = CASE WHEN a.failed THEN 'failed' WHEN a.ready THEN 'ready'
                                 WHEN a.started THEN 'processing' ELSE 'pending' END
              FROM a WHERE checkpoints.id = :c AND a.ready IS NOT NULL
            """
        ),
        {"c": checkpoint_id},
    )


# Jobs that can still move an analysis; every other procrastinate status is final.
_LIVE_JOBS = "('todo', 'doing', 'aborting')"
_QUEUE_OF_KIND = {"params": "params", "responses": "probes"}


def fail_orphaned_analyses(session: Session) -> list[int]:
    """Fail the pending/processing analyses none of whose jobs can still run (a job ended without
    recording a result: a crash the task could not catch). Returns the checkpoints touched.

    Tasks record an analysis' progress in the same transaction that queues its next job, so an
    unfinished analysis always has a live job unless something went wrong."""
    rows = session.execute(
        text(
            f"""
            SELECT a.checkpoint_id, a.kind FROM checkpoint_analyses a
             WHERE a.status IN ('pending', 'processing')
               AND NOT EXISTS (SELECT 1 FROM procrastinate_jobs j
                                WHERE (j.args->>'checkpoint_id')::bigint = a.checkpoint_id
                                  AND j.queue_name = CASE a.kind {" ".join(
                                      f"WHEN '{k}' THEN '{q}'" for k, q in _QUEUE_OF_KIND.items())} END
                                  AND j.status IN {_LIVE_JOBS})
             ORDER BY a.checkpoint_id
            """
        )
    ).all()
    touched = []
    for checkpoint_id, kind in rows:
        # Re-checked under the checkpoint's lock: a job may have finished it since the scan.
        session.execute(text("SELECT 1 FROM checkpoints WHERE id = :c FOR UPDATE"), {"c": checkpoint_id})
        current = session.execute(
            text("SELECT status FROM checkpoint_analyses WHERE checkpoint_id = :c AND kind = :k"),
            {"c": checkpoint_id, "k": kind}).scalar()
        if current in ("pending", "processing"):
            set_analysis(session, checkpoint_id=checkpoint_id, kind=kind, status="failed",
                         error="its jobs ended without a result (the worker log has the details); "
                               "register the checkpoint again under a new step to retry")
            touched.append(checkpoint_id)
    return touched


def analysis_details(session: Session, *, checkpoint_id: int, kind: str) -> dict[str, Any]:
    value = session.execute(
        text("SELECT details FROM checkpoint_analyses WHERE checkpoint_id = :c AND kind = :k"),
        {"c": checkpoint_id, "k": kind},
    ).scalar()
    return value or {}


# --- parts -----------------------------------------------------------------------------------

def replace_parts(session: Session, *, checkpoint_id: int, groups: Sequence[Sequence[str]]) -> None:
    for table in ("param_drift_summaries", "param_drift_tensors", "param_drift_parts"):
        session.execute(text(f"DELETE FROM {table} WHERE checkpoint_id = :c"), {"c": checkpoint_id})
    session.execute(
        text("INSERT INTO param_drift_parts (checkpoint_id, part, tensor_names) VALUES (:c, :p, CAST(:n AS jsonb))"),
        [{"c": checkpoint_id, "p": i, "n": json.dumps(list(g))} for i, g in enumerate(groups)],
    )


def part_names(session: Session, *, checkpoint_id: int, part: int) -> list[str] | None:
    return session.execute(
        text("SELECT tensor_names FROM param_drift_parts WHERE checkpoint_id = :c AND part = :p"),
        {"c": checkpoint_id, "p": part},
    ).scalar()


def store_part(session: Session, *, checkpoint_id: int, part: int, rows: Sequence[TensorDrift]) -> int:
    """Replace the part's rows, mark it done, and return how many parts are still missing.
    The checkpoint row is locked so that exactly one finishing part sees zero."""
    session.execute(text("SELECT 1 FROM checkpoints WHERE id = :c FOR UPDATE"), {"c": checkpoint_id})
    session.execute(text("DELETE FROM param_drift_tensors WHERE checkpoint_id = :c AND part = :p"),
                    {"c": checkpoint_id, "p": part})
    if rows:
        session.execute(
            text(
                """
                INSERT INTO param_drift_tensors (checkpoint_id, part, name, status, block, module_kind, numel,
                    l2_distance, relative_l2_distance, cosine_similarity, update_cosine_similarity,
                    normalized_spectral_shift, max_principal_angle_deg, nan_count, inf_count, data)
                VALUES (:c, :p, :name, :status, :block, :kind, :numel, :l2, :rel, :cos, :ucos, :nss, :angle,
                        :nan, :inf, CAST(:data AS jsonb))
                ON CONFLICT (checkpoint_id, name) DO UPDATE SET data = EXCLUDED.data
                """
            ),
            [_tensor_params(checkpoint_id, part, r) for r in rows],
        )
    session.execute(text("UPDATE param_drift_parts SET done = true WHERE checkpoint_id = :c AND part = :p"),
                    {"c": checkpoint_id, "p": part})
    remaining: int = session.execute(
        text("SELECT count(*) FROM param_drift_parts WHERE checkpoint_id = :c AND NOT done"), {"c": checkpoint_id}
    ).scalar_one()
    return remaining


def _tensor_params(checkpoint_id: int, part: int, row: TensorDrift) -> dict[str, Any]:
    spectral = row.spectral
    data = row_to_json(row)
    return {
        "c": checkpoint_id, "p": part, "name": row.name, "status": row.status,
        "block": block_index(row.name), "kind": module_kind(row.name), "numel": row.numel,
        "l2": data["l2_distance"], "rel": data["relative_l2_distance"], "cos": data["cosine_similarity"],
        "ucos": data["update_cosine_similarity"],
        "nss": json_safe(spectral.normalized_spectral_shift) if spectral else None,
        "angle": json_safe(spectral.max_principal_angle_deg) if spectral else None,
        "nan": row.nan_count, "inf": row.inf_count, "data": json.dumps(data),
    }


def load_rows(session: Session, *, checkpoint_id: int) -> list[TensorDrift]:
    rows = session.execute(text("SELECT data FROM param_drift_tensors WHERE checkpoint_id = :c"), {"c": checkpoint_id})
    return [row_from_json(data) for (data,) in rows]


# --- summaries -------------------------------------------------------------------------------

def replace_summaries(session: Session, *, checkpoint_id: int, summary: DriftSummary) -> None:
    session.execute(text("DELETE FROM param_drift_summaries WHERE checkpoint_id = :c"), {"c": checkpoint_id})
    scopes = [("global", "global", summary.overall)]
    scopes += [("block", str(b), s) for b, s in summary.blocks.items()]
    scopes += [("module", k, s) for k, s in summary.modules.items()]
    mismatches = {f.name: getattr(summary, f.name) for f in dataclasses.fields(summary)
                  if f.name not in ("overall", "blocks", "modules")}
    session.execute(
        text(
            """
            INSERT INTO param_drift_summaries (checkpoint_id, scope, key, numel, l2_distance, relative_l2_distance,
                cosine_similarity, update_cosine_similarity, changed_ratio, normalized_spectral_shift,
                max_principal_angle_deg, principal_overlap_ratio, principal_update_energy_ratio, nan_count,
                inf_count, data)
            VALUES (:c, :scope, :key, :numel, :l2, :rel, :cos, :ucos, :changed, :nss, :angle, :overlap, :energy,
                    :nan, :inf, CAST(:data AS jsonb))
            """
        ),
        [_summary_params(checkpoint_id, scope, key, s, mismatches if scope == "global" else None)
         for scope, key, s in scopes],
    )


def _summary_params(checkpoint_id: int, scope: str, key: str, s: DriftStats,
                    mismatches: dict[str, Any] | None) -> dict[str, Any]:
    data = json_safe(dataclasses.asdict(s))
    if mismatches is not None:
        data["mismatches"] = json_safe(mismatches)
    return {
        "c": checkpoint_id, "scope": scope, "key": key, "numel": s.numel, "l2": data["l2_distance"],
        "rel": data["relative_l2_distance"], "cos": data["cosine_similarity"],
        "ucos": data["update_cosine_similarity"], "changed": data["changed_ratio"],
        "nss": data["normalized_spectral_shift"], "angle": data["max_principal_angle_deg"],
        "overlap": data["principal_overlap_ratio"], "energy": data["principal_update_energy_ratio"],
        "nan": s.nan_count, "inf": s.inf_count, "data": json.dumps(data),
    }


SUMMARY_COLUMNS = ("numel", "l2_distance", "relative_l2_distance", "cosine_similarity", "update_cosine_similarity",
                   "changed_ratio", "normalized_spectral_shift", "max_principal_angle_deg",
                   "principal_overlap_ratio", "principal_update_energy_ratio", "nan_count", "inf_count")


def checkpoint_summaries(session: Session, *, checkpoint_id: int) -> list[dict[str, Any]]:
    rows = session.execute(
        text(f"SELECT scope, key, {', '.join(SUMMARY_COLUMNS)}, data FROM param_drift_summaries "
             "WHERE checkpoint_id = :c ORDER BY scope, key"),
        {"c": checkpoint_id},
    ).mappings()
    return [dict(r) for r in rows]


def checkpoint_tensors(session: Session, *, checkpoint_id: int) -> list[dict[str, Any]]:
    rows = session.execute(
        text("SELECT name, status, block, module_kind, numel, l2_distance, relative_l2_distance, cosine_similarity, "
             "update_cosine_similarity, normalized_spectral_shift, max_principal_angle_deg, nan_count, inf_count, "
             "data->>'dtype' AS dtype, data->'shape' AS shape, (data->>'changed')::bigint AS changed "
             "FROM param_drift_tensors WHERE checkpoint_id = :c ORDER BY block NULLS FIRST, name"),
        {"c": checkpoint_id},
    ).mappings()
    return [dict(r) for r in rows]


def run_series(session: Session, *, run_id: int, after: int | None = None,
               limit: int | None = None) -> list[dict[str, Any]]:
    """Global and per-block summaries of the run's checkpoints, by step: the steps after `after`, at
    most `limit` of them (all when None)."""
    rows = session.execute(
        text(f"SELECT c.step, s.scope, s.key, {', '.join('s.' + c for c in SUMMARY_COLUMNS)} "
             "FROM param_drift_summaries s JOIN checkpoints c ON c.id = s.checkpoint_id "
             "WHERE c.run_id = :r AND s.scope IN ('global', 'block') AND c.step IN ("
             "SELECT DISTINCT c2.step FROM checkpoints c2 JOIN param_drift_summaries s2 ON s2.checkpoint_id = c2.id "
             "WHERE c2.run_id = :r AND s2.scope IN ('global', 'block') AND c2.step > :after "
             "ORDER BY c2.step LIMIT :limit) ORDER BY c.step, s.scope, s.key"),
        {"r": run_id, "after": -1 if after is None else after, "limit": limit},
    ).mappings()
    return [dict(r) for r in rows]


def analysis_status(session: Session, *, checkpoint_id: int, kind: str) -> dict[str, Any]:
    row = session.execute(
        text("SELECT status, error, details FROM checkpoint_analyses WHERE checkpoint_id = :c AND kind = :k"),
        {"c": checkpoint_id, "k": kind},
    ).mappings().first()
    return dict(row) if row else {"status": "pending", "error": None, "details": {}}
