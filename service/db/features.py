"""A run's measurements per checkpoint, as the flat feature dicts `drift.risk` consumes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from drift.entropy_ceiling import values_at_steps
from drift.findings import TEACHER_DIVERGENCE_METRICS
from service.db import training_metrics


@dataclass(frozen=True)
class RunHistory:
    checkpoint_ids: list[int]
    steps: list[int]
    rows: list[dict[str, float | None]]
    nonfinite_names: list[str]  # of the latest checkpoint


_PARAMS = text(
    """
    SELECT c.id, g.relative_l2_distance AS rel, g.normalized_spectral_shift AS nss,
           g.update_cosine_similarity AS ucos, g.nan_count + g.inf_count AS nonfinite,
           (SELECT max(b.relative_l2_distance) FROM param_drift_summaries b
             WHERE b.checkpoint_id = c.id AND b.scope = 'block') AS max_block
      FROM checkpoints c JOIN param_drift_summaries g ON g.checkpoint_id = c.id AND g.scope = 'global'
     WHERE c.run_id = :r
    """
)
_PROBES = text(
    """
    SELECT p.checkpoint_id, p.domain, avg(p.kl_forward) AS kl_fwd, avg(p.kl_reverse) AS kl_rev,
           avg(p.kl_forward_p90) AS kl_fwd_p90, avg(p.kl_forward_p10) AS kl_fwd_p10, avg(p.entropy) AS entropy,
           avg(p.loglik_change) AS loglik_change, avg(p.loglik_base) AS loglik_base,
           avg(p.accuracy_change) AS acc_change, avg(p.accuracy_base) AS acc_base, avg(p.agreement) AS agreement
      FROM probe_drift p JOIN checkpoints c ON c.id = p.checkpoint_id
     WHERE c.run_id = :r GROUP BY p.checkpoint_id, p.domain
    """
)
_SAMPLES = text(
    """
    SELECT step, avg(mmd2) AS mmd, avg(classifier_auc) AS auc, avg(similarity_p25) AS sim_p25,
           avg(distinct2) AS distinct2, avg(distinct2_base) AS distinct2_base,
           avg(repetition_ratio) AS repetition, avg(sample_entropy) AS sample_entropy
      FROM sample_drift WHERE run_id = :r GROUP BY step
    """
)


def run_history(session: Session, *, run_id: int, up_to_step: int | None = None) -> RunHistory:
    """One row per checkpoint (step order) with whatever the analyses have produced so far.
    Sample statistics are matched to the checkpoint at the same step."""
    checkpoints = session.execute(
        text("SELECT id, step FROM checkpoints WHERE run_id = :r AND (CAST(:s AS bigint) IS NULL OR step <= :s) "
             "ORDER BY step"), {"r": run_id, "s": up_to_step}).all()
    rows: dict[int, dict[str, Any]] = {cid: {} for cid, _ in checkpoints}
    for r in session.execute(_PARAMS, {"r": run_id}).mappings():
        if r["id"] in rows:
            rows[r["id"]].update(param_rel_l2=r["rel"], param_rel_l2_max_block=r["max_block"], param_nss=r["nss"],
                                 param_update_cosine=r["ucos"], nonfinite_tensors=float(r["nonfinite"] or 0))
    for r in session.execute(_PROBES, {"r": run_id}).mappings():
        if r["checkpoint_id"] not in rows:
            continue
        suffix = "ood" if r["domain"] == "ood" else "in"
        row = rows[r["checkpoint_id"]]
        row.update({f"kl_fwd_{suffix}": r["kl_fwd"], f"kl_rev_{suffix}": r["kl_rev"],
                    f"kl_fwd_{suffix}_p90": r["kl_fwd_p90"], f"entropy_{suffix}": r["entropy"],
                    f"acc_change_{suffix}": r["acc_change"]})
        if suffix == "ood":
            # No loglik_base_ood: a near-perfect base has log-likelihood ~0, so drops are reported in
            # nats, not as a share of the base.
            row.update(kl_fwd_ood_p10=r["kl_fwd_p10"], loglik_change_ood=r["loglik_change"],
                       acc_base_ood=r["acc_base"], agreement_ood=r["agreement"])
    by_step = {r["step"]: r for r in session.execute(_SAMPLES, {"r": run_id}).mappings()}
    for cid, step in checkpoints:
        s = by_step.get(step)
        if s is not None:
            rows[cid].update(embed_mmd=s["mmd"], embed_auc=s["auc"], embed_similarity_p25=s["sim_p25"],
                             distinct2=s["distinct2"], distinct2_base=s["distinct2_base"],
                             repetition_ratio=s["repetition"], sample_entropy=s["sample_entropy"])
    divergence = training_metrics.series(session, run_id=run_id, names=TEACHER_DIVERGENCE_METRICS)
    name = next((n for n in TEACHER_DIVERGENCE_METRICS if divergence.get(n)), None)
    if name is not None:  # the trainer's teacher–student divergence at or before each checkpoint's step
        points = divergence[name]
        at = values_at_steps([int(p["step"]) for p in points], [p["value"] for p in points],
                             [step for _, step in checkpoints])
        for (cid, _), value in zip(checkpoints, at, strict=True):
            rows[cid]["teacher_divergence"] = value
    latest = checkpoints[-1][0] if checkpoints else None
    nonfinite = session.execute(
        text("SELECT name FROM param_drift_tensors WHERE checkpoint_id = :c AND nan_count + inf_count > 0 "
             "ORDER BY name"), {"c": latest}).scalars().all() if latest else []
    return RunHistory(
        checkpoint_ids=[cid for cid, _ in checkpoints], steps=[step for _, step in checkpoints],
        rows=[{k: (float(v) if v is not None else None) for k, v in rows[cid].items()} for cid, _ in checkpoints],
        nonfinite_names=list(nonfinite),
    )


@dataclass(frozen=True)
class OodProbeResult:
    """One ood probe set's paired scores at one checkpoint: (base, change, ci_low, ci_high)."""

    probe_set: str
    n_items: int
    accuracy: tuple[float | None, float | None, float | None, float | None]
    loglik: tuple[float | None, float | None, float | None, float | None]


