"""Settings are bounded, and an invalid one is reported by its environment variable, with what it
accepts, before anything starts."""

from __future__ import annotations

import pytest

from service.cli import main
from service.settings import Settings, SettingsError


@pytest.mark.parametrize(("variable", "value", "expected"), [
    ("FORGETWATCH_WORKER_CONCURRENCY", "0", "greater than or equal to 1"),
    ("FORGETWATCH_FORGETTING_RELATIVE_DROP", "1.5", "less than 1"),
    ("FORGETWATCH_PORT", "70000", "less than or equal to 65535"),
    ("FORGETWATCH_TOKEN_CACHE_SECONDS", "-1", "greater than or equal to 0"),
    ("FORGETWATCH_MAX_SAMPLES_PER_REQUEST", "many", "valid integer"),
])
def test_an_invalid_setting_names_its_variable_and_its_bound(monkeypatch: pytest.MonkeyPatch, variable: str,
                                                             value: str, expected: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as raised:
        Settings.from_environment()
    assert f"{variable}={value}" in str(raised.value)
    assert expected in str(raised.value)


def test_every_invalid_setting_is_reported_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORGETWATCH_SPECTRAL_K", "0")
    monkeypatch.setenv("FORGETWATCH_WORKER_NICE", "40")
    with pytest.raises(SettingsError) as raised:
        Settings.from_environment()
    assert "FORGETWATCH_SPECTRAL_K=0" in str(raised.value) and "FORGETWATCH_WORKER_NICE=40" in str(raised.value)


def test_the_cli_stops_with_the_variable_instead_of_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORGETWATCH_STALLED_AFTER_SECONDS", "0")
    with pytest.raises(SystemExit, match="FORGETWATCH_STALLED_AFTER_SECONDS=0: Input should be greater than 0"):
        main(["migrate"])


def test_the_defaults_are_valid() -> None:
    assert Settings.from_environment().token_cache_seconds == 5.0


def test_an_installed_calibration_brings_its_forecast_model_and_an_old_one_is_refused(tmp_path) -> None:
    import json

    from service.settings import SHIPPED_CALIBRATION, forecast_model_in

    shipped = json.loads(SHIPPED_CALIBRATION.read_text())
    model = {**shipped["forecast_model"], "intercept": -3.0}
    (tmp_path / "alarm_threshold.json").write_text(json.dumps(
        {"installed": True, "alarm_probability": 0.4, "forecast_model": model}))
    installed = Settings(data_dir=tmp_path)
    assert installed.forecast_alarm_probability == 0.4 and installed.forecast_model.intercept == -3.0
    assert Settings(data_dir=tmp_path / "none").forecast_model == forecast_model_in(SHIPPED_CALIBRATION)
    old = tmp_path / "old"
    old.mkdir()
    (old / "alarm_threshold.json").write_text(json.dumps({"installed": True, "alarm_probability": 0.2}))
    with pytest.raises(ValueError, match="holds no forecast model; run `forgetwatch calibrate` again"):
        Settings(data_dir=old)
