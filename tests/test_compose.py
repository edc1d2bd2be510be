"""compose/: checked statically (no container can be pulled or built here), then run as processes.

The Compose file parses; every fileproc service's command is a real
``fileproc`` command with real options (parsed by the click CLI itself); every
``FILEPROC_*`` variable is a real setting and the settings load (with the
example ``.env``); every queue a pipeline uses has a worker service; ports,
hosts and volumes agree between the services that talk to each other. The
last test starts the services' own commands and environments as processes,
on a real S3 server (versitygw standing in for MinIO), Redis and PostgreSQL.
"""

from __future__ import annotations

import io
import os
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import httpx
import pytest
import redis
import yaml
from minio import Minio
from PIL import Image
from sqlalchemy import create_engine, text

from fileproc.app import build
from fileproc.cli import cli
from fileproc.config import load_settings, setting_names
from tests.helpers import image_bytes
from tests.procs import Process, wait_for, wait_healthy
from tests.servers import free_port, versitygw_server

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
        service_now = build(settings)  # the functions and every step's params check out
        if command.command.name == "worker":
            assert set(command.params["queues"].split(",")) <= set(service_now.queues()), name
    # Every queue a pipeline uses is taken by some worker service.
    taken = set()
    for service in fileproc_services(compose).values():
        _, command = parse(entrypoint() + service["command"])
        if command.command.name == "worker":
            taken |= set(command.params["queues"].split(","))
    settings = load_settings(COMPOSE / "fileproc.toml", env={"FILEPROC_DATA_DIR": str(tmp_path)})
    used = build(settings)
    assert taken == {used.queue_for(step) for pipeline in used.pipelines.values() for step in pipeline.steps}


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
    # The broker asks for a password, the one the services hold (README: What a function can reach).
    redis_command = [interpolate(str(arg), example_env()) for arg in services["redis"]["command"]]
    assert broker.password == example_env()["REDIS_PASSWORD"] == redis_command[redis_command.index("--requirepass") + 1]
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


# -- the same topology, as processes ---------------------------------------------------------


def local_env(service: dict[str, Any], *, gw: str, secret: str, redis_url: str, postgres_url: str,
              data_dir: Path) -> dict[str, str]:
    """The service's environment from the Compose file, its hosts pointed at the servers of this test."""
    env = container_env(service)
    assert (env["FILEPROC_STORAGE_ENDPOINT"], env["FILEPROC_BROKER_URL"]) == (
        "minio:9000", f"redis://:{example_env()['REDIS_PASSWORD']}@redis:6379/0")
    assert urlsplit(env["FILEPROC_DATABASE_URL"]).hostname == "postgres"
    return {**env, "FILEPROC_STORAGE_ENDPOINT": gw, "FILEPROC_STORAGE_ACCESS_KEY": "fileproc-test",
            "FILEPROC_STORAGE_SECRET_KEY": secret, "FILEPROC_BROKER_URL": redis_url,
            "FILEPROC_DATABASE_URL": postgres_url, "FILEPROC_DATA_DIR": str(data_dir)}


def local_argv(service: dict[str, Any], port: int) -> list[str]:
    """The service's command, with its config file on this side of the mount and the API on ``port``."""
    args = [str(config_file(service)) if arg == "/etc/fileproc/fileproc.toml" else arg for arg in service["command"]]
    if "--port" in args:
        args[args.index("--port") + 1] = str(port)
        args[args.index("--host") + 1] = "127.0.0.1"
    return args


@pytest.mark.services
def test_the_topology_runs_as_processes_from_the_same_settings(
        compose: dict[str, Any], tmp_path: Path, redis_url: str, postgres_url: str) -> None:
    redis.Redis.from_url(redis_url).flushall()
    database = f"fileproc_compose_{os.getpid()}"
    with create_engine(postgres_url, isolation_level="AUTOCOMMIT").connect() as admin:
        admin.execute(text(f"DROP DATABASE IF EXISTS {database}"))
        admin.execute(text(f"CREATE DATABASE {database}"))
    database_url = postgres_url.rsplit("/", 1)[0] + "/" + database
    services = fileproc_services(compose)
    api_port, gw_port, secret = free_port(), free_port(), "compose-secret-" + os.urandom(4).hex()
    started: dict[str, Process] = {}

    def start(name: str) -> Process:
        env = local_env(services[name], gw=f"127.0.0.1:{gw_port}", secret=secret, redis_url=redis_url,
                        postgres_url=database_url, data_dir=tmp_path / name)
        started[name] = Process(None, local_argv(services[name], api_port), tmp_path / f"{name}.log", env=env)
        return started[name]

    try:
        wait_healthy(api_port, start("api"))
        token = container_env(services["api"])["FILEPROC_API_WEBHOOK_TOKEN"]
        # versitygw stands in for MinIO (no MinIO binary here); it sends keys as they are and cannot
        # set a header, so the token goes in the URL (the main README's versitygw line).
        webhook = f"http://127.0.0.1:{api_port}/events?token={token}&keys=raw"
        with versitygw_server(webhook, port=gw_port, secret_key=secret) as gw:
            store = Minio(gw.endpoint, gw.access_key, gw.secret_key, secure=False)
            for bucket in ("uploads", "derived"):  # what minio-setup does
                store.make_bucket(bucket)
            workers = [name for name, svc in services.items() if parse(entrypoint() + svc["command"])[1]
                       .command.name in ("worker", "reconcile")]
            for name in workers:
                start(name)

            small = image_bytes(300, 200)
            noise = io.BytesIO()
            Image.frombytes("RGB", (700, 700), os.urandom(700 * 700 * 3)).save(noise, "PNG")  # over 1 MB
            store.put_object("uploads", "trip/small.jpg", io.BytesIO(small), len(small), content_type="image/jpeg")
            store.put_object("uploads", "trip/big.png", io.BytesIO(noise.getvalue()), len(noise.getvalue()),
                             content_type="image/png")

            def finished() -> list[dict[str, Any]] | None:
                answer = httpx.get(f"http://127.0.0.1:{api_port}/jobs", timeout=10, headers={
                    "Authorization": "Bearer " + container_env(services["api"])["FILEPROC_API_ADMIN_TOKEN"]})
                found = answer.json()
                done = len(found) == 3 and all(j["status"] in ("succeeded", "failed") for j in found)
                return found if done else None

            found = wait_for(finished, 90, "3 finished jobs", started["worker-previews"])
            assert {(j["pipeline"], j["key"], j["status"]) for j in found} == {
                ("thumbnails", "trip/small.jpg", "succeeded"), ("thumbnails", "trip/big.png", "succeeded"),
                ("previews", "trip/big.png", "succeeded")}, found
            # Each queue's steps ran on its own worker service.
            ran_on = {j["pipeline"]: {a["worker"].split("@")[0] for a in j["attempts"]} for j in found}
            assert ran_on["previews"] == {f"fileproc-{started['worker-previews'].popen.pid}"}
            assert ran_on["thumbnails"] == {f"fileproc-{started['worker-thumbnail'].popen.pid}"}
            (made,) = next(j for j in found if j["pipeline"] == "previews")["outputs"]
            assert made["key"].startswith("previews/trip/big.png/thumb-2048.")
            preview = store.get_object(made["bucket"], made["key"])
            try:
                assert Image.open(io.BytesIO(preview.read())).size == (700, 700)  # never upscaled
            finally:
                preview.close()
            for name, process in started.items():
                assert process.alive(), f"{name} exited:\n{process.tail()}"
            for name in workers:
                started.pop(name).stop()
    finally:
        for process in started.values():
            process.stop()
