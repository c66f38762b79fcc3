"""ForgetwatchReader: what the service measured, for notebooks, scripts and dashboards of your own.
Synchronous GETs; a refusal raises ForgetwatchError with the service's `detail`."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Self
from urllib.parse import quote

import httpx

from forgetwatch_client._status import RunStatus
from forgetwatch_client._transport import ForgetwatchError, classify


class ForgetwatchReader:
    """Read runs, checkpoints, probe sets, drift, risk, jobs, labels, training metrics and status; lists follow
    the service's pages (`page_size` items a request).

        with ForgetwatchReader("http://forgetwatch:8700", token) as fw:
            for run in fw.runs(method="grpo"):
                drift = fw.param_drift(run["name"])
            frame = to_pandas(fw.checkpoints("qwen-grpo-stage2"))
    """

    def __init__(self, url: str, token: str, *, timeout: float = 30.0, page_size: int = 100) -> None:
        self.page_size = page_size
        self._http = httpx.Client(
            base_url=url.rstrip("/"), headers={"Authorization": f"Bearer {token}"}, timeout=timeout
        )

    def runs(
        self, *, method: str | None = None, tags: Mapping[str, Any] | None = None, archived: bool = False
    ) -> Iterator[dict[str, Any]]:
        """Every run (archived ones only with `archived=True`), following the service's pages."""
        params: list[tuple[str, str | int]] = [("method", method)] if method else []
        params += [("tag", f"{k}={v}") for k, v in (tags or {}).items()]
        params += [("archived", "true")] if archived else []
        for response in self._pages("/v1/runs", params):
            yield from response.json()

    def run(self, run: str) -> dict[str, Any]:
        return self._get(f"/v1/runs/{_segment(run)}")

    def checkpoints(self, run: str, *, status: str | None = None) -> list[dict[str, Any]]:
        """The run's checkpoints in step order (only those in `status` when given), every page."""
        params: list[tuple[str, str | int]] = [("status", status)] if status else []
        return [c for r in self._pages(f"/v1/runs/{_segment(run)}/checkpoints", params) for c in r.json()]

    def probe_sets(self, *, domain: str | None = None) -> list[dict[str, Any]]:
        """Every probe set (id, name, domain, description) in name order, every page."""
        params: list[tuple[str, str | int]] = [("domain", domain)] if domain else []
        return [p for r in self._pages("/v1/probe-sets", params) for p in r.json()]

    def samples(self, run: str, *, step: int | None = None) -> list[dict[str, Any]]:
        """The responses pushed for the run (only those of `step` when given) in step order, every page."""
        params: list[tuple[str, str | int]] = [("step", step)] if step is not None else []
        return [s for r in self._pages(f"/v1/runs/{_segment(run)}/samples", params) for s in r.json()]

    def param_drift(self, run: str) -> dict[str, Any]:
        """{"global": [per step], "blocks": {block: [per step]}}: parameter drift against the base,
        every page joined."""
        joined: dict[str, Any] = {"run": run, "global": [], "blocks": {}}
        for response in self._pages(f"/v1/runs/{_segment(run)}/param-drift"):
            body = response.json()
            joined["run"] = body["run"]
            joined["global"].extend(body["global"])
            for block, points in body["blocks"].items():
                joined["blocks"].setdefault(block, []).extend(points)
        return joined

    def response_drift(self, run: str) -> dict[str, Any]:
        """{"probe_sets": {name: {"domain", "series"}}, "samples": [...]}: probe and sample drift,
        every page joined."""
        joined: dict[str, Any] = {"run": run, "probe_sets": {}, "samples": []}
        for response in self._pages(f"/v1/runs/{_segment(run)}/response-drift"):
            body = response.json()
            joined["run"] = body["run"]
            joined["samples"].extend(body["samples"])
            for name, entry in body["probe_sets"].items():
                known = joined["probe_sets"].setdefault(name, {"domain": entry["domain"], "series": []})
                known["series"].extend(entry["series"])
        return joined

    def risk(self, run: str) -> list[dict[str, Any]]:
        """Detection and forecast per assessed checkpoint in step order, every page."""
        return [row for r in self._pages(f"/v1/runs/{_segment(run)}/risk") for row in r.json()["series"]]

    def jobs(self, *, run: str | None = None, status: str | None = None,
             kind: str | None = None) -> list[dict[str, Any]]:
        """The service's jobs in id order, every page: only those of `run`, in `status` (`failed`, ...)
        or of `kind` (`probe_drift`, ...) when given; a failed analysis' reason is in `error`."""
        params: list[tuple[str, str | int]] = [(k, v) for k, v in (("run", run), ("status", status), ("kind", kind))
                                               if v is not None]
        return [job for r in self._pages("/v1/jobs", params) for job in r.json()]

    def labels(self, run: str) -> list[dict[str, Any]]:
        """[{"step", name: value, ...}] in step order, every page."""
        return [row for r in self._pages(f"/v1/runs/{_segment(run)}/labels") for row in r.json()["labels"]]

    def metrics(self, run: str, *, names: Sequence[str] = ()) -> dict[str, list[dict[str, Any]]]:
        """{name: [{"step", "value"}, ...]}: the training metrics the trainer reported (only `names`
        when given), every page joined."""
        series: dict[str, list[dict[str, Any]]] = {}
        for response in self._pages(f"/v1/runs/{_segment(run)}/metrics", [("name", n) for n in names]):
            for name, points in response.json()["series"].items():
                series.setdefault(name, []).extend(points)
        return dict(sorted(series.items()))

    def compare(
        self,
        runs: Sequence[str] = (),
        *,
        tags: Mapping[str, Any] | None = None,
        step: float | None = None,
        gain: float | None = None,
        metrics: Sequence[str] = (),
    ) -> dict[str, Any]:
        """Runs side by side (`runs` by name, else those with every tag in `tags`; `method` matches the
        run's method): in-domain gain against ood loss at a matched step and a matched gain, the
        Pareto-efficient runs (`pareto_at_step`, `pareto_latest`), each run's entropy ceiling and
        overlays by step (with the training metrics in `metrics` as `metric:NAME`)."""
        params: list[tuple[str, str | int | float]] = [("runs", ",".join(runs))] if runs else []
        params += [("tag", f"{k}={v}") for k, v in (tags or {}).items()]
        params += [("step", step)] if step is not None else []
        params += [("gain", gain)] if gain is not None else []
        params += [("metric", m) for m in metrics]
        return self._get_response("/v1/compare", params).json()

    def status(self, run: str) -> RunStatus:
        return RunStatus.from_json(self._get(f"/v1/runs/{_segment(run)}/status"))

    def stages(self, run: str) -> list[dict[str, Any]]:
        """The run's stages in training order: name, position, start_step, end_step, probe_sets, retention_sets."""
        return self._get(f"/v1/runs/{_segment(run)}/stages")

    def transfer(self, run: str) -> dict[str, Any]:
        """{"rows", "metrics": {"accuracy"|"loglik": {"probe_sets", "matrix", "bwt", "fwt", ...}}}: the
        transfer matrix R[i][j] (row 0 the base, row i the end of stage i) with BWT and FWT intervals."""
        return self._get(f"/v1/runs/{_segment(run)}/transfer")

    def retention(self, run: str, stage: str) -> dict[str, Any]:
        """Each checkpoint of `stage` against the stage's start on every retention set."""
        return self._get(f"/v1/runs/{_segment(run)}/stages/{_segment(stage)}/retention")

    def preview(self, run: str, stage: str) -> dict[str, Any]:
        """The stage's pre-flight preview: `status` (pending, done, failed) and, once done, the `forecast`
        per retention set (RBF-MMD distance, predicted loss with its interval, the fitted curve)."""
        return self._get(f"/v1/runs/{_segment(run)}/stages/{_segment(stage)}/preview")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _pages(self, path: str, params: Sequence[tuple[str, str | int]] = ()) -> Iterator[httpx.Response]:
        """Each page of a list, following the service's `Link: <URL>; rel="next"` headers."""
        response = self._get_response(path, params=[("limit", self.page_size), *params])
        while True:
            yield response
            following = response.links.get("next", {}).get("url")
            if not following:
                return
            response = self._get_response(following)

    def _get(self, path: str) -> Any:
        return self._get_response(path).json()

    def _get_response(
        self, path: str, params: Sequence[tuple[str, str | int | float]] | None = None
    ) -> httpx.Response:
        try:
            response = self._http.get(path, params=params)
        except httpx.HTTPError as error:
            raise ForgetwatchError(f"GET {path}: {error}") from error
        outcome = classify(response)
        if outcome.kind != "ok":
            raise ForgetwatchError(
                f"GET {path}: {outcome.describe()}", status_code=outcome.status_code, detail=outcome.detail
            )
        return response


def to_pandas(rows: Sequence[Mapping[str, Any]]) -> Any:
    """A pandas DataFrame of `rows` (e.g. `fw.checkpoints(run)` or `fw.param_drift(run)["global"]`)."""
    try:
        import pandas
    except ImportError as error:
        raise ImportError("to_pandas needs pandas: pip install pandas") from error
    return pandas.DataFrame.from_records(list(rows))


def _segment(name: str) -> str:
    return quote(name, safe="")
