"""`forgetwatch calibrate` on labelled runs stored in PostgreSQL: replay, conformal threshold, record."""

import json

import numpy as np
import pytest
from sqlalchemy import text

from service.calibrate import SHIPPED, calibrate, report, save, scored_runs, traces
from service.db.session import make_sessionmaker
from service.settings import forecast_model_in

SHIPPED_MODEL = forecast_model_in(SHIPPED)


def _calibrate(runs, *, floor=0.0):
    """The threshold rule on the runs' own (trend) scores: `calibrate` is the same for any score."""
    return calibrate(runs, runs, alpha=0.1, horizon=3, floor=floor, relative_drop=0.1, fitted_here=False)

STEPS = [20 * (i + 1) for i in range(8)]


def _labelled_runs(engine, *, quiet: int = 20, forgetting: int = 4) -> None:
    """Runs with a 64-item ood probe set: `quiet` whose probe accuracy and ground truth stay at the
    base, `forgetting` whose both fall steadily from the 4th checkpoint on."""
    rng = np.random.default_rng(0)
    with engine.begin() as conn:
        probe_set = conn.execute(text("INSERT INTO probe_sets (name, domain) VALUES ('ood', 'ood') RETURNING id")).scalar()
        conn.execute(text("INSERT INTO probe_items (probe_set_id, position, prompt) "
                          "SELECT :p, g, 'q' || g FROM generate_series(0, 63) g"), {"p": probe_set})
        for r in range(quiet + forgetting):
            forgets = r >= quiet
            run = conn.execute(text("INSERT INTO runs (name, base_model, method, tags) VALUES (:n, '/m', :m, "
                                    "CAST(:t AS jsonb)) RETURNING id"),
                               {"n": f"run{r:02d}", "m": "sft" if r % 2 else "grpo",
                                "t": json.dumps({"family": "toy"})}).scalar()
            conn.execute(text("INSERT INTO run_probe_sets (run_id, probe_set_id) VALUES (:r, :p)"),
                         {"r": run, "p": probe_set})
            conn.execute(text("INSERT INTO run_labels VALUES (:r, 0, 'ood_accuracy', 0.8)"), {"r": run})
            for i, step in enumerate(STEPS):
                change = -0.03 * max(0, i - 2) if forgets else float(rng.normal(0, 0.004))
                checkpoint = conn.execute(text("INSERT INTO checkpoints (run_id, step, uri, status) "
                                               "VALUES (:r, :s, '/x', 'ready') RETURNING id"), {"r": run, "s": step}).scalar()
                conn.execute(text("INSERT INTO probe_drift (checkpoint_id, probe_set_id, domain, kl_forward, "
                                  "accuracy_base, accuracy_change, accuracy_ci_low, accuracy_ci_high, data) "
                                  "VALUES (:c, :p, 'ood', :kl, 0.8, :d, :d - 0.02, :d + 0.02, '{}')"),
                             {"c": checkpoint, "p": probe_set, "kl": abs(change), "d": change})
                conn.execute(text("INSERT INTO run_labels VALUES (:r, :s, 'ood_accuracy', :a)"),
                             {"r": run, "s": step, "a": 0.8 + change})


def test_calibrate_replays_labelled_runs_and_sets_a_conformal_threshold(engine, tmp_path) -> None:
    _labelled_runs(engine)
    with make_sessionmaker(engine)() as session:
        runs = traces(session, label="ood_accuracy", relative_drop=0.1, horizon=3)
    assert len(runs) == 24 and {t.method for t in runs} == {"sft", "grpo"} and {t.family for t in runs} == {"toy"}
    forgetting = [t for t in runs if t.onset is not None]
    # Ground truth 0.8 + change ≤ 0.72 from change −0.09 on: the 6th checkpoint (index 5).
    assert len(forgetting) == 4 and {t.onset for t in forgetting} == {5}
    assert all(t.forecast[:2] == (None, None) for t in runs)  # never from fewer than 3 checkpoints
    threshold, record = _calibrate(runs)
    maxima = sorted(max(p for p in t.forecast if p is not None) for t in runs if t.onset is None)
    assert threshold is not None and maxima[18] < threshold <= maxima[19]  # 20 quiet runs: the 19th maximum
    by_method, by_family = record
    assert by_method.false_alarm_runs <= 0.10 and by_method.detect_rate == 1.0
    # Each method's runs are judged with the threshold from the other method's 10 quiet runs.
    assert by_method.early2_share == 0.0 and by_method.median_lead_ckpts == 1.0  # alarmed 1 checkpoint early
    assert by_family.early2_share is None and "one family only" in by_family.split
    assert "auc_h3=" in report(by_method)
    path = tmp_path / "threshold.json"
    save(path, threshold=threshold, alpha=0.1, model=SHIPPED_MODEL, runs=runs, record=record, recipe={})
    document = json.loads(path.read_text())
    assert document["alarm_probability"] == threshold and document["n_non_forgetting_runs"] == 20
    assert forecast_model_in(path) == SHIPPED_MODEL


