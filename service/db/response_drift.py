"""Storage of response-drift results: the base's cached probe side, probe-set results per
checkpoint, per-probe rows, and statistics of pushed sample batches."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from drift.probes import ProbeItem, ProbeSet
from service.db.encoding import json_safe


def run_probe_sets(session: Session, *, run_id: int) -> list[tuple[int, ProbeSet]]:
    sets = session.execute(
        text("SELECT p.id, p.name, p.domain, p.format FROM probe_sets p JOIN run_probe_sets r "
             "ON r.probe_set_id = p.id WHERE r.run_id = :r ORDER BY p.name"), {"r": run_id}).all()
    out = []
    for probe_set_id, name, domain, fmt in sets:
        items = session.execute(
            text("SELECT prompt, reference, answer, messages FROM probe_items WHERE probe_set_id = :p "
                 "ORDER BY position"), {"p": probe_set_id}).all()
        out.append((probe_set_id, ProbeSet(name=name, domain=domain, format=fmt, items=tuple(
            ProbeItem(p, r, a, None if m is None else tuple((x["role"], x["content"]) for x in m))
            for p, r, a, m in items))))
    return out


def load_base_cache(session: Session, *, base_model: str, probe_set_id: int, k: int, fingerprint: str) -> bytes | None:
    return session.execute(
        text("SELECT data FROM probe_base_caches WHERE base_model = :b AND probe_set_id = :p AND k = :k "
             "AND fingerprint = :f"), {"b": base_model, "p": probe_set_id, "k": k, "f": fingerprint}).scalar()


def store_base_cache(session: Session, *, base_model: str, probe_set_id: int, k: int, fingerprint: str,
                     data: bytes) -> None:
    session.execute(
        text("INSERT INTO probe_base_caches (base_model, probe_set_id, k, fingerprint, data) "
             "VALUES (:b, :p, :k, :f, :d) ON CONFLICT (base_model, probe_set_id, k) "
             "DO UPDATE SET fingerprint = EXCLUDED.fingerprint, data = EXCLUDED.data, created_at = now()"),
        {"b": base_model, "p": probe_set_id, "k": k, "f": fingerprint, "d": data})


def store_probe_result(session: Session, *, checkpoint_id: int, probe_set_id: int, evaluation: Any,
                       correct: Sequence[bool | None] | None = None) -> None:
    """Replace this checkpoint's result on one probe set (aggregate row + one row per probe);
    `correct` defaults to the evaluation's own per-probe outcome."""
    div, forg = evaluation.divergence, evaluation.forgetting
    correct = forg.correct if correct is None else correct
    ll, acc = forg.log_likelihood, forg.accuracy
    params = {
        "c": checkpoint_id, "p": probe_set_id, "domain": div.domain,
        "kl_forward": div.forward_kl.mean, "kl_forward_p10": div.forward_kl.p10, "kl_forward_p25": div.forward_kl.p25,
        "kl_forward_p50": div.forward_kl.p50, "kl_forward_p90": div.forward_kl.p90,
        "kl_reverse": div.reverse_kl.mean, "kl_reverse_p90": div.reverse_kl.p90,
        "total_variation": div.total_variation.mean, "entropy": div.entropy.mean, "agreement": div.top1_agreement.mean,
        "loglik": ll.current if ll else None, "loglik_base": ll.base if ll else None,
        "loglik_change": ll.change if ll else None, "loglik_ci_low": ll.ci_low if ll else None,
        "loglik_ci_high": ll.ci_high if ll else None,
        "accuracy": acc.current if acc else None, "accuracy_base": acc.base if acc else None,
        "accuracy_change": acc.change if acc else None, "accuracy_ci_low": acc.ci_low if acc else None,
        "accuracy_ci_high": acc.ci_high if acc else None,
    }
    summary = {k: v for k, v in dataclasses.asdict(div).items() if k != "per_probe"}
    params = {k: json_safe(v) for k, v in params.items()}
    params["data"] = json.dumps(json_safe({"divergence": summary, "forgetting": dataclasses.asdict(forg)}))
    columns = [k for k in params if k not in ("c", "p", "data")]
    session.execute(text("DELETE FROM probe_drift WHERE checkpoint_id = :c AND probe_set_id = :p"),
                    {"c": checkpoint_id, "p": probe_set_id})
    session.execute(text("DELETE FROM probe_drift_items WHERE checkpoint_id = :c AND probe_set_id = :p"),
                    {"c": checkpoint_id, "p": probe_set_id})
    session.execute(
        text(f"INSERT INTO probe_drift (checkpoint_id, probe_set_id, {', '.join(columns)}, data) "
             f"VALUES (:c, :p, {', '.join(':' + c for c in columns)}, CAST(:data AS jsonb))"), params)
    session.execute(
        text("INSERT INTO probe_drift_items (checkpoint_id, probe_set_id, position, forward_kl, reverse_kl, "
             "total_variation, entropy, top1_agreement, mean_logprob, base_mean_logprob, correct, n_tokens, "
             "from_reference, base_correct) "
             "VALUES (:c, :p, :i, :fwd, :rev, :tv, :ent, :agree, :lp, :blp, :correct, :n, :ref, :base_correct)"),
        [{"c": checkpoint_id, "p": probe_set_id, "i": i, "fwd": json_safe(d.forward_kl), "rev": json_safe(d.reverse_kl),
          "tv": json_safe(d.total_variation), "ent": json_safe(d.entropy), "agree": json_safe(d.top1_agreement),
          "lp": json_safe(d.mean_logprob), "blp": json_safe(d.base_mean_logprob),
          "correct": correct[i] if correct is not None and i < len(correct) else None,
          "n": d.n_tokens, "ref": d.from_reference,
          "base_correct": forg.base_correct[i] if i < len(forg.base_correct) else None}
         for i, d in enumerate(div.per_probe)],
    )


