"""The Helm chart: lint, render, validate the objects, and check what they promise.

Tools: helm from ``.tools/helm/helm`` (scripts/install-deploy-tools.sh puts it
there), kubernetes-validate and check-jsonschema from the dev extra, promtool
from Debian's prometheus package. The Prometheus Operator schemas come from
``../shared/schemas`` beside the repository. A missing tool fails the test.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from tools import helm, promtool, tool

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "helm" / "buddy-exporter"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
INVALID_VALUES = sorted((CHART / "ci-invalid").glob("*.yaml"))
SCHEMAS = REPO.parent / "shared" / "schemas"
KUBE_VERSION = "1.30.0"
CORE_KINDS = {"Deployment", "StatefulSet", "Service", "ServiceAccount", "ConfigMap", "Secret"}
WORKLOAD_KINDS = {"Deployment", "StatefulSet"}


def schema(name: str) -> Path:
    path = SCHEMAS / name
    if not path.is_file():
        pytest.fail(
            f"Prometheus Operator schema {path} is missing (shared/ must sit beside the repo)"
        )
    return path


def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, **kwargs)


@functools.cache
def _render(values_files: tuple[str, ...], sets: tuple[str, ...]) -> str:
    argv = [helm(), "template", "rel", str(CHART), "--namespace", "obs",
            "--kube-version", KUBE_VERSION, "--api-versions", "monitoring.coreos.com/v1"]  # fmt: skip
    for f in values_files:
        argv += ["-f", f]
    for s in sets:
        argv += ["--set", s]
    result = run(argv)
    assert result.returncode == 0, result.stderr
    return result.stdout


def render(*values_files: Path, sets: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    text = _render(tuple(str(f) for f in values_files), sets)
    return [doc for doc in yaml.safe_load_all(text) if doc]


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = of_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def workload(docs: list[dict[str, Any]]) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] in WORKLOAD_KINDS]
    assert len(found) == 1, [d["kind"] for d in found]
    return found[0]


def exporter_container(doc: dict[str, Any]) -> dict[str, Any]:
    containers = doc["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "exporter")


def exporter_config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    cm = next(d for d in of_kind(docs, "ConfigMap") if "config.yaml" in d["data"])
    return yaml.safe_load(cm["data"]["config.yaml"])


def values_id(path: Path) -> str:
    return path.name.removesuffix(".yaml")


ALL_VALUES = [CHART / "values.yaml", *CI_VALUES]


def test_ci_values_cover_the_required_cases() -> None:
    names = {p.name for p in CI_VALUES}
    assert {"default-values.yaml", "existing-secret-values.yaml", "sharded-values.yaml",
            "all-enabled-values.yaml"} <= names  # fmt: skip
    assert INVALID_VALUES, "bad-values fixtures live in ci-invalid/"


def test_chart_yaml_is_v2_with_quoted_app_version_matching_the_package() -> None:
    text = (CHART / "Chart.yaml").read_text(encoding="utf-8")
    chart = yaml.safe_load(text)
    assert chart["apiVersion"] == "v2"
    assert any(line.startswith('appVersion: "') for line in text.splitlines()), "quote appVersion"
    from exporter import __version__

    assert chart["appVersion"] == __version__


@pytest.mark.parametrize("values", ALL_VALUES, ids=values_id)
def test_helm_lint_strict(values: Path) -> None:
    result = run([helm(), "lint", "--strict", str(CHART), "-f", str(values),
                  ])  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("values", ALL_VALUES, ids=values_id)
def test_core_objects_pass_kubernetes_validate_strict(values: Path, tmp_path: Path) -> None:
    docs = [d for d in render(values) if d["kind"] in CORE_KINDS]
    assert {"ConfigMap", "Service"} <= {d["kind"] for d in docs}
    files = []
    for i, doc in enumerate(docs):
        path = tmp_path / f"{i:02d}-{doc['kind']}.yaml"
        path.write_text(yaml.safe_dump(doc), encoding="utf-8")
        files.append(str(path))
    result = run([tool("kubernetes-validate"), "-k", KUBE_VERSION, "--strict", *files])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") + result.stderr.count("passed") == len(files)


def test_kubernetes_validate_rejects_an_unknown_field(tmp_path: Path) -> None:
    doc = workload(render(CHART / "values.yaml"))
    doc["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFilesystem"] = True  # misplaced
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    result = run([tool("kubernetes-validate"), "-k", KUBE_VERSION, "--strict", str(path)])
    assert result.returncode != 0, result.stdout


OPERATOR_SCHEMAS = {
    "ServiceMonitor": "servicemonitor-v1.json",
    "PrometheusRule": "prometheusrule-v1.json",
}


@pytest.mark.parametrize("values", ALL_VALUES, ids=values_id)
def test_operator_objects_pass_their_schemas(values: Path, tmp_path: Path) -> None:
    docs = render(values)
    settings = yaml.safe_load(values.read_text(encoding="utf-8")) or {}
    expected = {"ServiceMonitor": settings.get("serviceMonitor", {}).get("enabled", False),
                "PrometheusRule": settings.get("prometheusRule", {}).get("enabled", False)}  # fmt: skip
    for kind, schema_file in OPERATOR_SCHEMAS.items():
        found = of_kind(docs, kind)
        assert len(found) == (1 if expected[kind] else 0), kind
        for i, doc in enumerate(found):
            path = tmp_path / f"{kind}-{i}.yaml"
            path.write_text(yaml.safe_dump(doc), encoding="utf-8")
            result = run(
                [tool("check-jsonschema"), "--schemafile", str(schema(schema_file)), str(path)]
            )
            assert result.returncode == 0, result.stdout + result.stderr


def test_operator_schema_rejects_a_broken_service_monitor(tmp_path: Path) -> None:
    doc = one(render(CHART / "ci" / "all-enabled-values.yaml"), "ServiceMonitor")
    doc["spec"]["endpoints"][0]["honorLabels"] = "yes"
    path = tmp_path / "sm.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    result = run([tool("check-jsonschema"), "--schemafile",
                  str(schema("servicemonitor-v1.json")), str(path)])  # fmt: skip
    assert result.returncode == 1, result.stdout


@pytest.mark.parametrize("bad", INVALID_VALUES, ids=values_id)
def test_schema_rejects_bad_values(bad: Path) -> None:
    text = bad.read_text(encoding="utf-8")
    expect = next(line.split(":", 1)[1].strip() for line in text.splitlines()
                  if line.startswith("# expect:"))  # fmt: skip
    for argv in (["template", "rel", str(CHART)], ["lint", "--strict", str(CHART)]):
        result = run([helm(), *argv, "-f", str(bad), "--kube-version", KUBE_VERSION])
        assert result.returncode != 0, f"{bad.name} was accepted by helm {argv[0]}"
        assert expect in result.stdout + result.stderr, result.stdout + result.stderr


def test_default_is_one_deployment_with_secure_pods() -> None:
    docs = render(CHART / "values.yaml")
    assert not of_kind(docs, "StatefulSet")
    deploy = one(docs, "Deployment")
    assert deploy["spec"]["replicas"] == 1


@pytest.mark.parametrize("values", ALL_VALUES, ids=values_id)
def test_pod_security_and_resources(values: Path) -> None:
    docs = render(values)
    pod = workload(docs)["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert isinstance(pod["securityContext"]["runAsUser"], int)
    assert pod["securityContext"]["runAsUser"] == 10001
    c = exporter_container(workload(docs))
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert "add" not in sc["capabilities"]
    assert c["resources"]["requests"]["memory"] and c["resources"]["limits"]["memory"]
    assert c["resources"]["requests"]["cpu"]
    for sa in of_kind(docs, "ServiceAccount"):
        assert sa["automountServiceAccountToken"] is False
    # A read-only root filesystem still leaves a writable /tmp.
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    tmp = next(v for v in pod["volumes"] if v["name"] == mounts["/tmp"]["name"])
    assert "emptyDir" in tmp


@pytest.mark.parametrize("values", ALL_VALUES, ids=values_id)
def test_probes_and_ports(values: Path) -> None:
    docs = render(values)
    c = exporter_container(workload(docs))
    port_names = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["port"] in port_names
    service = one(docs, "Service")
    (sport,) = service["spec"]["ports"]
    assert sport["targetPort"] in port_names
    listen = next(a for a in c["args"] if a.startswith("--web.listen-address="))
    assert listen.endswith(f":{port_names[sport['targetPort']]}")


def test_default_port_is_the_exporters() -> None:
    from exporter.config import DEFAULT_PORT

    docs = render(CHART / "values.yaml")
    (port,) = exporter_container(workload(docs))["ports"]
    assert port["containerPort"] == DEFAULT_PORT


@pytest.mark.parametrize("values", ALL_VALUES, ids=values_id)
def test_config_map_and_token_wiring(values: Path) -> None:
    docs = render(values)
    settings = yaml.safe_load(values.read_text(encoding="utf-8")) or {}
    defaults = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    token = {**defaults["token"], **settings.get("token", {})}
    pod = workload(docs)["spec"]["template"]["spec"]
    c = exporter_container(workload(docs))
    config = exporter_config(docs)

    # The config file named on the command line is the ConfigMap's config.yaml.
    config_arg = next(a for a in c["args"] if a.startswith("--config.file="))
    config_path = Path(config_arg.split("=", 1)[1])
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == str(config_path.parent))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    cm = next(
        d
        for d in of_kind(docs, "ConfigMap")
        if d["metadata"]["name"] == volume["configMap"]["name"]
    )
    assert config_path.name in cm["data"]

    # buddy.token_file points into the mounted Secret, at the configured key.
    token_file = Path(config["buddy"]["token_file"])
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == str(token_file.parent))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["items"] == [{"key": token["key"], "path": token_file.name}]
    secrets = of_kind(docs, "Secret")
    if token["existingSecret"]:
        assert not secrets
        assert volume["secret"]["secretName"] == token["existingSecret"]
    elif token["value"]:
        (secret,) = secrets
        assert volume["secret"]["secretName"] == secret["metadata"]["name"]
        assert base64.b64decode(secret["data"][token["key"]]).decode() == token["value"].strip()
    else:
        # No token given: no Secret; the pods wait for the one NOTES.txt tells to create.
        assert not secrets
        assert volume["secret"]["secretName"] == "rel-buddy-exporter"

    # The token itself is nowhere but in the Secret.
    if token["value"]:
        for doc in docs:
            if doc["kind"] != "Secret":
                assert token["value"].strip() not in json.dumps(doc), doc["kind"]
    assert "token" not in {k for k in config["buddy"] if k != "token_file"}
    assert not [e for e in c.get("env", []) if e["name"] == "BUDDY_TOKEN"]

    # The user's targets arrive unchanged.
    expected_targets = settings.get("config", {}).get("targets", defaults["config"]["targets"])
    assert config["targets"] == expected_targets


def test_existing_secret_creates_no_secret() -> None:
    docs = render(CHART / "ci" / "existing-secret-values.yaml")
    assert not of_kind(docs, "Secret")
    volumes = workload(docs)["spec"]["template"]["spec"]["volumes"]
    assert {"secretName": "buddy-api-token", "defaultMode": 0o440,
            "items": [{"key": "api-token", "path": "token"}]} in [v.get("secret") for v in volumes]  # fmt: skip


def test_sharded_is_a_statefulset_passing_the_ordinal_as_shard() -> None:
    docs = render(CHART / "ci" / "sharded-values.yaml")
    assert not of_kind(docs, "Deployment")
    sts = one(docs, "StatefulSet")
    assert sts["spec"]["replicas"] == 3
    service = one(docs, "Service")
    assert sts["spec"]["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None"
    env = {e["name"]: e for e in exporter_container(sts)["env"]}
    assert env["BUDDY_EXPORTER_SHARDING__SHARD"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.labels['apps.kubernetes.io/pod-index']"}
    }
    assert exporter_config(docs)["sharding"] == {"total_shards": 3}
    # The chart's own Deployment-only knob does not leak into the StatefulSet.
    assert "sharding" not in exporter_config(render(CHART / "values.yaml"))


def test_config_checksum_rolls_pods_only_when_the_config_changes() -> None:
    def checksum(*sets: str) -> str:
        doc = workload(render(CHART / "values.yaml", sets=sets))
        return str(doc["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    base = checksum()
    assert len(base) == 64
    assert checksum() == base
    assert checksum("config.poll.interval_seconds=30") != base
    assert checksum("shards=2") != base
    assert checksum("podLabels.team=ci") == base


def test_service_monitor_scrapes_the_service_with_job_buddy_exporter() -> None:
    docs = render(CHART / "ci" / "all-enabled-values.yaml")
    sm = one(docs, "ServiceMonitor")
    service = one(docs, "Service")
    selector = sm["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"]["matchNames"] == [service["metadata"]["namespace"]]
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert endpoint["path"] == "/metrics"
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    # The alert rules select job=~".*buddy-exporter.*": the job label comes from the Service.
    assert service["metadata"]["labels"][sm["spec"]["jobLabel"]] == "buddy-exporter"


def test_chart_copies_of_rules_and_dashboard_are_identical() -> None:
    for name in ("alerts.yaml", "dashboard.json"):
        assert (CHART / "files" / name).read_bytes() == (REPO / "monitoring" / name).read_bytes(), (
            f"helm/buddy-exporter/files/{name} differs from monitoring/{name}: copy it over"
        )


def test_prometheus_rule_renders_the_alerts_file() -> None:
    docs = render(CHART / "values.yaml", sets=("prometheusRule.enabled=true",))
    rule = one(docs, "PrometheusRule")
    alerts = yaml.safe_load((REPO / "monitoring" / "alerts.yaml").read_text(encoding="utf-8"))
    assert rule["spec"] == alerts


def test_prometheus_rule_adds_extra_labels_to_every_rule() -> None:
    docs = render(CHART / "ci" / "all-enabled-values.yaml")
    rule = one(docs, "PrometheusRule")
    alerts = yaml.safe_load((REPO / "monitoring" / "alerts.yaml").read_text(encoding="utf-8"))
    rendered = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    original = [r for g in alerts["groups"] for r in g["rules"]]
    assert [r["alert"] for r in rendered] == [r["alert"] for r in original]
    for got, want in zip(rendered, original, strict=True):
        assert got["labels"] == {**want.get("labels", {}), "team": "ci"}
        assert got["expr"] == want["expr"] and got["annotations"] == want["annotations"]


@pytest.mark.parametrize("values", [CHART / "values.yaml", CHART / "ci" / "all-enabled-values.yaml"],
                         ids=values_id)  # fmt: skip
def test_rendered_prometheus_rule_spec_passes_promtool(values: Path, tmp_path: Path) -> None:
    docs = render(values, sets=("prometheusRule.enabled=true",))
    spec = one(docs, "PrometheusRule")["spec"]
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    result = run([promtool(), "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr
    n_rules = sum(len(g["rules"]) for g in spec["groups"])
    assert f"SUCCESS: {n_rules} rules found" in result.stdout


def test_dashboard_config_map_for_the_grafana_sidecar() -> None:
    docs = render(CHART / "values.yaml")
    cm = next(d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard"))
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    (name,) = cm["data"]
    assert name.endswith(".json")
    dashboard = json.loads((REPO / "monitoring" / "dashboard.json").read_text(encoding="utf-8"))
    assert json.loads(cm["data"][name]) == dashboard
    assert not [d for d in render(CHART / "values.yaml", sets=("dashboard.enabled=false",))
                if d["metadata"]["name"].endswith("-dashboard")]  # fmt: skip


def test_operator_objects_are_off_by_default() -> None:
    kinds = {d["kind"] for d in render(CHART / "values.yaml")}
    assert not kinds & {"ServiceMonitor", "PrometheusRule"}


def test_notes_tell_how_to_create_the_missing_secret() -> None:
    argv = [helm(), "install", "rel", str(CHART), "--dry-run=client", "--namespace", "obs"]
    result = run(argv)
    assert result.returncode == 0, result.stderr
    assert (
        "kubectl -n obs create secret generic rel-buddy-exporter --from-literal=token="
        in result.stdout
    )
    result = run([*argv, "--set", "token.value=x"])
    assert result.returncode == 0, result.stderr
    assert "create secret" not in result.stdout


@pytest.mark.parametrize("values", ALL_VALUES, ids=values_id)
def test_the_exporter_accepts_the_rendered_config_and_args(values: Path, tmp_path: Path) -> None:
    # Run the real exporter with the pod's arguments, environment and config.yaml; only
    # host paths (token file, CA file) and the listen port are swapped for local ones.
    import socket
    import time
    import urllib.request

    import trustme

    docs = render(values)
    container = exporter_container(workload(docs))
    config = exporter_config(docs)
    token_file = tmp_path / "token"
    token_file.write_text("rendered-config-token\n", encoding="utf-8")
    config["buddy"]["token_file"] = str(token_file)
    if "ca_file" in config["buddy"]:
        ca_file = tmp_path / "ca.pem"
        trustme.CA().cert_pem.write_to_path(str(ca_file))
        config["buddy"]["ca_file"] = str(ca_file)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = []
    for arg in container["args"]:
        if arg.startswith("--config.file="):
            arg = f"--config.file={config_file}"
        elif arg.startswith("--web.listen-address="):
            arg = f"--web.listen-address=127.0.0.1:{port}"
        args.append(arg)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUDDY_")}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        elif var["valueFrom"]["fieldRef"]["fieldPath"].endswith("['apps.kubernetes.io/pod-index']"):
            env[var["name"]] = "1"  # what the second pod of the StatefulSet gets
    log = tmp_path / "exporter.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "exporter", *args],
                                stdout=out, stderr=subprocess.STDOUT, env=env)  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        healthy = False
        while time.monotonic() < deadline and proc.poll() is None and not healthy:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    healthy = r.status == 200
            except OSError:
                time.sleep(0.2)
        assert healthy, f"exit code {proc.poll()}:\n{log.read_text(errors='replace')[-3000:]}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
