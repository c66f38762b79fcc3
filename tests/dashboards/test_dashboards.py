"""The Grafana dashboards and their provisioning agree with what forgetwatch exports and stores.

PromQL targets must parse (`promql_parser`) and use only metric names and labels found in a real scrape
of the service (over seeded data, so every per-run family has samples) or defined by the alert rules;
SQL targets must run, read-only, against a migrated and seeded database and return rows for the run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, text

from service.api.app import create_app
from service.db.session import libpq_url, make_engine
from service.settings import Settings
from tests.conftest import create_database, drop_database

try:
    import promql_parser
except ImportError:  # pragma: no cover - a message beats a bare ModuleNotFoundError
    pytest.fail("promql_parser not installed: `pip install -e '.[dev]'` (or `pip install promql-parser`)",
                pytrace=False)

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "dashboards"
PROVIDERS = DASHBOARDS / "provisioning" / "dashboards" / "forgetwatch.yml"
DATASOURCES = DASHBOARDS / "provisioning" / "datasources" / "forgetwatch.yml"
RULES = ROOT / "prometheus" / "rules" / "forgetwatch.rules.yml"
# Where the provider's `options.path` is mounted from: the repository's dashboards/ folder.
CONTAINER_PATH = "/var/lib/grafana/dashboards"

PROMETHEUS = "prometheus"
POSTGRES = "grafana-postgresql-datasource"
PANEL_TYPES = {"row", "timeseries", "stat", "table", "heatmap", "state-timeline", "bargauge", "gauge",
               "barchart", "text", "logs", "piechart", "status-history", "histogram", "trend", "xychart"}
# What Prometheus adds to a scrape: target labels on every sample, and the synthetic `up` series.
TARGET_LABELS = {"job", "instance"}
PROMETHEUS_SERIES = {"up": TARGET_LABELS}

SEED_RUN, SEED_METHOD = "seed-run", "sft"
# Grafana's built-in interval variables, as the duration literals they expand to.
BUILTIN_DURATIONS = {"__rate_interval": "2m", "__interval": "30s", "__range": "1d", "__range_s": "86400",
                     "__range_ms": "86400000", "__interval_ms": "30000"}
VARIABLE_VALUES = {"run": SEED_RUN, "method": SEED_METHOD, "instance": "testserver:80"}
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


# ---- the files ------------------------------------------------------------------------------------


@cache
def _boards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # a collapsed row holds its panels


def _variables(board: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in board.get("templating", {}).get("list", [])}


@dataclass(frozen=True)
class Query:
    board: str
    where: str
    datasource: dict[str, Any]
    text: str
    format: str = "table"

    @property
    def id(self) -> str:
        return f"{self.board}:{self.where}"


@cache
def _queries() -> tuple[Query, ...]:
    """Every query in the dashboards: panel targets, annotations and template variables."""
    found: list[Query] = []
    for name, board in _boards().items():
        for panel in _panels(board.get("panels", [])):
            for target in panel.get("targets", []):
                source = target.get("datasource") or panel.get("datasource") or {}
                body = target.get("expr") or target.get("rawSql")
                found.append(Query(name, f"{panel['title']}[{target['refId']}]", source, body,
                                   target.get("format", "time_series")))
        for annotation in board.get("annotations", {}).get("list", []):
            if annotation.get("builtIn"):
                continue
            target = annotation.get("target") or annotation
            found.append(Query(name, f"annotation {annotation['name']}", annotation["datasource"],
                               target.get("expr") or target.get("rawSql"), target.get("format", "table")))
        for variable in _variables(board).values():
            if variable["type"] == "query":
                query = variable["query"]
                found.append(Query(name, f"variable ${variable['name']}", variable["datasource"],
                                   query["query"] if isinstance(query, dict) else query))
    return tuple(found)


def _of_type(kind: str) -> list[Query]:
    return [q for q in _queries() if q.datasource.get("type") == kind]


def _provisioned() -> dict[str, dict[str, Any]]:
    return {ds["uid"]: ds for ds in yaml.safe_load(DATASOURCES.read_text())["datasources"]}


def test_every_dashboard_parses_with_a_unique_uid_and_title() -> None:
    boards = _boards()
    assert set(boards) >= {"fleet-overview.json", "run-detail.json", "service-health.json"}
    uids = [b["uid"] for b in boards.values()]
    titles = [b["title"] for b in boards.values()]
    assert len(set(uids)) == len(uids), uids
    assert len(set(titles)) == len(titles), titles
    for name, board in boards.items():
        assert board["uid"] and len(board["uid"]) <= 40, name  # Grafana's uid limit
        assert board.get("id") is None, f"{name}: drop the instance-specific `id` from exported JSON"


@pytest.mark.parametrize("name", sorted(_boards()))
def test_dashboard_uses_the_current_schema_and_a_valid_grid(name: str) -> None:
    board = _boards()[name]
    assert board["schemaVersion"] >= 39
    panels = list(_panels(board["panels"]))
    ids = [p["id"] for p in panels]
    assert len(set(ids)) == len(ids), f"{name}: duplicate panel ids"
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        assert panel["type"] in PANEL_TYPES, f"{name}: {panel['title']} is a {panel['type']} panel"
        assert panel.get("title"), f"{name}: panel {panel['id']} has no title"
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, (name, panel["title"], grid)
        if panel["type"] != "row":
            assert panel.get("targets"), f"{name}: {panel['title']} has no queries"
            sources = {json.dumps(t.get("datasource", panel["datasource"]), sort_keys=True)
                       for t in panel["targets"]}
            assert sources == {json.dumps(panel["datasource"], sort_keys=True)}, (
                f"{name}: {panel['title']} queries another datasource than the panel's")
        mine = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not cells & mine, f"{name}: {panel['title']} overlaps another panel"
        cells |= mine


def test_every_query_uses_a_provisioned_datasource_by_uid() -> None:
    provisioned = _provisioned()
    for query in _queries():
        uid, kind = query.datasource.get("uid"), query.datasource.get("type")
        assert uid in provisioned, f"{query.id}: datasource uid {uid!r} is not provisioned"
        assert kind == provisioned[uid]["type"], f"{query.id}: datasource type {kind!r} for uid {uid!r}"
        assert query.text and query.text.strip(), f"{query.id}: empty query"


def test_datasources_are_the_expected_ones_without_secrets() -> None:
    provisioned = _provisioned()
    assert provisioned[PROMETHEUS]["type"] == "prometheus"
    assert provisioned[PROMETHEUS]["url"] == "http://prometheus:9090"
    postgres = provisioned["forgetwatch-postgres"]
    assert postgres["type"] == POSTGRES
    assert postgres["url"] == "postgres:5432"
    assert postgres["jsonData"]["database"] == "forgetwatch"
    assert postgres["user"] == "$FORGETWATCH_GRAFANA_DB_USER"
    assert postgres["secureJsonData"] == {"password": "$FORGETWATCH_GRAFANA_DB_PASSWORD"}
    assert "password" not in postgres and "password" not in postgres["jsonData"]


def test_dashboard_provider_reads_the_folder_holding_the_dashboards() -> None:
    providers = yaml.safe_load(PROVIDERS.read_text())["providers"]
    assert [p["type"] for p in providers] == ["file"]
    options = providers[0]["options"]
    assert options["path"] == CONTAINER_PATH
    # The folder mounted at CONTAINER_PATH is dashboards/: it must hold the JSON files, not only YAML.
    assert sorted(p.name for p in DASHBOARDS.glob("*.json")) == sorted(_boards())
    assert not options.get("foldersFromFilesStructure"), "the dashboards live at the top of the folder"


def test_links_between_dashboards_name_existing_uids() -> None:
    uids = {b["uid"] for b in _boards().values()}
    for name, board in _boards().items():
        for url in re.findall(r'"url": "(/d/[^"]+)"', json.dumps(board)):
            assert url.split("/")[2] in uids, f"{name}: link {url} names no provisioned dashboard"


def test_run_detail_selects_a_run_and_its_method_from_label_values() -> None:
    board = _boards()["run-detail.json"]
    variables = _variables(board)
    for name in ("run", "method"):
        assert variables[name]["type"] == "query"
        assert variables[name]["query"]["query"].startswith("label_values(")
    assert variables["run"]["multi"] is True, "several runs side by side"
    assert variables["run"]["includeAll"] is False


def test_run_detail_queries_read_every_selected_run_and_keep_them_apart() -> None:
    """With several runs selected, PromQL matches `run=~"$run"` and aggregates by run; SQL reads
    `r.name IN ($run)`; panels whose series would mix runs repeat per run."""
    for query in (q for q in _queries() if q.board == "run-detail.json"):
        assert 'run="$run"' not in query.text and "= '$run'" not in query.text, query.id
        kind = query.datasource.get("type")
        if kind == PROMETHEUS and "$run" in query.text and not query.text.startswith("label_values"):
            assert 'run=~"$run"' in query.text, query.id
            head = query.text.split("(", 1)[0].strip()
            if head in ("max", "min", "sum", "avg"):
                assert query.text.startswith(f"{head} by (run"), f"{query.id}: aggregate by run, not across runs"
        if kind == POSTGRES and "$run" in query.text:
            assert "r.name IN ($run)" in query.text, query.id
    board = _boards()["run-detail.json"]
    repeated = {p["title"] for p in _panels(board["panels"]) if p.get("repeat") == "run"}
    assert any(t.startswith("Probe KL (forward") for t in repeated), repeated


# ---- PromQL ---------------------------------------------------------------------------------------


def _substitute(query: Query, *, value_of: dict[str, str]) -> str:
    """What Grafana sends: built-in intervals as durations, dashboard variables as placeholders."""
    variables = _variables(_boards()[query.board])

    def replace(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        if name in BUILTIN_DURATIONS:
            return BUILTIN_DURATIONS[name]
        assert name in variables, f"{query.id}: ${name} is neither a Grafana built-in nor a dashboard variable"
        return value_of.get(name, "x")

    return VARIABLE.sub(replace, query.text)


LABEL_VALUES = re.compile(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", flags=re.DOTALL)


def _promql(query: Query) -> str:
    """The expression; of a variable's `label_values(selector, label)`, the selector."""
    expr = _substitute(query, value_of=VARIABLE_VALUES)
    label_values = LABEL_VALUES.fullmatch(expr)
    return label_values.group(1) if label_values else expr