PROBE_COLUMNS = ("kl_forward", "kl_forward_p10", "kl_forward_p25", "kl_forward_p50", "kl_forward_p90", "kl_reverse",
                 "kl_reverse_p90", "total_variation", "entropy", "agreement", "loglik", "loglik_base",
                 "loglik_change", "loglik_ci_low", "loglik_ci_high", "accuracy", "accuracy_base", "accuracy_change",
                 "accuracy_ci_low", "accuracy_ci_high")
SAMPLE_COLUMNS = ("n_samples", "mmd2", "shift_pvalue", "shift_detected", "classifier_auc", "centroid_distance",
                  "similarity_median", "similarity_p25", "distinct1", "distinct2", "distinct2_base",
                  "repetition_ratio", "degenerate_ratio", "length_mean", "length_std", "sample_entropy",
                  "shift_evalue", "shift_evalue_max", "similarity_p10", "similarity_low_ratio",
                  "similarity_histogram")


def forgetting_ratio(values: Mapping[str, Any]) -> float | None:
    """Relative drop vs base: of accuracy when the probe set has answers, else of reference
    log-likelihood per token. Positive = worse than base; negative = improved."""
    for change, base in (("accuracy_change", "accuracy_base"), ("loglik_change", "loglik_base")):
        if values.get(change) is not None and values.get(base):
            return -float(values[change]) / abs(float(values[base]))
    return None


def checkpoint_probe_results(session: Session, *, checkpoint_id: int) -> list[dict[str, Any]]:
    rows = session.execute(
        text(f"SELECT s.name AS probe_set, p.domain, {', '.join('p.' + c for c in PROBE_COLUMNS)} "
             "FROM probe_drift p JOIN probe_sets s ON s.id = p.probe_set_id WHERE p.checkpoint_id = :c "
             "ORDER BY s.name"), {"c": checkpoint_id}).mappings()
    return [dict(r) for r in rows]


