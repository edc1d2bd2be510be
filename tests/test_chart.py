"""charts/fileproc: checked statically, as compose/ is (no cluster runs here).

For the default values and each set in tests/chart_values/: ``helm lint``
passes; ``helm template`` renders manifests that the Kubernetes schemas
accept (offline, with the ``kubernetes-validate`` package, strict: no unknown
field), for the oldest Kubernetes the chart supports and the newest the
package knows; each KEDA ScaledObject holds only the fields KEDA documents
and points at a rendered worker Deployment, scaling on that worker's own
queues; the processes are the ones compose runs (real ``fileproc`` commands
and options, real settings, a worker for every queue, a grace period longer
than the longest step a worker may be running); and every pod runs as
nobody in particular, on a read-only root filesystem, with no capability.

``helm`` comes from $FILEPROC_HELM (``.ci/helm.sh`` builds it) or PATH;
without it these tests skip on a developer machine and fail under CI.
"""

from __future__ import annotations

import base64
import os
import subprocess
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import click
import kubernetes_validate
import pytest
import redis
import yaml
from sqlalchemy.engine import make_url

from fileproc.app import build
from fileproc.cli import cli
from fileproc.config import load_settings, setting_names
from tests.servers import require

ROOT = Path(__file__).parent.parent
CHART = ROOT / "charts" / "fileproc"
VALUE_SETS = {"default": None, **{path.stem: path for path in sorted((ROOT / "tests" / "chart_values").glob("*.yaml"))}}
KUBERNETES_VERSIONS = ["1.25.0", kubernetes_validate.utils.latest_version()]
"""The oldest Kubernetes the chart supports (Chart.yaml's kubeVersion) and the newest the package knows."""

CONFIG_PATH = "/etc/fileproc/fileproc.toml"
KEDA_KINDS = {"ScaledObject", "TriggerAuthentication"}


# --- KEDA's documented fields (keda.sh/docs: ScaledObject specification, Redis Lists, Prometheus) ----

SCALED_OBJECT_SPEC = {"scaleTargetRef", "pollingInterval", "cooldownPeriod", "initialCooldownPeriod",
                      "idleReplicaCount", "minReplicaCount", "maxReplicaCount", "fallback", "advanced", "triggers"}
SCALE_TARGET_REF = {"apiVersion", "kind", "name", "envSourceContainerName"}
TRIGGER_FIELDS = {"type", "metadata", "name", "useCachedMetrics", "authenticationRef", "metricType"}
TRIGGER_METADATA = {
    # type: (required keys, optional keys); every metadata value is a string.
    "redis": ({"listName"}, {"address", "host", "port", "addressFromEnv", "hostFromEnv", "portFromEnv",
                             "usernameFromEnv", "passwordFromEnv", "listLength", "activationListLength",
                             "enableTLS", "unsafeSsl", "databaseIndex"}),
    "prometheus": ({"serverAddress", "query", "threshold"},
                   {"activationThreshold", "namespace", "customHeaders", "ignoreNullValues", "queryParameters",
                    "unsafeSsl", "timeout", "authModes"}),
}
TRIGGER_AUTH_PARAMETERS = {"redis": {"address", "host", "port", "username", "password", "tls", "ca", "cert", "key",
                                     "keyPassword"}}


# --- rendering --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def helm() -> str:
    return require("helm", os.environ.get("FILEPROC_HELM"))