@dataclass(frozen=True)
class OodHistory:
    """Per checkpoint (step order, up to the assessed one): its ood probe results, and for the last
    checkpoint the state of its response analysis (why results may be missing)."""

    steps: list[int]
    results: list[list[OodProbeResult]]
    n_ood_probe_sets: int
    analysis_status: str | None
    analysis_error: str | None


_OOD = text(
    """
    SELECT c.step, s.name, (SELECT count(*) FROM probe_items i WHERE i.probe_set_id = s.id) AS n_items,
           p.accuracy_base, p.accuracy_change, p.accuracy_ci_low, p.accuracy_ci_high,
           p.loglik_base, p.loglik_change, p.loglik_ci_low, p.loglik_ci_high
      FROM probe_drift p JOIN checkpoints c ON c.id = p.checkpoint_id JOIN probe_sets s ON s.id = p.probe_set_id
     WHERE c.run_id = :r AND p.domain = 'ood' AND c.step <= :s
    """
)


def ood_history(session: Session, *, run_id: int, up_to_step: int) -> OodHistory:
    steps = list(session.execute(text("SELECT step FROM checkpoints WHERE run_id = :r AND step <= :s ORDER BY step"),
                                 {"r": run_id, "s": up_to_step}).scalars())
    by_step: dict[int, list[OodProbeResult]] = {s: [] for s in steps}
    for r in session.execute(_OOD, {"r": run_id, "s": up_to_step}).mappings():
        by_step[r["step"]].append(OodProbeResult(
            r["name"], int(r["n_items"]),
            (r["accuracy_base"], r["accuracy_change"], r["accuracy_ci_low"], r["accuracy_ci_high"]),
            (r["loglik_base"], r["loglik_change"], r["loglik_ci_low"], r["loglik_ci_high"])))
    n_sets = session.execute(
        text("SELECT count(*) FROM run_probe_sets r JOIN probe_sets p ON p.id = r.probe_set_id "
             "WHERE r.run_id = :r AND p.domain = 'ood'"), {"r": run_id}).scalar_one()
    analysis = session.execute(
        text("SELECT a.status, a.error FROM checkpoint_analyses a JOIN checkpoints c ON c.id = a.checkpoint_id "
             "WHERE c.run_id = :r AND c.step = :s AND a.kind = 'responses'"), {"r": run_id, "s": up_to_step}).first()
    return OodHistory(steps=steps, results=[sorted(by_step[s], key=lambda x: x.probe_set) for s in steps],
                      n_ood_probe_sets=int(n_sets), analysis_status=analysis.status if analysis else None,
                      analysis_error=analysis.error if analysis else None)
