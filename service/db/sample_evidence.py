"""Storage of the sequential shift evidence of a run's pushed samples: each batch's paired embeddings
and the run's e-process after each batch (columns `shift_evalue`, `shift_evalue_max` of `sample_drift`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import text
from sqlalchemy.orm import Session


@dataclass(frozen=True)
class EmbeddedBatch:
    """One pushed batch's embeddings, rows paired by prompt: the base's responses and the checkpoint's."""

    step: int
    probe_set: str
    reference: np.ndarray  # (n, dim) float32
    current: np.ndarray  # (n, dim) float32


def lock_run_samples(session: Session, *, run_id: int) -> None:
    """Serialise the recomputation of a run's e-process until the transaction ends."""
    session.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"), {"k": f"sample-evidence:{run_id}"}
    )


def store_batch_embeddings(
    session: Session, *, run_id: int, step: int, probe_set: str, reference: np.ndarray, current: np.ndarray
) -> None:
    """Replace the batch's embeddings (reference and current of equal shape (n, dim))."""
    ref = np.ascontiguousarray(reference, dtype=np.float32)
    cur = np.ascontiguousarray(current, dtype=np.float32)
    session.execute(
        text(
            "INSERT INTO sample_embeddings (run_id, step, probe_set, n_pairs, dim, reference, current) "
            "VALUES (:r, :s, :ps, :n, :d, :ref, :cur) ON CONFLICT (run_id, step, probe_set) DO UPDATE SET "
            "n_pairs = EXCLUDED.n_pairs, dim = EXCLUDED.dim, reference = EXCLUDED.reference, "
            "current = EXCLUDED.current, updated_at = now()"
        ),
        {
            "r": run_id,
            "s": step,
            "ps": probe_set,
            "n": ref.shape[0],
            "d": ref.shape[1],
            "ref": ref.tobytes(),
            "cur": cur.tobytes(),
        },
    )


def run_batch_embeddings(session: Session, *, run_id: int) -> list[EmbeddedBatch]:
    """The run's embedded batches in the order the e-process takes them: by step, then probe set."""
    rows = session.execute(
        text(
            "SELECT step, probe_set, n_pairs, dim, reference, current FROM sample_embeddings WHERE run_id = :r "
            "ORDER BY step, probe_set"
        ),
        {"r": run_id},
    ).all()
    return [
        EmbeddedBatch(
            step=step,
            probe_set=probe_set,
            reference=np.frombuffer(ref, dtype=np.float32).reshape(n, dim),
            current=np.frombuffer(cur, dtype=np.float32).reshape(n, dim),
        )
        for step, probe_set, n, dim, ref, cur in rows
    ]


def store_shift_evalues(
    session: Session,
    *,
    run_id: int,
    batches: Sequence[EmbeddedBatch],
    evalues: Sequence[float],
    running_max: Sequence[float],
) -> None:
    """Write the e-process after each batch (and its running maximum) onto the batches' sample rows."""
    if not batches:
        return
    session.execute(
        text(
            "UPDATE sample_drift SET shift_evalue = :e, shift_evalue_max = :m WHERE run_id = :r AND step = :s "
            "AND probe_set = :ps"
        ),
        [
            {"r": run_id, "s": b.step, "ps": b.probe_set, "e": e, "m": m}
            for b, e, m in zip(batches, evalues, running_max, strict=True)
        ],
    )
