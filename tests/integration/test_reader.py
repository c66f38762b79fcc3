"""The client reads back what the service stored, following every page, against a real server."""

from __future__ import annotations

from pathlib import Path

import pytest

from drift.params import compare
from forgetwatch_client import ForgetwatchError, ForgetwatchReader, to_pandas
from service.db import param_drift, queries, response_drift, status
from service.db.session import make_engine, make_sessionmaker
from tests.integration.models import save_tiny_gpt2_run
from tests.integration.service_fixture import Service


def test_the_reader_follows_pages_and_reads_each_kind_of_result(service: Service) -> None:
    with service.client(blocking=True) as writer:
        for i in range(7):
            writer.run(
                f"read-{i}",
                base_model=service.base_model,
                method="grpo" if i % 2 else "sft",
                tags={"seed": i},
            )
        for step in (5, 1, 9, 3):  # four steps: two pages of three
            writer.labels(step, {"ood_accuracy": step / 10})
            writer.metrics(step, {"loss": 2.0 / step, "reward": step / 10})
        for i in range(4):
            writer.probe_set(f"read-set-{i}", "ood" if i % 2 else "in_domain", ["1+1="])
        for step in (2, 1):
            writer.samples(step, [{"prompt": f"{step}+{i}=", "response": str(step + i)} for i in range(2)])
    with ForgetwatchReader(service.url, service.token, page_size=3) as fw:
        names = [r["name"] for r in fw.runs() if r["name"].startswith("read-")]
        assert names == [f"read-{i}" for i in range(7)]
        assert [r["name"] for r in fw.runs(method="grpo", tags={"seed": 3})] == ["read-3"]
        assert fw.run("read-6")["method"] == "sft"
        assert fw.labels("read-6") == [{"step": s, "ood_accuracy": s / 10} for s in (1, 3, 5, 9)]
        metrics = fw.metrics("read-6")
        assert metrics["loss"] == [{"step": s, "value": 2.0 / s} for s in (1, 3, 5, 9)]
        assert [p["step"] for p in metrics["reward"]] == [1, 3, 5, 9]
        assert list(fw.metrics("read-6", names=["reward"])) == ["reward"]
        sets = [p["name"] for p in fw.probe_sets() if p["name"].startswith("read-set-")]
        assert sets == [f"read-set-{i}" for i in range(4)]
        assert [p["name"] for p in fw.probe_sets(domain="ood") if p["name"].startswith("read-set-")] == [
            "read-set-1",
            "read-set-3",
        ]
        assert fw.checkpoints("read-6") == []
        assert [s["prompt"] for s in fw.samples("read-6")] == ["1+0=", "1+1=", "2+0=", "2+1="]
        assert [s["response"] for s in fw.samples("read-6", step=2)] == ["2", "3"]
        assert fw.param_drift("read-6")["global"] == []
        assert fw.response_drift("read-6")["probe_sets"] == {}
        assert fw.metrics("read-5") == {}
        assert fw.status("read-6").run == "read-6"
        with pytest.raises(ForgetwatchError) as missing:
            fw.run("no-such-run")
        assert missing.value.status_code == 404 and "no run" in str(missing.value.detail)
    frame = to_pandas([{"step": 1, "kl": 0.5}, {"step": 2, "kl": 0.7}])
    assert list(frame["kl"]) == [0.5, 0.7]


def test_stages_are_added_by_the_client_and_read_back_with_the_transfer_matrix(service: Service) -> None:
    with service.client(blocking=True) as writer:
        for name, domain in (("stg-math", "in_domain"), ("stg-chem", "in_domain"), ("stg-ood", "ood")):
            writer.probe_set(name, domain, [{"prompt": "1+1=", "reference": "2", "answer": "2"}])
        writer.run("staged-read", base_model=service.base_model, probe_sets=["stg-ood"])
        assert writer.add_stage("math", 0, ["stg-math"])["position"] == 1
        assert writer.add_stage("chem", 100, ["stg-chem"])["retention_sets"] == ["stg-math", "stg-ood"]
        assert writer.add_stage("chem", 100, ["stg-chem"])["position"] == 2  # the same stage again: a no-op
        with pytest.raises(ForgetwatchError) as refused:
            writer.add_stage("tools", 50, ["stg-chem"])
        assert refused.value.status_code == 409 and "not after the last stage" in str(refused.value.detail)
    with ForgetwatchReader(service.url, service.token) as fw:
        assert [(s["name"], s["start_step"], s["end_step"]) for s in fw.stages("staged-read")] == [
            ("math", 0, 100), ("chem", 100, None)]
        transfer = fw.transfer("staged-read")
        assert [r["stage"] for r in transfer["rows"]] == [None, "math", "chem"]
        accuracy = transfer["metrics"]["accuracy"]
        assert [p["name"] for p in accuracy["probe_sets"]] == ["stg-math", "stg-chem", "stg-ood"]
        assert accuracy["bwt"] is None and "needs" in accuracy["bwt_reason"]
        assert fw.retention("staged-read", "chem")["retention_sets"] == ["stg-math", "stg-ood"]


