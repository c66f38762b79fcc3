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