def test_from_scratch_the_forecast_model_is_fitted_on_the_runs_and_each_run_scored_without_it(engine) -> None:
    _labelled_runs(engine)
    with make_sessionmaker(engine)() as session:
        runs = traces(session, label="ood_accuracy", relative_drop=0.1, horizon=3)
    model, scored = scored_runs(runs, model=None, horizon=3, relative_drop=0.1)
    assert model.inputs == "hazard/3" and model.n_events == 4 and model.threshold == 0.1
    peak = {t.run: max(p for p in t.forecast if p is not None) for t in scored}
    forgetting = {t.run for t in runs if t.onset is not None}
    assert min(peak[r] for r in forgetting) > max(v for r, v in peak.items() if r not in forgetting)
    threshold, (by_method, _) = calibrate(runs, scored, alpha=0.1, horizon=3, floor=0.0, relative_drop=0.1,
                                          fitted_here=True)
    assert threshold is not None and by_method.split.startswith("hazard/3 leave-one-method-out")
    assert by_method.detect_rate == 1.0 and by_method.false_alarm_runs <= 0.1
    # Without --from-scratch the shipped model is shrunk toward these runs: its standardization kept, its
    # evidence grown by their rows, and each run scored by a refit without it.
    shrunk, scored_shrunk = scored_runs(runs, model=SHIPPED_MODEL, horizon=3, relative_drop=0.1)
    assert shrunk.mean == SHIPPED_MODEL.mean and shrunk.coef != SHIPPED_MODEL.coef
    assert shrunk.n_events == SHIPPED_MODEL.n_events + 4 and shrunk.n_rows > SHIPPED_MODEL.n_rows
    assert [len(t.forecast) for t in scored_shrunk] == [len(t.forecast) for t in runs]


def test_calibrate_refuses_too_few_runs_and_gives_no_threshold_without_enough_quiet_runs(engine) -> None:
    _labelled_runs(engine, quiet=3, forgetting=1)
    with make_sessionmaker(engine)() as session:
        runs = traces(session, label="ood_accuracy", relative_drop=0.1, horizon=3)
    threshold, _ = _calibrate(runs)
    assert threshold is None  # 3 quiet runs cannot bound false alarms at 10 %
    with pytest.raises(ValueError, match="at least 3 labelled runs"):
        _calibrate(runs[:2])


def test_a_refit_pooled_with_the_shipped_corpus_is_installed_only_when_no_worse(engine, tmp_path) -> None:
    from service.calibrate import refit_threshold, shipped_maxima
    from service.settings import Settings

    _labelled_runs(engine, quiet=4, forgetting=4)
    with make_sessionmaker(engine)() as session:
        runs = traces(session, label="ood_accuracy", relative_drop=0.1, horizon=3)
    quiet_max = max(max(p for p in t.forecast if p is not None) for t in runs if t.onset is None)
    # Four quiet runs alone cannot bound false alarms at 10 %; pooled with 30 shipped ones they can.
    assert _calibrate(runs)[0] is None
    shipped = [0.05] * 20 + [0.15] * 10
    decision = refit_threshold(runs, in_force=0.99, alpha=0.1, horizon=3, shipped=shipped, floor=0.0)
    assert decision.threshold is not None and quiet_max < decision.threshold
    assert decision.installed, decision.reason
    assert decision.refit.false_alarm_runs == 0.0 and decision.in_force.false_alarm_runs == 0.0
    assert decision.refit.median_lead_ckpts >= decision.in_force.median_lead_ckpts
    save(tmp_path / "alarm_threshold.json", threshold=None, alpha=0.1, model=SHIPPED_MODEL, runs=runs, record=[],
         recipe={}, decision=decision, pooled_with=shipped)
    written = json.loads((tmp_path / "alarm_threshold.json").read_text())
    assert len(written["quiet_run_maxima"]) == 34 and written["n_non_forgetting_runs"] == 4  # the pool behind it
    assert shipped_maxima(tmp_path / "alarm_threshold.json") == written["quiet_run_maxima"]
    assert Settings(data_dir=tmp_path).forecast_alarm_probability == decision.threshold
    assert Settings(data_dir=tmp_path, forecast_alarm_probability=0.5).forecast_alarm_probability == 0.5
    # A threshold in force that already warns as early, with no false alarm, is not replaced by one
    # that alarms on runs that never forgot.
    refused = refit_threshold(runs, in_force=0.9999, alpha=0.1, horizon=3, shipped=[0.0] * 30, floor=0.0)
    assert refused.refit.false_alarm_runs > 0.1 and not refused.installed and "worse" in refused.reason
    # The shipped calibration exists, parses, and its threshold is the service's default.
    assert len(shipped_maxima(SHIPPED)) >= 9
    assert Settings(data_dir=tmp_path / "empty").forecast_alarm_probability == json.loads(
        SHIPPED.read_text())["alarm_probability"]


def test_run_records_written_to_a_file_replay_to_the_same_traces(engine, tmp_path) -> None:
    from drift.replay import dump_records, load_records, replay
    from service.calibrate import records

    _labelled_runs(engine, quiet=3, forgetting=2)
    with make_sessionmaker(engine)() as session:
        stored = records(session, label="ood_accuracy")
        runs = traces(session, label="ood_accuracy", relative_drop=0.1, horizon=3)
    path = tmp_path / "records.json.gz"
    dump_records(stored, path)
    loaded = load_records(path)
    assert loaded == stored and len(loaded) == 5
    assert [replay(r, relative_drop=0.1, horizon=3) for r in loaded] == runs
    assert loaded[0].drops[0] is not None and loaded[0].drops[0].n_items == 64
    assert loaded[0].probe_scores[0][0]["accuracy"][0] == 0.8 and loaded[0].probe_scores[0][0]["n_items"] == 64
    (tmp_path / "other.json").write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="not a forgetwatch.run_records/1"):
        load_records(tmp_path / "other.json")