def test_a_stage_preview_is_sent_by_the_client_and_its_forecast_read_back(service: Service) -> None:
    prompts = [f"{x}*{y}=" for x in range(3) for y in range(3)]
    with service.client(blocking=True) as writer:
        writer.probe_set("pre-math", "in_domain", [{"prompt": f"{x}+{y}=", "answer": str(x + y)} for x in range(4)
                                                   for y in range(3)])
        writer.run("preview-read", base_model=service.base_model)
        writer.add_stage("math", 0, ["pre-math"])
        assert writer.preview_stage("math", prompts) == {"stage": "math", "status": "pending", "n_prompts": 9,
                                                         "forecast": None, "error": None}
        with pytest.raises(ForgetwatchError) as refused:
            writer.preview_stage("math", prompts[:3])
        assert refused.value.status_code == 422 and "at least 8 prompts" in str(refused.value.detail)
    with ForgetwatchReader(service.url, service.token) as fw:  # no worker here: the forecast stays pending
        assert fw.preview("preview-read", "math")["status"] == "pending"
        with pytest.raises(ForgetwatchError) as missing:
            fw.preview("preview-read", "chem")
        assert missing.value.status_code == 404


def test_the_reader_compares_runs_by_name_or_tag(service: Service) -> None:
    with service.client(blocking=True) as writer:
        for name, method, lr in (
            ("cmp-sft", "sft", "1e-5"),
            ("cmp-grpo", "grpo", "1e-5"),
            ("cmp-sd", "sft", "3e-5"),
        ):
            writer.run(name, base_model=service.base_model, method=method, tags={"lr": lr, "group": "cmp"})
            writer.metrics(10, {"entropy": 0.5})
    with ForgetwatchReader(service.url, service.token) as fw:
        named = fw.compare(["cmp-grpo", "cmp-sft"], metrics=["entropy"])
        assert [r["name"] for r in named["runs"]] == ["cmp-grpo", "cmp-sft"]
        assert named["runs"][0]["overlays"]["metric:entropy"] == [[10, 0.5]]
        assert named["runs"][0]["points"] == [] and named["pareto_at_step"] == []  # no probe results yet
        tagged = fw.compare(tags={"method": "sft", "group": "cmp"})
        assert [r["name"] for r in tagged["runs"]] == ["cmp-sft", "cmp-sd"]
        with pytest.raises(ForgetwatchError) as missing:
            fw.compare(["cmp-sft", "no-such-run"])
        assert missing.value.status_code == 404


def test_the_reader_joins_every_page_of_the_drift_and_risk_series(service: Service) -> None:
    root = Path(service.env["FORGETWATCH_CHECKPOINT_ROOTS"].split(",")[0])
    base, *steps = save_tiny_gpt2_run(root / "reader-gpt2", steps=3)
    with service.client(blocking=True) as writer:
        writer.run("read-series", base_model=str(base))
        for step, folder in zip((3, 1, 2), steps, strict=True):
            writer.checkpoint(step, str(folder))
    engine = make_engine(service.env["FORGETWATCH_DATABASE_URL"])
    try:
        with make_sessionmaker(engine)() as session, session.begin():
            run = queries.get_run(session, ref="read-series")
            for step, folder in zip((3, 1, 2), steps, strict=True):
                checkpoint = queries.get_checkpoint(session, run_id=run.id, step=step)
                param_drift.replace_summaries(session, checkpoint_id=checkpoint.id,
                                              summary=compare(base, folder, spectral=False).summary)
                status.store_assessment(session, checkpoint_id=checkpoint.id, applicable=True, value=step / 10,
                                        model="test", reason=None, reason_code=None, changepoint=False, features={},
                                        forecasts={}, findings=[], detected=False, detection={}, heuristic={})
                response_drift.store_sample_result(session, run_id=run.id, step=step, probe_set="p",
                                                   values={"n_samples": step}, data={})
    finally:
        engine.dispose()
    with ForgetwatchReader(service.url, service.token, page_size=1) as paged, \
            ForgetwatchReader(service.url, service.token, page_size=1000) as whole:
        drift = paged.param_drift("read-series")
        assert [p["step"] for p in drift["global"]] == [1, 2, 3]
        assert drift == whole.param_drift("read-series") and len(drift["blocks"]) == 2
        assert [s["n_samples"] for s in paged.response_drift("read-series")["samples"]] == [1, 2, 3]
        assert paged.response_drift("read-series") == whole.response_drift("read-series")
        assert [(r["step"], r["value"]) for r in paged.risk("read-series")] == [(1, 0.1), (2, 0.2), (3, 0.3)]
        jobs = paged.jobs(run="read-series", kind="plan_param_drift")
        assert sorted(j["step"] for j in jobs) == [1, 2, 3] and {j["run"] for j in jobs} == {"read-series"}
        assert paged.jobs(run="read-series", status="failed") == []
