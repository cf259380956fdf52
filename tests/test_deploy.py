"""The deployment files stay in step with the code and with each other, read as an operator would:
every DAGGER_ADAPTER_* setting they use is a configuration field that loads, the worker's grace
period outlasts its drain, the broker's consumer timeout is the one the workers are told, the
engine socket is where the official Dagger chart puts it, the pods are locked down, and autoscaling
watches the queue the workers consume. (Schema validation by third-party validators is in
tests/test_validators.py.)"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from consumer.config import ENV_PREFIX, load_config, topology_for

ROOT = Path(__file__).parent.parent
DEPLOY = ROOT / "deploy"
KUBE = DEPLOY / "kubernetes"
# What `helm install dagger oci://registry.dagger.io/dagger-helm` shares on every node (the chart's
# engine-daemonset.yaml: hostPath /var/run/dagger-<fullname>, mounted in the engine at /var/run/dagger).
CHART_RUN_DIRECTORY = "/var/run/dagger-dagger"
ENGINE_SOCKET_NAME = "engine.sock"


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _adapter_settings(env: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in env.items() if k.startswith(ENV_PREFIX)}


def _interpolate(value: str) -> str:
    """Compose's ${VAR:?message} as `docker compose` would fill it in with a password given."""
    return re.sub(r"\$\{[A-Z_]+:\?[^}]*\}", "a-password", value)


def _kustomized() -> dict[tuple[str, str], dict[str, Any]]:
    kustomization = yaml.safe_load((KUBE / "kustomization.yaml").read_text())
    docs: dict[tuple[str, str], dict[str, Any]] = {}
    for resource in kustomization["resources"]:
        for doc in _documents(KUBE / resource):
            docs[(doc["kind"], doc["metadata"]["name"])] = doc
    return docs


def _worker_config(docs: dict[tuple[str, str], dict[str, Any]]) -> Any:
    settings = {**docs[("ConfigMap", "dagger-adapter")]["data"], **docs[("Secret", "dagger-adapter")]["stringData"]}
    return load_config(env=_adapter_settings(settings)), settings


def _broker_conf_ms() -> int:
    conf = (DEPLOY / "rabbitmq" / "rabbitmq.conf").read_text()
    (line,) = [ln for ln in conf.splitlines() if ln.startswith("consumer_timeout")]
    return int(line.split("=")[1])


# --- compose --------------------------------------------------------------------------------------


def test_compose_settings_are_valid_configuration() -> None:
    (compose,) = _documents(DEPLOY / "compose" / "compose.yaml")
    worker = compose["services"]["worker"]
    settings = {k: _interpolate(v) for k, v in _adapter_settings(worker["environment"]).items()}
    config = load_config(env=settings)
    assert config.amqp_url.startswith("amqp://") and config.valkey_url
    assert config.timeout_seconds <= config.broker_consumer_timeout_seconds
    grace = int(worker["stop_grace_period"].rstrip("s"))
    assert grace > config.drain_timeout_seconds
    assert worker["command"] == ["worker"]


def test_compose_exposes_nothing_beyond_the_host_and_no_guest_account() -> None:
    (compose,) = _documents(DEPLOY / "compose" / "compose.yaml")
    services = compose["services"]
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"
    rabbit = services["rabbitmq"]["environment"]
    assert rabbit["RABBITMQ_DEFAULT_USER"] != "guest" and "${" in rabbit["RABBITMQ_DEFAULT_PASS"]
    settings = [
        ln for ln in (DEPLOY / "compose" / "compose.yaml").read_text().splitlines() if not ln.strip().startswith("#")
    ]
    assert not [ln for ln in settings if "guest" in ln]


def test_every_long_running_compose_service_has_a_health_check() -> None:
    (compose,) = _documents(DEPLOY / "compose" / "compose.yaml")
    services = compose["services"]
    for name, service in services.items():
        check = service.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        if name == "topology":  # a one-shot; workers wait for it to complete successfully
            assert check == {"disable": True}
            continue
        assert check["test"][0] == "CMD" and check.get("timeout"), name
        for dependency, condition in service.get("depends_on", {}).items():
            want = "service_completed_successfully" if dependency == "topology" else "service_healthy"
            assert condition == {"condition": want}, (name, dependency)
    assert services["dagger-engine"]["healthcheck"]["test"] == ["CMD", "dagger", "core", "version"]


def test_the_broker_consumer_timeout_matches_what_the_workers_are_told() -> None:
    (compose,) = _documents(DEPLOY / "compose" / "compose.yaml")
    told = float(compose["services"]["worker"]["environment"]["DAGGER_ADAPTER_BROKER_CONSUMER_TIMEOUT_SECONDS"])
    assert _broker_conf_ms() == told * 1000
    docs = _kustomized()
    config, _ = _worker_config(docs)
    policy = docs[("Policy", "dagger-tasks-consumer-timeout")]["spec"]
    assert policy["definition"]["consumer-timeout"] == config.broker_consumer_timeout_seconds * 1000 == told * 1000
    assert re.fullmatch(policy["pattern"], topology_for(config).tasks_queue)
    # Long enough for the longest execution and a drain after it.
    assert config.broker_consumer_timeout_seconds >= config.timeout_seconds + config.drain_timeout_seconds