def _selectors(expr: str) -> list[tuple[str, dict[str, Any]]]:
    """(metric name, {label: matcher}) of every vector selector in the expression."""
    found: list[tuple[str, dict[str, Any]]] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            matchers = {m.name: m for m in node.matchers.matchers}
            name = node.name or matchers.pop("__name__").value
            matchers.pop("__name__", None)
            found.append((name, matchers))

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


@pytest.mark.parametrize("query", _of_type(PROMETHEUS), ids=lambda q: q.id)
def test_promql_parses(query: Query) -> None:
    try:
        promql_parser.parse(_promql(query))
    except Exception as error:  # noqa: BLE001 - the parser raises plain ValueError/RuntimeError
        pytest.fail(f"{query.id}: {error}\n{_promql(query)}")


@cache
def _rules() -> tuple[dict[str, Any], ...]:
    return tuple(rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"])


def _recorded_labels() -> dict[str, set[str]]:
    """Recording rule name -> the labels it keeps: every `by (...)` in its expression."""
    out: dict[str, set[str]] = {}
    for rule in _rules():
        if "record" in rule:
            labels: set[str] = set()

            def visit(node: Any, labels: set[str] = labels) -> None:
                if isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None \
                        and node.modifier.type == promql_parser.AggModifierType.By:
                    labels.update(node.modifier.labels)

            promql_parser.walk(promql_parser.parse(rule["expr"]), visit)
            out[rule["record"]] = labels
    return out


def _alert_names() -> list[str]:
    return [rule["alert"] for rule in _rules() if "alert" in rule]


@pytest.mark.parametrize("query", _of_type(PROMETHEUS), ids=lambda q: q.id)
def test_promql_uses_only_exported_metrics_and_their_labels(query: Query, exported: dict[str, set[str]]) -> None:
    recorded = _recorded_labels()
    label_values = LABEL_VALUES.fullmatch(query.text)
    for name, matchers in _selectors(_promql(query)):
        if label_values:  # the label a variable lists must exist too
            matchers = {**matchers, label_values.group(2): None}
        if name == "ALERTS":
            if "alertname" in matchers:
                pattern = re.compile(matchers["alertname"].value)
                assert any(pattern.fullmatch(a) for a in _alert_names()), (
                    f"{query.id}: alertname {pattern.pattern!r} matches no alert in {RULES.name}")
            continue
        known = exported.get(name) or recorded.get(name) or PROMETHEUS_SERIES.get(name)
        assert known is not None, (
            f"{query.id}: {name} is neither exported on /metrics nor recorded in {RULES.name}")
        unknown = set(matchers) - known
        assert not unknown, f"{query.id}: {name} has no label(s) {sorted(unknown)}; it has {sorted(known)}"


def _family(sample_name: str) -> str:
    return re.sub(r"_(bucket|sum|count|created|total)$", "", sample_name)


def test_every_exported_forgetwatch_metric_is_on_a_dashboard(exported: dict[str, set[str]]) -> None:
    used = {name for q in _of_type(PROMETHEUS) for name, _ in _selectors(_promql(q))}
    used |= {name for rule in _rules() if rule.get("record") in used for name, _ in _selectors(rule["expr"])}
    missing = {_family(n) for n in exported if n.startswith("forgetwatch_")} - {_family(n) for n in used}
    assert not missing, f"exported on /metrics but shown on no dashboard: {sorted(missing)}"


# ---- SQL ------------------------------------------------------------------------------------------

TIME_FROM = datetime.now(UTC) - timedelta(days=2)
TIME_TO = datetime.now(UTC) + timedelta(hours=1)


def _sql(query: Query) -> str:
    """Grafana's macro expansion for PostgreSQL, then its variable interpolation: a single-valued
    variable goes in raw (quotes doubled), a multi-valued one as a quoted list."""
    sql = query.text
    sql = re.sub(r"\$__timeFilter\(([^()]+)\)",
                 lambda m: f"{m.group(1)} BETWEEN '{TIME_FROM.isoformat()}' AND '{TIME_TO.isoformat()}'", sql)
    sql = sql.replace("$__timeFrom()", f"'{TIME_FROM.isoformat()}'").replace("$__timeTo()", f"'{TIME_TO.isoformat()}'")
    sql = re.sub(r"\$__timeGroup(Alias)?\(([^,()]+),[^()]*\)",
                 lambda m: f"to_timestamp(floor(extract(epoch from {m.group(2)}) / 60) * 60)"
                           + (' AS "time"' if m.group(1) else ""), sql)
    leftover = re.findall(r"\$__\w+\(", sql)
    assert not leftover, f"{query.id}: teach _sql() Grafana's expansion of {leftover}"
    variables = _variables(_boards()[query.board])
    values = {name: (f"'{VARIABLE_VALUES.get(name, 'x')}'" if v.get("multi") or v.get("includeAll")
                     else VARIABLE_VALUES.get(name, "x").replace("'", "''"))
              for name, v in variables.items()}
    return _substitute(Query(query.board, query.where, query.datasource, sql), value_of=values)


@pytest.mark.parametrize("query", _of_type(POSTGRES), ids=lambda q: q.id)
def test_sql_runs_read_only_and_returns_rows_for_the_run(query: Query, seeded_database: str) -> None:
    sql = _sql(query)
    with psycopg.connect(libpq_url(seeded_database)) as conn:
        conn.read_only = True
        with conn.cursor() as cur:
            try:
                cur.execute(sql)
            except psycopg.Error as error:
                failure = f"{query.id}: {error}\n{sql}"
            else:
                failure = None
            if failure:
                pytest.fail(failure)
            columns = [c.name for c in cur.description or []]
            rows = cur.fetchall()
    assert rows, f"{query.id}: no rows for the seeded run\n{sql}"
    if query.format == "time_series":
        assert columns[0] == "time", f"{query.id}: a time series needs its `time` column first: {columns}"
        times = [row[0] for row in rows]
        assert times == sorted(times), f"{query.id}: Grafana needs time series ordered by time"
        if "metric" in columns:
            # Grafana names each series after `metric` only when these are the only three columns.
            assert columns == ["time", "metric", "value"], f"{query.id}: {columns}"
    if query.where.startswith("annotation"):
        assert {"time", "text"} <= set(columns), f"{query.id}: annotations need `time` and `text`: {columns}"


# ---- the service, with data -----------------------------------------------------------------------

_SEED = (
    "INSERT INTO runs (name, base_model, method) VALUES (:run, '/models/base', :method)",
    "INSERT INTO probe_sets (name, domain) VALUES ('trivia', 'ood'), ('tool-calls', 'in_domain')",
    """INSERT INTO checkpoints (run_id, step, uri, status, error, received_at, updated_at)
        SELECT r.id, s.step, '/ckpt/' || s.step, s.status, s.error, now() - (500 - s.step) * interval '1 minute',
               now() - (500 - s.step) * interval '1 minute'
          FROM runs r, (VALUES (100, 'ready', NULL), (200, 'ready', NULL), (300, 'ready', NULL),
                               (400, 'failed', 'out of memory')) AS s(step, status, error)""",
    """INSERT INTO param_drift_summaries (checkpoint_id, scope, key, numel, relative_l2_distance,
                                           normalized_spectral_shift, data)
        SELECT c.id, b.scope, b.key, 1000, c.step * b.weight / 1e5, c.step / 1e4, '{}'
          FROM checkpoints c, (VALUES ('global', 'global', 1.0), ('block', '0', 0.5), ('block', '1', 2.0),
                                      ('block', '11', 1.5)) AS b(scope, key, weight)
         WHERE c.status = 'ready'""",
    """INSERT INTO probe_drift (checkpoint_id, probe_set_id, domain, kl_forward, kl_forward_p10, kl_forward_p25,
                                 kl_forward_p50, kl_forward_p90, kl_reverse, accuracy, accuracy_base,
                                 accuracy_change, accuracy_ci_low, accuracy_ci_high, loglik_change, loglik_base, data)
        SELECT c.id, p.id, p.domain, c.step / 1e3, c.step / 2e3, c.step / 1.5e3, c.step / 1e3, c.step / 5e2,
               c.step / 9e2, 0.7 - c.step / 1e4, 0.7, -c.step / 1e4, -c.step / 1e4 - 0.02, -c.step / 1e4 + 0.02,
               -0.1, -2.0, '{}'
          FROM checkpoints c, probe_sets p WHERE c.status = 'ready'""",
    """INSERT INTO sample_drift (run_id, step, n_samples, mmd2, shift_detected, distinct2, distinct2_base,
                                  repetition_ratio, shift_evalue, shift_evalue_max, data)
        SELECT run_id, step, 64, step / 1e4, step > 200, 0.8 - step / 1e3, 0.8, step / 2e3, step / 10.0,
               step / 10.0, '{}'
          FROM checkpoints WHERE status = 'ready'""",
    """INSERT INTO risk_estimates (checkpoint_id, applicable, value, model, changepoint, features, forecasts,
                                    findings, detected, detection)
        SELECT id, true, step / 1e3, 'trend/1', step = 300, '{}',
               jsonb_build_object(
                   'ood_kl', jsonb_build_object('threshold', 1.0, 'slope', 0.001, 'intercept', 0.0,
                                                'last_step', step, 'steps_to_threshold', 1000 - step,
                                                'crossed', false, 'n_points', 3),
                   'acceleration_ratio', 1.2),
               jsonb_build_array(
                   jsonb_build_object('code', 'ood_kl_rise', 'severity', 'warning', 'message', 'ood KL up',
                                      'step', step, 'value', step / 1e3),
                   jsonb_build_object('code', 'diversity_drop', 'severity', 'critical',
                                      'message', 'response diversity down 40% vs base', 'step', NULL,
                                      'value', NULL)),
               false, jsonb_build_object('measured', true, 'detected', false, 'drop_low', step / 1e4)
          FROM checkpoints WHERE status = 'ready'""",
    # The run is one stage training for tool-calls, so trivia (ood) is its retention set: its per-item
    # results (3 of 4 right where the base had all 4) give the retention gauge a series.
    "INSERT INTO run_probe_sets (run_id, probe_set_id) SELECT r.id, p.id FROM runs r, probe_sets p",
    "INSERT INTO run_stages (run_id, position, name, start_step) SELECT id, 1, 'tools', 0 FROM runs",
    """INSERT INTO run_stage_probe_sets (stage_id, probe_set_id)
        SELECT s.id, p.id FROM run_stages s, probe_sets p WHERE p.name = 'tool-calls'""",
    # Its pre-flight forecast: trivia is expected to lose 12 % (interval 2-30 %) over the tools stage.
    """INSERT INTO stage_previews (stage_id, prompts, status, forecast)
        SELECT id, '["call the weather tool", "list the files"]', 'done',
               jsonb_build_object('retention_sets', jsonb_build_array(jsonb_build_object(
                   'probe_set', 'trivia', 'distance', 0.2, 'loss', 0.12, 'ci_low', 0.02, 'ci_high', 0.3,
                   'reason', NULL)))
          FROM run_stages""",
    """INSERT INTO probe_drift_items (checkpoint_id, probe_set_id, position, correct, base_correct)
        SELECT c.id, p.id, i, i < 3, true FROM checkpoints c, probe_sets p, generate_series(0, 3) i
         WHERE c.status = 'ready'""",
    # One finished job (so the duration histogram has samples) and one waiting.
    "INSERT INTO procrastinate_jobs (queue_name, task_name) VALUES ('params', 'seeded'), ('probes', 'seeded')",
    "UPDATE procrastinate_jobs SET status = 'doing' WHERE queue_name = 'params'",
    "UPDATE procrastinate_jobs SET status = 'succeeded' WHERE queue_name = 'params'",
)


@pytest.fixture(scope="module")
def seeded_database(server_url: str, template_database: str) -> Iterator[str]:
    """One migrated database for the module, holding one run with a few analysed checkpoints."""
    url = create_database(server_url, template=template_database)
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            for statement in _SEED:
                conn.execute(text(statement), {"run": SEED_RUN, "method": SEED_METHOD})
        yield url
    finally:
        engine.dispose()
        drop_database(server_url, url)


@pytest.fixture(scope="module")
def seeded_engine(seeded_database: str) -> Iterator[Engine]:
    engine = make_engine(seeded_database)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def exported(seeded_database: str, seeded_engine: Engine,
             tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """Sample name -> label names, from the service's own /metrics over the seeded database."""
    tmp = tmp_path_factory.mktemp("dashboards")
    settings = Settings(database_url=seeded_database, data_dir=tmp / "data", checkpoint_roots=[tmp])
    with TestClient(create_app(settings=settings, engine=seeded_engine)) as client:
        assert client.get("/healthz").status_code == 200  # so the request metrics have samples
        response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert "forgetwatch_database_up 1.0" in response.text, "the scrape could not read the database"
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(response.text):
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
        for suffix in suffixes:  # families without samples still name their series
            labels.setdefault(family.name + suffix, set())
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    for name in labels:
        labels[name] |= TARGET_LABELS
    for name in ("forgetwatch_forgetting_forecast_probability", "forgetwatch_ood_forgetting_detected"):
        assert labels.get(name, set()) >= {"run", "method"}, f"the seeded run's {name} is not exported"
    assert labels.get("forgetwatch_forecast_applicable", set()) >= {"run", "method", "reason"}
    return labels