def run_probe_series(session: Session, *, run_id: int, after: int | None = None,
                     limit: int | None = None) -> list[dict[str, Any]]:
    """Probe results of the run's checkpoints by step and probe set: the steps after `after`, at most
    `limit` of them (all when None)."""
    rows = session.execute(
        text(f"SELECT c.step, s.name AS probe_set, p.domain, {', '.join('p.' + c for c in PROBE_COLUMNS)} "
             "FROM probe_drift p JOIN probe_sets s ON s.id = p.probe_set_id JOIN checkpoints c ON c.id = p.checkpoint_id "
             "WHERE c.run_id = :r AND c.step IN (SELECT DISTINCT c2.step FROM probe_drift p2 JOIN checkpoints c2 "
             "ON c2.id = p2.checkpoint_id WHERE c2.run_id = :r AND c2.step > :after ORDER BY c2.step LIMIT :limit) "
             "ORDER BY c.step, s.name"),
        {"r": run_id, "after": -1 if after is None else after, "limit": limit}).mappings()
    return [dict(r) for r in rows]


def run_sample_series(session: Session, *, run_id: int, after: int | None = None,
                      limit: int | None = None) -> list[dict[str, Any]]:
    """Sample statistics of the run by step and probe set: the steps after `after`, at most `limit`
    of them (all when None)."""
    rows = session.execute(
        text(f"SELECT step, probe_set, {', '.join(SAMPLE_COLUMNS)} FROM sample_drift WHERE run_id = :r "
             "AND step IN (SELECT DISTINCT step FROM sample_drift WHERE run_id = :r AND step > :after "
             "ORDER BY step LIMIT :limit) ORDER BY step, probe_set"),
        {"r": run_id, "after": -1 if after is None else after, "limit": limit}).mappings()
    return [dict(r) for r in rows]


def store_sample_result(session: Session, *, run_id: int, step: int, probe_set: str, values: dict[str, Any],
                        data: dict[str, Any]) -> None:
    columns = [c for c in SAMPLE_COLUMNS if c in values]
    params = {c: json_safe(values[c]) for c in columns}
    params.update(r=run_id, s=step, ps=probe_set, data=json.dumps(json_safe(data)))
    session.execute(text("DELETE FROM sample_drift WHERE run_id = :r AND step = :s AND probe_set = :ps"), params)
    session.execute(
        text(f"INSERT INTO sample_drift (run_id, step, probe_set, {', '.join(columns)}, data) "
             f"VALUES (:r, :s, :ps, {', '.join(':' + c for c in columns)}, CAST(:data AS jsonb))"), params)


BASE_SCORE_COLUMNS = ("n_items", "accuracy", "loglik", "entropy", "entropy_split_half")


def store_base_scores(session: Session, *, run_id: int, probe_set_id: int, scores: Any | None,
                      error: str | None = None) -> None:
    """Replace the run's base row for one probe set: its scores (`drift.forgetting.BaseScores`), or
    why the base could not be measured."""
    values = {c: json_safe(getattr(scores, c)) if scores is not None else None for c in BASE_SCORE_COLUMNS}
    session.execute(
        text("INSERT INTO run_base_scores (run_id, probe_set_id, status, n_items, accuracy, loglik, entropy, "
             "entropy_split_half, error) VALUES (:r, :p, :status, :n_items, :accuracy, :loglik, :entropy, "
             ":entropy_split_half, :error) ON CONFLICT (run_id, probe_set_id) DO UPDATE SET status = EXCLUDED.status, "
             "n_items = EXCLUDED.n_items, accuracy = EXCLUDED.accuracy, loglik = EXCLUDED.loglik, "
             "entropy = EXCLUDED.entropy, entropy_split_half = EXCLUDED.entropy_split_half, error = EXCLUDED.error, "
             "measured_at = now()"),
        {"r": run_id, "p": probe_set_id, "status": "failed" if scores is None else "ready", "error": error, **values})


def run_base_scores(session: Session, *, run_id: int) -> list[dict[str, Any]]:
    """The run's base row per probe set (probe sets not measured yet are absent)."""
    rows = session.execute(
        text(f"SELECT s.name AS probe_set, s.domain, b.status, b.error, b.measured_at, "
             f"{', '.join('b.' + c for c in BASE_SCORE_COLUMNS)} FROM run_base_scores b "
             "JOIN probe_sets s ON s.id = b.probe_set_id WHERE b.run_id = :r ORDER BY s.name"), {"r": run_id}).mappings()
    return [dict(r) for r in rows]
