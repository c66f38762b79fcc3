"""The deployment files, checked without a Docker engine."""

import re
from pathlib import Path

import yaml

from service.cli import build_parser
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_every_service_has_an_image_or_build_and_a_healthcheck_where_it_serves() -> None:
    services = _compose()["services"]
    assert {"postgres", "migrate", "api", "worker", "prometheus", "alertmanager", "grafana"} <= set(services)
    for name, service in services.items():
        assert "image" in service or "build" in service, name
    for name in ("postgres", "api", "prometheus", "alertmanager", "grafana"):
        assert services[name]["healthcheck"]["test"], name


def test_dependencies_wait_for_health_or_completion() -> None:
    services = _compose()["services"]
    allowed = {"service_healthy", "service_completed_successfully", "service_started"}
    for name, service in services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services, (name, dependency)
            assert condition["condition"] in allowed
    assert services["api"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_forgetwatch_commands_are_cli_commands() -> None:
    parser = build_parser()
    for service in _compose()["services"].values():
        if service.get("image", "").startswith("forgetwatch") or "build" in service:
            parser.parse_args(service["command"])  # exits on an unknown command or flag
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["forgetwatch"]' in dockerfile
    assert "forgetwatch = \"service.cli:main\"" in (ROOT / "pyproject.toml").read_text()


def test_environment_names_are_settings_fields() -> None:
    fields = {f"FORGETWATCH_{name.upper()}" for name in Settings.model_fields}
    names = set(re.findall(r"^(FORGETWATCH_[A-Z_]+)=", (ROOT / ".env.example").read_text(), re.MULTILINE))
    for service in _compose()["services"].values():
        names |= {k for k in service.get("environment", {}) if k.startswith("FORGETWATCH_")}
    grafana_only = {"FORGETWATCH_GRAFANA_DB_USER", "FORGETWATCH_GRAFANA_DB_PASSWORD"}
    assert names - grafana_only <= fields, names - grafana_only - fields


def test_mounted_config_files_exist() -> None:
    for service in _compose()["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source


def test_volumes_are_declared() -> None:
    compose = _compose()
    declared = set(compose["volumes"])
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, source


def test_ports_are_published_on_the_hosts_loopback_only() -> None:
    for name, service in _compose()["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)


def test_the_api_protects_pages_and_docs_and_opens_metrics_to_the_compose_network_only() -> None:
    api = _compose()["services"]["api"]
    assert "0.0.0.0" in api["command"]  # so pages and /docs need a token (Settings.on_loopback)
    environment = api.get("environment", {})
    assert "FORGETWATCH_PUBLIC_PAGES" not in environment and "FORGETWATCH_PUBLIC_DOCS" not in environment
    assert environment["FORGETWATCH_PROTECT_METRICS"] == "false"


def test_containers_run_as_an_unprivileged_user() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", dockerfile, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert dockerfile.rindex("USER") < dockerfile.index("ENTRYPOINT")


def test_grafana_reads_through_its_own_role_not_the_owner() -> None:
    env = dict(re.findall(r"^([A-Z_]+)=(.*)$", (ROOT / ".env.example").read_text(), re.MULTILINE))
    assert env["FORGETWATCH_GRAFANA_DB_USER"] != env["POSTGRES_USER"]
    postgres = _compose()["services"]["postgres"]
    assert "./deploy/postgres-init:/docker-entrypoint-initdb.d:ro" in postgres["volumes"]
