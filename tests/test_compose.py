"""compose/: checked statically (no container can be pulled or built here).

The Compose file parses; every fileproc service's command is a real
``fileproc`` command with real options (parsed by the click CLI itself); every
``FILEPROC_*`` variable is a real setting and the settings load (with the
example ``.env``); every queue a pipeline uses has a worker service; ports,
hosts and volumes agree between the services that talk to each other.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import yaml

from fileproc.cli import cli
from fileproc.config import load_settings, setting_names
from fileproc.service import Service

ROOT = Path(__file__).parent.parent
COMPOSE = ROOT / "compose"


def example_env() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in (COMPOSE / ".env.example").read_text().splitlines()
             if line.strip() and not line.startswith("#"))
    return {name.strip(): value.strip() for name, value in pairs}


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}`` (``$$`` is a literal ``$``)."""
    def one(found: re.Match[str]) -> str:
        name, kind, rest = found.group(1), found.group(2), found.group(3)
        if name in env and (env[name] or kind != ":-"):
            return env[name]
        if kind in (":-", "-"):
            return rest or ""
        raise AssertionError(f"${{{name}}} is not set in compose/.env.example")

    return re.sub(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}", one, value.replace("$$", "\0")).replace("\0", "$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())


def entrypoint() -> list[str]:
    (line,) = [line for line in (COMPOSE / "Dockerfile").read_text().splitlines() if line.startswith("ENTRYPOINT")]
    return yaml.safe_load(line.removeprefix("ENTRYPOINT"))


def fileproc_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose["services"].items()
            if svc.get("build", {}).get("dockerfile") == "compose/Dockerfile"}


def parse(argv: list[str]) -> tuple[click.Context, click.Context]:
    """The CLI's own parse of ``argv`` (the group's context, the command's); raises on anything unknown."""
    assert argv[0] == "fileproc"
    group = cli.make_context("fileproc", argv[1:])
    rest = [*getattr(group, "_protected_args", []), *group.args]
    command = cli.get_command(group, rest[0])
    assert command is not None, f"no command fileproc {rest[0]}"
    return group, command.make_context(rest[0], rest[1:], parent=group)


def config_file(service: dict[str, Any]) -> Path:
    """The file on this side of the bind mount that the service's ``--config`` names."""
    group, _ = parse(entrypoint() + service["command"])
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in service["volumes"]}
    assert str(group.params["config"]) in mounts, "its --config file is not mounted"
    return COMPOSE / mounts[str(group.params["config"])]


def container_env(service: dict[str, Any]) -> dict[str, str]:
    return {name: interpolate(str(value), example_env()) for name, value in service.get("environment", {}).items()}


def test_the_topology_has_a_store_broker_database_api_and_a_worker_per_queue(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"minio", "redis", "postgres", "api", "reconcile"} <= set(services)
    commands = {name: parse(entrypoint() + svc["command"])[1] for name, svc in fileproc_services(compose).items()}
    assert commands["api"].command.name == "api" and commands["reconcile"].command.name == "reconcile"
    workers = {name: ctx.params["queues"] for name, ctx in commands.items() if ctx.command.name == "worker"}
    assert len(workers) >= 2 and len(set(workers.values())) == len(workers), workers


def test_every_command_is_a_real_fileproc_command_with_real_options(compose: dict[str, Any]) -> None:
    assert entrypoint() == ["fileproc"]
    script = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "fileproc" in script
    for name, service in fileproc_services(compose).items():
        assert config_file(service).is_file(), name
    with pytest.raises(click.UsageError):  # the check itself catches a wrong option
        parse(["fileproc", "worker", "--queue", "thumbnail"])


def test_every_fileproc_variable_is_a_real_setting_and_the_settings_load(compose: dict[str, Any],
                                                                         tmp_path: Path) -> None:
    known = {env for _, env, _ in setting_names()} | {"FILEPROC_CONFIG"}
    for name, service in fileproc_services(compose).items():
        env = container_env(service)
        unknown = sorted(var for var in env if var.startswith("FILEPROC_") and var not in known)
        assert not unknown, f"{name}: not settings: {unknown}"
        _, command = parse(entrypoint() + service["command"])
        settings = load_settings(config_file(service), env={**env, "FILEPROC_DATA_DIR": str(tmp_path)})
        assert settings.storage.backend == "s3" and not settings.embedded_broker
        assert settings.database_url.startswith("postgresql+psycopg://")
        service_now = Service(settings)  # the functions and every step's params check out
        if command.command.name == "worker":
            assert set(command.params["queues"].split(",")) <= set(service_now.queues()), name
    # Every queue a pipeline uses is taken by some worker service.
    taken = set()
    for service in fileproc_services(compose).values():
        _, command = parse(entrypoint() + service["command"])
        if command.command.name == "worker":
            taken |= set(command.params["queues"].split(","))
    settings = load_settings(COMPOSE / "fileproc.toml", env={"FILEPROC_DATA_DIR": str(tmp_path)})
    assert taken == set(Service(settings).queues())


