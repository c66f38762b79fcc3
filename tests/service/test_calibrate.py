"""`forgetwatch calibrate` on labelled runs stored in PostgreSQL, and the fitted model in service."""

import json

import numpy as np
from sqlalchemy import text

from service.calibrate import build_dataset, calibrate, report, save
from service.db.features import run_history
from service.db.session import make_sessionmaker
from service.risk import assess


def _labelled_runs(engine, n_runs: int = 8, n_checkpoints: int = 8) -> None:
    """Runs whose ood KL grows at different rates; ood accuracy falls once KL passes ~0.3."""
    rng = np.random.default_rng(0)
    with engine.begin() as conn:
        probe_set = conn.execute(text("INSERT INTO probe_sets (name, domain) VALUES ('ood', 'ood') RETURNING id")).scalar()
        for r in range(n_runs):
            rate = 0.01 + 0.02 * r
            run = conn.execute(text("INSERT INTO runs (name, base_model, method) VALUES (:n, '/m', 'sft') RETURNING id"),
                               {"n": f"run{r}"}).scalar()
            conn.execute(text("INSERT INTO run_labels VALUES (:r, 0, 'ood_accuracy', 1.0)"), {"r": run})
            for i in range(1, n_checkpoints + 1):
                step = 100 * i
                kl = rate * i * (1 + 0.1 * rng.standard_normal())
                checkpoint = conn.execute(text("INSERT INTO checkpoints (run_id, step, uri, status) "
                                               "VALUES (:r, :s, '/x', 'ready') RETURNING id"), {"r": run, "s": step}).scalar()
                conn.execute(text("INSERT INTO probe_drift (checkpoint_id, probe_set_id, domain, kl_forward, kl_reverse, "
                                  "data) VALUES (:c, :p, 'ood', :kl, :kl, '{}')"), {"c": checkpoint, "p": probe_set, "kl": kl})
                conn.execute(text("INSERT INTO param_drift_summaries (checkpoint_id, scope, key, numel, "
                                  "relative_l2_distance, data) VALUES (:c, 'global', 'global', 100, :d, '{}')"),
                             {"c": checkpoint, "d": 0.01 * i * (1 + r / 4)})
                accuracy = 1.0 if kl < 0.3 else 0.6
                conn.execute(text("INSERT INTO run_labels VALUES (:r, :s, 'ood_accuracy', :a)"),
                             {"r": run, "s": step, "a": accuracy})


def test_calibrate_fits_on_labelled_runs_and_the_service_uses_the_model(engine, tmp_path) -> None:
    _labelled_runs(engine)
    with make_sessionmaker(engine)() as session:
        data = build_dataset(session, label="ood_accuracy", horizon=2, relative_drop=0.1)
        assert len(data.runs) == 8 and 0 < sum(data.labels) < len(data.labels)
        model, evaluation = calibrate(data, horizon=2, threshold=0.5)
        assert evaluation.roc_auc > 0.8
        assert "loro_roc_auc=" in report(evaluation)
        path = tmp_path / "model.json"
        save(model, evaluation, path, recipe={"label": "ood_accuracy"})
        assert json.loads(path.read_text())["evaluation"]["n_runs"] == 8
        run_id = session.execute(text("SELECT id FROM runs WHERE name = 'run7'")).scalar()
        history = run_history(session, run_id=run_id)
    result = assess(history, model_path=str(path), ood_kl_nats=0.5, param_rel_l2=0.05, relative_drop=0.1)
    assert result.estimate.model == "logistic" and result.estimate.value > 0.5  # the fastest-drifting run
    assert result.forecasts["ood_kl"]["crossed"]
