"""The shipped forecast model, its alarm threshold and the documented held-out record are what the committed
corpus gives.

`bench/corpus/records.json.gz` holds the runs of the last `make corpus` build as the service
measured them (`drift.replay.RunRecord`). Replaying them must reproduce, to the digit, the model and
threshold in `service/shipped_calibration.json` and the `risk_heldout` line in `docs/risk_model.md`.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RECORDS = ROOT / "bench" / "corpus" / "records.json.gz"


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORGETWATCH_")}
    return subprocess.run(args, cwd=ROOT, env=env | {"FORGETWATCH_DATA_DIR": str(tmp_path)}, capture_output=True,
                          text=True, timeout=300, check=False)


FORGETWATCH = str(Path(sys.executable).parent / "forgetwatch")


def test_the_shipped_threshold_is_the_committed_corpus_calibrated_from_scratch(tmp_path) -> None:
    out = tmp_path / "calibration.json"
    done = _run([FORGETWATCH, "calibrate", "--from-scratch", "--records", str(RECORDS), "--out", str(out)], tmp_path)
    assert done.returncode == 0, done.stderr
    ours, shipped = json.loads(out.read_text()), json.loads((ROOT / "service" / "shipped_calibration.json").read_text())
    assert ours["quiet_run_maxima"] == shipped["quiet_run_maxima"]
    assert ours["alarm_probability"] == shipped["alarm_probability"]
    assert ours["held_out"] == shipped["held_out"]
    assert ours["forecast_model"] == shipped["forecast_model"]


def test_the_documented_held_out_record_is_what_the_committed_corpus_gives(tmp_path) -> None:
    done = _run([sys.executable, "-m", "bench.risk_heldout", "--records", str(RECORDS)], tmp_path)
    assert done.returncode == 0, done.stderr
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("risk_heldout families=4 ")
    docs = (ROOT / "docs" / "risk_model.md").read_text()
    assert last in docs
    limits = [line.strip() for line in done.stdout.splitlines()
              if line.startswith(("  late-onset", "  risk-set rows", "  forgetting runs whose probes"))]
    assert len(limits) == 3 and all(line in docs for line in limits)


def test_a_refit_shrunk_toward_a_model_of_other_families_ranks_a_new_family_better_than_a_fit_from_nothing(
        tmp_path) -> None:
    done = _run([sys.executable, "-m", "bench.calibrate_shrinkage", "--draws", "3", "--k", "3"], tmp_path)
    assert done.returncode == 0, done.stderr
    last = dict(field.split("=") for field in done.stdout.strip().splitlines()[-1].split()[1:])
    assert float(last["shrunk_auc"]) > float(last["scratch_auc"]) + 0.05
    assert abs(float(last["shrunk_auc"]) - float(last["prior_auc"])) < 0.02


def test_a_records_file_that_is_not_one_is_refused_with_its_name(tmp_path) -> None:
    bad = tmp_path / "records.json"
    bad.write_text("{}")
    done = _run([FORGETWATCH, "calibrate", "--records", str(bad)], tmp_path)
    assert done.returncode != 0 and "cannot read run records from" in done.stderr and "Traceback" not in done.stderr


def test_a_hazard_model_fitted_on_the_committed_corpus_scores_synthetic_runs() -> None:
    """`bench.forecast_noise --hazard`: the model scores a run's latest checkpoint from its drops so far;
    a run whose answers never change stays below the corpus's threshold, a run losing 8 points a
    checkpoint crosses it before its ground truth does."""
    import numpy as np

    from bench.forecast_noise import hazard_score, simulate

    score, alarm = hazard_score("hazard/3", threshold=0.1, horizon=3)
    assert 0 < alarm < 1
    kw = {"items": 256, "base_accuracy": 0.9, "threshold": 0.1, "alarm": alarm, "score": score}
    still = simulate(np.random.default_rng(0), churn=0.0, start=None, rate=0.0, **kw)
    assert still is not None and still.first_alarm is None and still.forecasts > 0
    falling = simulate(np.random.default_rng(0), churn=0.0, start=3, rate=0.08, **kw)
    assert falling is not None and falling.first_alarm is not None and falling.first_alarm < falling.onset


def test_a_refit_on_a_few_runs_shrinks_the_shipped_model_and_is_judged_against_it(tmp_path) -> None:
    """`forgetwatch calibrate` (not --from-scratch) on 12 runs: the model written is the shipped one moved a
    little toward them, and the record it must not be worse than is the shipped model and threshold on
    the same runs."""
    from drift.evaluation import evaluate
    from drift.replay import dump_records, load_records, replay
    from service.calibrate import in_force_scores
    from service.settings import forecast_model_in

    mine = tmp_path / "mine.json.gz"
    dump_records(load_records(RECORDS)[::15], mine)
    out = tmp_path / "calibration.json"
    done = _run([FORGETWATCH, "calibrate", "--records", str(mine), "--out", str(out)], tmp_path)
    assert done.returncode == 0, done.stderr
    written = json.loads(out.read_text())
    shipped = json.loads((ROOT / "service" / "shipped_calibration.json").read_text())
    model, before = written["forecast_model"], shipped["forecast_model"]
    assert model["n_rows"] > before["n_rows"] and model["mean"] == before["mean"]
    moved = [abs(a - b) for a, b in zip(model["coef"] + [model["intercept"]], before["coef"] + [before["intercept"]],
                                        strict=True)]
    assert 0 < max(moved) < 0.5
    runs = [replay(r, relative_drop=0.1, horizon=3) for r in load_records(mine)]
    in_force = in_force_scores(runs, model=forecast_model_in(ROOT / "service" / "shipped_calibration.json"),
                               horizon=3)
    expected = evaluate(in_force, [shipped["alarm_probability"]] * len(runs), horizon=3)
    assert written["in_force"]["early2_share"] == expected.early2_share
    assert written["in_force"]["false_alarm_runs"] == expected.false_alarm_runs
    assert ("shrunk toward the one in force" in done.stdout) == written["installed"]