def test_ports_and_hosts_agree(compose: dict[str, Any]) -> None:
    services = compose["services"]
    api = services["api"]
    _, command = parse(entrypoint() + api["command"])
    port = command.params["port"]
    assert command.params["host"] == "0.0.0.0"  # reachable from the other containers
    assert any(mapping.split(":")[-1] == str(port) for mapping in api["ports"])
    assert f"127.0.0.1:{port}/healthz" in " ".join(api["healthcheck"]["test"])

    store = services["minio"]["environment"]
    webhook = urlsplit(store["MINIO_NOTIFY_WEBHOOK_ENDPOINT_FILEPROC"])
    assert (webhook.hostname, webhook.port, webhook.path) == ("api", port, "/events")
    # The store sends the token the API expects.
    assert store["MINIO_NOTIFY_WEBHOOK_AUTH_TOKEN_FILEPROC"] == api["environment"]["FILEPROC_API_WEBHOOK_TOKEN"]
    setup = " ".join(services["minio-setup"]["command"])
    assert "arn:minio:sqs::FILEPROC:webhook" in setup and "store/uploads" in setup

    env = container_env(api)
    host, _, s3_port = env["FILEPROC_STORAGE_ENDPOINT"].partition(":")
    assert host == "minio" and any(m.split(":")[-1] == s3_port for m in services["minio"]["ports"])
    minio_env = container_env(services["minio"])
    assert (env["FILEPROC_STORAGE_ACCESS_KEY"], env["FILEPROC_STORAGE_SECRET_KEY"]) == (
        minio_env["MINIO_ROOT_USER"], minio_env["MINIO_ROOT_PASSWORD"])
    broker = urlsplit(env["FILEPROC_BROKER_URL"])
    assert broker.hostname == "redis" and broker.port == 6379
    assert "6379" not in str(services["redis"].get("ports", []))  # the broker is not published
    database = urlsplit(env["FILEPROC_DATABASE_URL"])
    postgres = services["postgres"]["environment"]
    assert (database.hostname, database.port, database.username, database.path) == (
        "postgres", 5432, postgres["POSTGRES_USER"], "/" + postgres["POSTGRES_DB"])
    assert database.password == example_env()["POSTGRES_PASSWORD"]
    for name in ("redis", "postgres", "minio"):
        assert api["depends_on"][name]["condition"] == "service_healthy" and "healthcheck" in services[name]


def test_volumes_agree(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    used: dict[str, list[str]] = {}
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith((".", "/")):
                assert (COMPOSE / source).exists(), f"{name}: bind mount {source} does not exist"
            else:
                used.setdefault(source, []).append(name)
            assert target.startswith("/")
    assert set(used) == declared, "every named volume declared, and every declared one used"
    assert all(len(services) == 1 for services in used.values()), used
    # data_dir (scratch of running steps) is never on a volume: a worker removes scratch
    # folders whose process it cannot see, and containers do not see each other's.
    for name, service in fileproc_services(compose).items():
        data_dir = container_env(service)["FILEPROC_DATA_DIR"]
        targets = [volume.split(":")[1] for volume in service["volumes"]]
        assert not any(data_dir.startswith(target) for target in targets), name


def test_the_dockerfile_installs_ffmpeg_and_copies_what_exists() -> None:
    text = (COMPOSE / "Dockerfile").read_text()
    assert re.search(r"apt-get install .*\bffmpeg\b", text)
    for line in text.splitlines():
        if line.startswith("COPY"):
            for source in shlex.split(line)[1:-1]:
                assert (ROOT / source).exists(), source
    assert "'.[postgres]'" in text  # the state database of the topology is PostgreSQL


def test_the_readme_says_how_to_start_and_scale() -> None:
    readme = (COMPOSE / "README.md").read_text()
    assert "docker compose up" in readme and "--scale worker-thumbnail=" in readme
    assert "cp .env.example .env" in readme
