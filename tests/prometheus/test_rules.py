"""The Prometheus rules, their promtool unit tests, the example configs and the runbook agree.

Needs `promtool` (Debian: `apt-get install prometheus`); fails without it. The Alertmanager checks use
`amtool` (`apt-get install prometheus-alertmanager`) and fail without it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "prometheus" / "rules" / "forgetwatch.rules.yml"
RULE_TESTS = ROOT / "prometheus" / "tests" / "forgetwatch.rules.test.yml"
PROMETHEUS_CONFIG = ROOT / "prometheus" / "prometheus.yml"
ALERTMANAGER_CONFIG = ROOT / "prometheus" / "alertmanager.yml"
RUNBOOK = ROOT / "docs" / "runbook.md"


def _promtool() -> str:
    path = shutil.which("promtool") or ("/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None)
    if path is None:
        pytest.fail(
            "promtool not found on PATH: install it with `apt-get install prometheus` "
            "(Debian/Ubuntu) or put the Prometheus release binary on PATH"
        )
    return path


def _amtool() -> str:
    """amtool checks the Alertmanager example; CI installs it."""
    path = shutil.which("amtool") or ("/usr/bin/amtool" if Path("/usr/bin/amtool").exists() else None)
    if path is None:
        pytest.fail(
            "amtool not found on PATH: `apt-get install prometheus-alertmanager` to check alertmanager.yml"
        )
    return path


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120, check=False)


def _assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, (
        f"{' '.join(result.args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    )


@cache
def _alerts() -> tuple[dict, ...]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return tuple(rule for group in groups for rule in group["rules"] if "alert" in rule)


@cache
def _rule_tests() -> tuple[dict, ...]:
    return tuple(yaml.safe_load(RULE_TESTS.read_text())["tests"])


def _alert_ids() -> list[str]:
    return [rule["alert"] for rule in _alerts()]


def _github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


# ---- the tools accept the files -------------------------------------------------------------------


def test_promtool_check_rules_accepts_the_rules_file() -> None:
    _assert_ok(_run(_promtool(), "check", "rules", RULES))


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    _assert_ok(_run(_promtool(), "test", "rules", RULE_TESTS))


def test_promtool_check_config_accepts_the_example_and_its_rule_files() -> None:
    result = _run(_promtool(), "check", "config", PROMETHEUS_CONFIG)
    _assert_ok(result)
    assert "SUCCESS: 1 rule files found" in result.stdout, result.stdout


def test_amtool_check_config_accepts_the_example_alertmanager_config() -> None:
    _assert_ok(_run(_amtool(), "check-config", ALERTMANAGER_CONFIG))


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["severity=page", "alertname=ForgettingPredicted", "run=sd-chem"], "pager"),
        (["severity=ticket", "alertname=DriftJobsBacklog", "queue=params"], "ticket"),
    ],
)
def test_alertmanager_routes_pages_to_the_pager_and_tickets_to_the_ticket_queue(
    labels: list[str], receiver: str
) -> None:
    result = _run(
        _amtool(),
        "config",
        "routes",
        "test",
        f"--config.file={ALERTMANAGER_CONFIG}",
        "--verify.receivers",
        receiver,
        *labels,
    )
    _assert_ok(result)


# ---- every alert is complete, documented and tested -----------------------------------------------


def test_the_rules_file_defines_the_expected_alerts() -> None:
    expected = {
        "OODForgettingDetected",
        "ForgettingPredicted",
        "OODForgettingWhileSpecializing",
        "ResponseDiversityCollapse",
        "EntropyCollapse",
        "SelfDistillationCollapse",
        "ParameterDriftAccelerating",
        "DriftJobsFailing",
        "DriftJobsBacklog",
        "ForgetwatchDown",
        "ForgetwatchDatabaseDown",
        "RetentionSetDropped",
    }
    names = _alert_ids()
    assert expected <= set(names), f"missing alerts: {sorted(expected - set(names))}"
    assert len(names) == len(set(names)), f"duplicate alert names: {names}"


@pytest.mark.parametrize("alert", _alerts(), ids=_alert_ids())
def test_alert_has_severity_summary_description_and_runbook(alert: dict) -> None:
    assert alert.get("labels", {}).get("severity") in {"page", "ticket"}, (
        f"{alert['alert']}: labels.severity must be page or ticket"
    )
    annotations = alert.get("annotations", {})
    for key in ("summary", "description", "runbook"):
        assert annotations.get(key, "").strip(), f"{alert['alert']}: annotations.{key} is missing"
    assert annotations["runbook"].startswith("docs/runbook.md#"), (
        f"{alert['alert']}: runbook must point into docs/runbook.md, got {annotations['runbook']!r}"
    )


@pytest.mark.parametrize("alert", _alerts(), ids=_alert_ids())
def test_alert_runbook_anchor_exists_in_the_runbook(alert: dict) -> None:
    anchors = {
        _github_anchor(line.lstrip("#"))
        for line in RUNBOOK.read_text().splitlines()
        if re.match(r"#{1,6} ", line)
    }
    anchor = alert["annotations"]["runbook"].partition("#")[2]
    assert anchor in anchors, f"{alert['alert']}: no heading in {RUNBOOK.name} has anchor #{anchor}"


@pytest.mark.parametrize("alert", _alerts(), ids=_alert_ids())
def test_alert_has_a_firing_and_a_quiet_promtool_case(alert: dict) -> None:
    cases = [
        case
        for test in _rule_tests()
        for case in test.get("alert_rule_test", [])
        if case["alertname"] == alert["alert"]
    ]
    assert any(case.get("exp_alerts") for case in cases), (
        f"{alert['alert']}: no promtool case in {RULE_TESTS.name} expects it to fire"
    )
    assert any(not case.get("exp_alerts") for case in cases), (
        f"{alert['alert']}: no promtool case in {RULE_TESTS.name} expects it to stay quiet"
    )