def run_helm(helm: str, *args: str) -> str:
    result = subprocess.run([helm, *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def value_args(values: Path | None) -> list[str]:
    return ["--values", str(values)] if values else []


@cache
def rendered(helm: str, name: str) -> tuple[dict[str, Any], ...]:
    """``helm template`` of the chart with the value set ``name``: its manifests."""
    text = run_helm(helm, "template", "fp", str(CHART), "--namespace", "files", *value_args(VALUE_SETS[name]))
    return tuple(doc for doc in yaml.safe_load_all(text) if doc)


def of_kind(manifests: tuple[dict[str, Any], ...], kind: str) -> dict[str, dict[str, Any]]:
    return {m["metadata"]["name"]: m for m in manifests if m["kind"] == kind}


def containers(manifests: tuple[dict[str, Any], ...]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(Deployment, its fileproc container) for every Deployment rendered."""
    for deployment in of_kind(manifests, "Deployment").values():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        yield deployment, container


def command(container: dict[str, Any]) -> tuple[click.Context, click.Context]:
    """The CLI's own parse of the container's command (the image's ENTRYPOINT is ``fileproc``)."""
    group = cli.make_context("fileproc", list(container["args"]))
    rest = [*getattr(group, "_protected_args", []), *group.args]
    found = cli.get_command(group, rest[0])
    assert found is not None, f"no command fileproc {rest[0]}"
    return group, found.make_context(rest[0], rest[1:], parent=group)


def secret_data(manifests: tuple[dict[str, Any], ...]) -> dict[str, str] | None:
    """The chart's Secret, decoded (None with secrets.existingSecret)."""
    secrets = list(of_kind(manifests, "Secret").values())
    if not secrets:
        return None
    (secret,) = secrets
    return {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}


EXISTING_SECRET = {"broker-url": "redis://:pw@redis:6379/0", "database-url": "postgresql+psycopg://u:pw@db/fileproc"}
"""What a Secret made outside the chart holds, where the value's shape matters to the settings."""


def container_env(manifests: tuple[dict[str, Any], ...], container: dict[str, Any]) -> dict[str, str]:
    """The container's environment, its Secret references resolved (placeholders for an existing Secret)."""
    data = secret_data(manifests)
    env = {}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
            continue
        ref = item["valueFrom"]["secretKeyRef"]
        if data is None:
            env[item["name"]] = EXISTING_SECRET.get(ref["key"], f"value of {ref['key']}")
        elif ref["key"] in data:
            env[item["name"]] = data[ref["key"]]
        else:
            assert ref.get("optional"), f"{item['name']}: key {ref['key']} is not in the Secret"
    return env


def config_text(manifests: tuple[dict[str, Any], ...]) -> str:
    (config_map,) = of_kind(manifests, "ConfigMap").values()
    return str(config_map["data"]["fileproc.toml"])


@pytest.fixture(params=sorted(VALUE_SETS))
def manifests(request: pytest.FixtureRequest, helm: str) -> tuple[dict[str, Any], ...]:
    return rendered(helm, request.param)


# --- helm lint, and Kubernetes's own schemas --------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_helm_lint_passes(helm: str, name: str) -> None:
    run_helm(helm, "lint", "--strict", str(CHART), *value_args(VALUE_SETS[name]))


def test_every_manifest_is_valid_against_the_kubernetes_schemas(manifests: tuple[dict[str, Any], ...]) -> None:
    kinds = {m["kind"] for m in manifests}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap"} <= kinds
    for manifest in manifests:
        if manifest["kind"] in KEDA_KINDS:
            assert manifest["apiVersion"] == "keda.sh/v1alpha1"
            continue  # not Kubernetes's: checked against KEDA's documentation below
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(manifest, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                raise AssertionError(f"{manifest['kind']} {manifest['metadata']['name']} on Kubernetes "
                                     f"{version}: {exc.message} at {list(exc.path)}") from None


def test_the_validation_itself_catches_a_wrong_field(helm: str) -> None:
    deployment = dict(next(iter(of_kind(rendered(helm, "default"), "Deployment").values())))
    deployment["spec"] = {**deployment["spec"], "replica": 2}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


# --- KEDA ---------------------------------------------------------------------------------------------


def test_each_scaled_object_has_kedas_documented_fields_and_scales_its_workers_queues(
        manifests: tuple[dict[str, Any], ...]) -> None:
    deployments = of_kind(manifests, "Deployment")
    auths = of_kind(manifests, "TriggerAuthentication")
    scaled = of_kind(manifests, "ScaledObject")
    assert scaled, "no ScaledObject rendered"
    for name, obj in scaled.items():
        assert obj["apiVersion"] == "keda.sh/v1alpha1" and set(obj) <= {"apiVersion", "kind", "metadata", "spec"}
        spec = obj["spec"]
        assert set(spec) <= SCALED_OBJECT_SPEC, f"{name}: not KEDA's: {set(spec) - SCALED_OBJECT_SPEC}"
        target = spec["scaleTargetRef"]
        assert set(target) <= SCALE_TARGET_REF and target.get("kind", "Deployment") == "Deployment"
        assert target.get("apiVersion", "apps/v1") == "apps/v1"
        assert target["name"] in deployments, f"{name} scales {target['name']}, which is not rendered"
        deployment = deployments[target["name"]]
        assert "replicas" not in deployment["spec"], "KEDA sets the replicas: the Deployment must not"
        for field in ("pollingInterval", "cooldownPeriod", "minReplicaCount", "maxReplicaCount"):
            assert isinstance(spec[field], int) and spec[field] >= 0, (name, field)
        assert spec["minReplicaCount"] == 0  # an idle queue has no worker (every value set here)
        assert spec["maxReplicaCount"] >= max(1, spec["minReplicaCount"])

        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        _, worker = command(container)
        assert worker.command.name == "worker"
        queues = worker.params["queues"].split(",")
        watched = []
        assert spec["triggers"], name
        for trigger in spec["triggers"]:
            assert set(trigger) <= TRIGGER_FIELDS, f"{name}: not KEDA's: {set(trigger) - TRIGGER_FIELDS}"
            required, optional = TRIGGER_METADATA[trigger["type"]]
            metadata = trigger["metadata"]
            assert required <= set(metadata), f"{name}: {trigger['type']} needs {required - set(metadata)}"
            assert set(metadata) <= required | optional, f"{name}: unknown {set(metadata) - required - optional}"
            assert all(isinstance(value, str) for value in metadata.values()), f"{name}: metadata values are strings"
            if trigger["type"] == "redis":
                watched.append(metadata["listName"])  # kombu's list for a queue is named after it
                host, _, port = metadata["address"].rpartition(":")
                assert host and port.isdigit() and int(metadata["listLength"]) > 0
            else:
                assert float(metadata["threshold"]) > 0
                (queue,) = [q for q in queues if f'queue="{q}"' in metadata["query"]]
                assert "fileproc_queue_depth" in metadata["query"]
                watched.append(queue)
            if "authenticationRef" in trigger:
                ref = trigger["authenticationRef"]["name"]
                if trigger["type"] == "redis":  # the chart's own: it must exist and name redis parameters
                    assert ref in auths, f"{name}: TriggerAuthentication {ref} is not rendered"
                    params = {t["parameter"] for t in auths[ref]["spec"]["secretTargetRef"]}
                    assert params <= TRIGGER_AUTH_PARAMETERS["redis"] and "password" in params
        assert sorted(watched) == sorted(queues), f"{name} scales on {watched}, its workers take {queues}"


def test_the_redis_scaler_reads_the_broker_the_workers_use(helm: str) -> None:
    for name in VALUE_SETS:
        manifests = rendered(helm, name)
        data = secret_data(manifests)
        for obj in of_kind(manifests, "ScaledObject").values():
            for trigger in obj["spec"]["triggers"]:
                if trigger["type"] != "redis" or data is None:
                    continue
                broker = redis.connection.parse_url(data["broker-url"])
                metadata = trigger["metadata"]
                assert metadata["address"] == f"{broker['host']}:{broker['port']}", name
                assert int(metadata["databaseIndex"]) == broker.get("db", 0), name
                assert (metadata["enableTLS"] == "true") == data["broker-url"].startswith("rediss://"), name
                if data["redis-password"]:
                    assert broker["password"] == data["redis-password"], name
                    assert "authenticationRef" in trigger, name


# --- the processes: the ones compose runs -------------------------------------------------------------


def test_the_processes_are_the_api_a_worker_per_queue_and_the_reconciler(manifests: tuple[dict[str, Any], ...],
                                                                         tmp_path: Path) -> None:
    known = {env for _, env, _ in setting_names()}
    config = tmp_path / "fileproc.toml"
    config.write_text(config_text(manifests))
    by_command: dict[str, list[tuple[dict[str, Any], click.Context]]] = {}
    for deployment, container in containers(manifests):
        group, parsed = command(container)
        assert str(group.params["config"]) == CONFIG_PATH
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert mounts[str(Path(CONFIG_PATH).parent)] == "config"
        by_command.setdefault(parsed.command.name, []).append((deployment, parsed))
        env = container_env(manifests, container)
        unknown = sorted(name for name in env if name.startswith("FILEPROC_") and name not in known)
        assert not unknown, f"{deployment['metadata']['name']}: not settings: {unknown}"
        settings = load_settings(config, env={**env, "FILEPROC_DATA_DIR": str(tmp_path / "data")})
        assert settings.storage.backend == "s3" and not settings.embedded_broker
        assert settings.database_url.startswith("postgresql+psycopg://")
        assert settings.api.webhook_token.get_secret_value() != settings.api.admin_token.get_secret_value()
    assert set(by_command) == {"api", "worker", "reconcile"}, set(by_command)

    (api_deployment, api), = by_command["api"]
    assert api.params["host"] == "0.0.0.0"
    (api_container,) = api_deployment["spec"]["template"]["spec"]["containers"]
    assert api_container["ports"][0]["containerPort"] == api.params["port"]
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert api_container[probe]["httpGet"]["path"] == "/healthz", probe

    # Every queue a pipeline uses is taken by some worker, and a worker gets at least the longest
    # timeout of the steps on its queues to finish them when told to stop.
    settings = load_settings(config, env={"FILEPROC_DATA_DIR": str(tmp_path / "data")})
    service = build(settings)
    timeouts: dict[str, float] = {}
    for pipeline in service.pipelines.values():
        for step in pipeline.steps:
            queue = service.queue_for(step)
            timeout = step.timeout or service.functions.spec(step).timeout
            timeouts[queue] = max(timeouts.get(queue, 0), timeout)
    taken: set[str] = set()
    for deployment, worker in by_command["worker"]:
        # No --queues: every function's queue (and deployed functions' too, known only at run time).
        queues = set(worker.params["queues"].split(",")) if worker.params["queues"] else set(service.queues())
        assert queues <= set(service.queues()), f"{deployment['metadata']['name']}: no pipeline uses {queues}"
        taken |= queues
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        longest = max(timeouts.get(q, 0) for q in queues)
        assert grace > longest, f"{deployment['metadata']['name']}: {grace} s of grace, steps of up to {longest} s"
    assert set(timeouts) <= taken, f"queues without a worker: {set(timeouts) - taken}"


def test_every_pod_runs_unprivileged_and_writes_only_its_own_folders(manifests: tuple[dict[str, Any], ...]) -> None:
    for deployment, container in containers(manifests):
        pod = deployment["spec"]["template"]["spec"]
        name = deployment["metadata"]["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0, name
        assert pod["automountServiceAccountToken"] is False, name
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False, name
        assert security["capabilities"]["drop"] == ["ALL"] and not security["capabilities"].get("add"), name
        volumes = {v["name"]: v for v in pod["volumes"]}
        writable = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"] if not m.get("readOnly")}
        assert set(writable) == {"/tmp", "/var/lib/fileproc/data"}, name
        assert all("emptyDir" in volume for volume in writable.values()), f"{name}: data_dir is never shared"
        env = {item["name"]: item.get("value") for item in container["env"]}
        assert env["FILEPROC_DATA_DIR"] == "/var/lib/fileproc/data"
        assert container["resources"]["requests"], name
        assert "securityContext" in pod and container["image"].count(":") >= 1


def test_credentials_are_in_a_secret_and_survive_odd_characters(helm: str) -> None:
    manifests = rendered(helm, "production")
    values = yaml.safe_load(VALUE_SETS["production"].read_text())  # type: ignore[union-attr]
    data = secret_data(manifests)
    assert data is not None
    broker = redis.connection.parse_url(data["broker-url"])
    assert (broker["username"], broker["password"]) == (values["redis"]["username"], values["redis"]["password"])
    assert broker["db"] == values["redis"]["database"]
    database = make_url(data["database-url"])
    assert (database.username, database.password) == ("fileproc", values["database"]["password"])
    assert (data["storage-access-key"], data["storage-secret-key"]) == (
        values["storage"]["accessKey"], values["storage"]["secretKey"])
    assert (data["webhook-token"], data["admin-token"]) == (values["tokens"]["webhook"], values["tokens"]["admin"])
    # No credential is in a ConfigMap or a plain environment value.
    plain = config_text(manifests) + str([c["env"] for _, c in containers(manifests)])
    for secret in (values["redis"]["password"], values["database"]["password"], values["storage"]["secretKey"],
                   values["tokens"]["admin"], values["tokens"]["webhook"]):
        assert secret not in plain


def test_generated_tokens_differ_and_an_existing_secret_replaces_the_charts(helm: str) -> None:
    data = secret_data(rendered(helm, "default"))
    assert data is not None and len(data["webhook-token"]) >= 32 and data["webhook-token"] != data["admin-token"]
    manifests = rendered(helm, "prometheus-existing-secret")
    assert secret_data(manifests) is None
    refs = {item["valueFrom"]["secretKeyRef"]["name"] for _, c in containers(manifests)
            for item in c["env"] if "valueFrom" in item}
    assert refs == {"fileproc-credentials"}


def test_a_wrong_value_stops_the_render_with_the_reason(helm: str, tmp_path: Path) -> None:
    cases = {
        "keda:\n  scaler: rabbitmq\n": "keda.scaler is \"rabbitmq\"",
        "workers:\n  - name: Big_Images\n    queues: [thumbnail]\n": "must be lower-case",
        "workers:\n  - name: all\n": "must list them",
    }
    for text, reason in cases.items():
        values = tmp_path / "bad.yaml"
        values.write_text(text)
        result = subprocess.run([helm, "template", "fp", str(CHART), "--values", str(values)],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode != 0 and reason in result.stderr, (text, result.stderr)


def test_the_chart_names_the_compose_queues_by_default(helm: str) -> None:
    compose = yaml.safe_load((ROOT / "compose" / "docker-compose.yml").read_text())
    compose_queues = {svc["command"][svc["command"].index("--queues") + 1]
                      for svc in compose["services"].values() if "--queues" in svc.get("command", [])}
    chart_queues = {command(c)[1].params["queues"] for _, c in containers(rendered(helm, "default"))
                    if command(c)[1].command.name == "worker"}
    assert chart_queues == compose_queues
    assert tomllib.loads(config_text(rendered(helm, "default"))) == tomllib.loads(
        (ROOT / "compose" / "fileproc.toml").read_text())