def test_the_engine_version_is_the_sdks() -> None:
    (compose,) = _documents(DEPLOY / "compose" / "compose.yaml")
    image = compose["services"]["dagger-engine"]["image"]
    (dockerfile_version,) = re.findall(r"^ARG DAGGER_VERSION=(\S+)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert image == f"registry.dagger.io/engine:v{dockerfile_version}"


# --- Kubernetes -----------------------------------------------------------------------------------


def test_kubernetes_settings_are_valid_configuration() -> None:
    docs = _kustomized()
    config, _ = _worker_config(docs)
    assert config.timeout_seconds <= config.broker_consumer_timeout_seconds
    pod = docs[("Deployment", "dagger-adapter-worker")]["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > config.drain_timeout_seconds
    worker = pod["containers"][0]
    assert worker["args"] == ["worker"]
    assert config.health_file
    assert worker["livenessProbe"]["exec"]["command"] == ["dagger-adapter", "health"]
    assert worker["readinessProbe"]["exec"]["command"] == ["dagger-adapter", "health", "--ready"]


def test_workers_reach_the_engine_the_official_chart_runs_on_their_node() -> None:
    docs = _kustomized()
    _, settings = _worker_config(docs)
    pod = docs[("Deployment", "dagger-adapter-worker")]["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if "hostPath" in v]
    assert volume["hostPath"] == {"path": CHART_RUN_DIRECTORY, "type": "Directory"}
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume["name"]]
    runner = settings["_EXPERIMENTAL_DAGGER_RUNNER_HOST"]
    assert runner == f"unix://{mount['mountPath']}/{ENGINE_SOCKET_NAME}"
    # The socket is group-accessible only: the worker joins a group (the chart's engine group, 1001).
    assert pod["securityContext"]["supplementalGroups"]


def test_worker_pods_are_locked_down_with_room_for_their_probes() -> None:
    docs = _kustomized()
    config, _ = _worker_config(docs)
    (user,) = re.findall(r"^USER (\d+):(\d+)$", (ROOT / "Dockerfile").read_text(), re.M)
    for kind, name in (("Deployment", "dagger-adapter-worker"), ("Job", "dagger-adapter-topology")):
        pod = docs[(kind, name)]["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert (str(pod["securityContext"]["runAsUser"]), str(pod["securityContext"]["runAsGroup"])) == user
        assert pod["serviceAccountName"] == "dagger-adapter" and pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert container["resources"]["requests"]["memory"] and container["resources"]["limits"]["memory"]
    assert ("ServiceAccount", "dagger-adapter") in docs

    worker = docs[("Deployment", "dagger-adapter-worker")]["spec"]["template"]["spec"]["containers"][0]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert worker[probe]["timeoutSeconds"] >= 5, f"{probe}: `health` takes up to 0.5 s on a busy node"
    # The read-only root: the health file, HOME and the cache directory are on writable volumes.
    writable = {m["mountPath"] for m in worker["volumeMounts"] if not m.get("readOnly")}
    assert str(Path(config.health_file).parent.parent) in writable  # /tmp
    (cache,) = re.findall(r"DAGGER_ADAPTER_CACHE_DIRECTORY=(\S+)", (ROOT / "Dockerfile").read_text())
    assert "/home/adapter" in writable and cache in writable


def test_disruptions_and_autoscaling_target_the_workers_on_the_tasks_queue() -> None:
    docs = _kustomized()
    config, _ = _worker_config(docs)
    deployment = docs[("Deployment", "dagger-adapter-worker")]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    pdb = docs[("PodDisruptionBudget", "dagger-adapter-worker")]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items() and pdb["maxUnavailable"] == 1

    scaled = docs[("ScaledObject", "dagger-adapter-worker")]["spec"]
    assert scaled["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "rabbitmq" and trigger["metadata"]["mode"] == "QueueLength"
    assert trigger["metadata"]["queueName"] == topology_for(config).tasks_queue
    auth = docs[("TriggerAuthentication", trigger["authenticationRef"]["name"])]["spec"]["secretTargetRef"]
    assert auth == [{"parameter": "host", "name": "dagger-adapter", "key": "DAGGER_ADAPTER_AMQP_URL"}]

    (hpa,) = _documents(KUBE / "autoscaling-hpa.yaml")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["external"]["metric"]["selector"]["matchLabels"]["queue"] == topology_for(config).tasks_queue
    kustomization = (KUBE / "kustomization.yaml").read_text()
    assert "- autoscaling-keda.yaml" in kustomization and "- autoscaling-hpa.yaml" not in kustomization


def test_the_topology_job_can_be_applied_again_with_a_new_image() -> None:
    job = _kustomized()[("Job", "dagger-adapter-topology")]
    # Gone once finished, so the next `kubectl apply -k` creates it anew (a Job's template is immutable).
    assert job["spec"]["ttlSecondsAfterFinished"] == 0
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["topology", "declare"]
    kustomization = yaml.safe_load((KUBE / "kustomization.yaml").read_text())
    assert {"name": "dagger-adapter", "newName": "dagger-adapter", "newTag": "0.1.0"} in kustomization["images"]
