"""deploy/: the compose stack and the Kubernetes manifests, validated against their schemas and
against what the code says (metric names, search attributes, ports, probes, secrets).

No Docker engine runs here: `docker compose config` validates the compose file where the compose
plugin is installed, the compose-spec JSON schema (check-jsonschema's copy) everywhere.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from vecmigrate.model.search import ALL as SEARCH_ATTRIBUTES
from vecmigrate.telemetry import names

DEPLOY = Path(__file__).parent.parent / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
K8S = sorted((DEPLOY / "kubernetes").glob("*.yaml"))


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def manifests() -> list[tuple[str, dict[str, Any]]]:
    return [
        (path.name, doc)
        for path in K8S
        for doc in yaml.safe_load_all(path.read_text())
        if doc is not None
    ]


def _compose_plugin() -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    found = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30)
    return found.returncode == 0


@pytest.mark.integration
def test_the_compose_file_is_valid() -> None:
    if _compose_plugin():
        done = subprocess.run(
            ["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    else:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "check_jsonschema",
                "--builtin-schema",
                "vendor.compose-spec",
                str(COMPOSE),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_compose_stack_is_wired_together() -> None:
    services = compose()["services"]
    for name, service in services.items():
        for needed in service.get("depends_on") or {}:
            assert needed in services, f"{name} depends on unknown service {needed}"
        for volume in service.get("volumes") or []:
            source = str(volume).split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"
    images = {name: str(s.get("image", "")) for name, s in services.items()}
    # Current Temporal images: the server, with its schema set up by admin-tools; no auto-setup.
    assert images["temporal"].startswith("temporalio/server:")
    assert images["temporal-schema"].startswith("temporalio/admin-tools:")
    assert not any("auto-setup" in i for i in images.values())
    # Workers for the default queue and each region's; the gateway; the observability stack.
    commands = {name: s.get("command") for name, s in services.items()}
    assert commands["worker-us"][:3] == ["worker", "--region", "us"]
    assert commands["worker-eu"][:3] == ["worker", "--region", "eu"]
    assert commands["gateway"][0] == "serve"
    assert {"otel-collector", "jaeger", "prometheus", "grafana"} <= set(services)
    # Prometheus scrapes what the processes serve.
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {
        job["job_name"]: t
        for job in scrape["scrape_configs"]
        for group in job["static_configs"]
        for t in [group["targets"]]
    }
    port = services["worker"]["environment"]["OTEL_EXPORTER_PROMETHEUS_PORT"]
    assert targets["vecmigrate-worker"] == [
        f"{w}:{port}" for w in ("worker", "worker-us", "worker-eu")
    ]
    gateway_port = services["gateway"]["command"][-1]
    assert targets["vecmigrate-gateway"] == [f"gateway:{gateway_port}"]
    for target in (t for ts in targets.values() for t in ts):
        assert target.split(":")[0] in services, target
    # Traces go to the collector, the collector to Jaeger.
    assert (
        services["worker"]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"]
        == "http://otel-collector:4317"
    )
    collector = yaml.safe_load((DEPLOY / "otel" / "collector.yaml").read_text())
    assert collector["exporters"]["otlp/jaeger"]["endpoint"] == "jaeger:4317"


def test_the_setup_registers_exactly_the_search_attributes_migrations_use() -> None:
    script = (DEPLOY / "temporal" / "setup.sh").read_text()
    listed = re.findall(r"^\s+(Vecmigrate\w+)", script, re.M)
    assert listed == [a.name for a in SEARCH_ATTRIBUTES]
    assert "--type Keyword" in script
    assert {a.type for a in SEARCH_ATTRIBUTES} == {"Keyword"}


def test_the_dashboard_names_only_metrics_that_exist() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "vecmigrate.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] if p["type"] != "row" for t in p["targets"]]
    known = set()
    for d in names.ALL:
        known.add(d.prometheus)
        if d.kind == "histogram":
            known |= {d.prometheus + s for s in ("_bucket", "_sum", "_count")}
    used = {
        m
        for e in exprs
        for m in re.findall(
            r"\b([a-z_]+(?:_total|_seconds|_bytes|_bucket|_count|_sum|_per_second)?)\b(?=\s*[{\[)]|\s*==|\s*$)",
            e,
        )
        if m.startswith(("vecmigrate_", "http_server", names.TEMPORAL_PREFIX))
    }
    ours = {m for m in used if not m.startswith(names.TEMPORAL_PREFIX)}
    assert ours, exprs
    assert ours <= known, ours - known
    # The live migration view: progress, lag, gates and gateway latency are all there.
    for metric in (
        names.COPY_RATE,
        names.COPY_VECTORS,
        names.CHANGELOG_LAG,
        names.GATE_RECALL,
        names.GATE_OVERLAP,
        names.GATEWAY_DURATION,
        names.DATA_QUALITY,
        names.ROUTING_RAMP,
    ):
        assert any(metric.prometheus in e for e in exprs), metric.name
    # Provisioned where the compose file mounts it.
    grafana = compose()["services"]["grafana"]
    assert "./grafana/dashboards:/var/lib/grafana/dashboards:ro" in grafana["volumes"]
    provider = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "dashboards" / "vecmigrate.yaml").read_text()
    )
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


@pytest.mark.parametrize(
    ("name", "doc"), manifests(), ids=lambda v: v if isinstance(v, str) else v.get("kind")
)
def test_each_kubernetes_manifest_is_valid(name: str, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_the_kubernetes_deployments_are_production_ready() -> None:
    docs = manifests()
    deployments = [d for _, d in docs if d["kind"] == "Deployment"]
    assert {d["metadata"]["name"] for d in deployments} == {
        "vecmigrate-worker",
        "vecmigrate-worker-us",
        "vecmigrate-worker-eu",
        "vecmigrate-gateway",
    }
    for d in deployments:
        pod = d["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        declared = {v["name"]: v for v in pod["volumes"]}
        for c in pod["containers"]:
            where = f"{d['metadata']['name']}/{c['name']}"
            assert c["readinessProbe"]["httpGet"]["path"] in ("/readyz", "/health"), where
            assert c["livenessProbe"]["httpGet"]["path"] in ("/healthz", "/health"), where
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]), where
            # Secrets are mounted files, never values in the manifest or the environment.
            for env in c.get("env", []):
                assert "value" not in env or "://" not in str(env["value"]), where
                assert "secretKeyRef" not in str(env.get("valueFrom", "")), where
            for mount in c["volumeMounts"]:
                assert mount["name"] in declared, where
        secret = [v for v in pod["volumes"] if "secret" in v]
        assert secret
        assert secret[0]["secret"]["secretName"] == "vecmigrate"
        # No SQLite on a network volume: the shared volume holds index artifacts only, and the
        # catalog comes from a PostgreSQL URL.
        shared = [v["name"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
        for c in pod["containers"]:
            for mount in c["volumeMounts"]:
                if mount["name"] in shared:
                    assert mount["mountPath"] == "/data/artifacts"
    config = next(d for _, d in docs if d["kind"] == "ConfigMap")["data"]
    assert config["VECMIGRATE_CATALOG_URL_FILE"].startswith("/var/run/secrets/")
    assert not any("://" in v and "@" in v for v in config.values())
    assert "sqlite" not in json.dumps([d for _, d in docs]).lower()
    worker = next(d for d in deployments if d["metadata"]["name"] == "vecmigrate-worker")
    port = worker["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]
    assert str(port) == config["OTEL_EXPORTER_PROMETHEUS_PORT"]


def test_kustomize_builds_from_files_that_exist() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (DEPLOY / resource).exists(), resource
    assert sorted(kustomization["resources"]) == sorted(f"kubernetes/{p.name}" for p in K8S)
    for generator in kustomization["configMapGenerator"]:
        for entry in generator["files"]:
            assert (DEPLOY / entry.split("=")[-1]).exists(), entry
    job = next(d for _, d in manifests() if d["kind"] == "Job")
    volume = job["spec"]["template"]["spec"]["volumes"][0]
    assert volume["configMap"]["name"] == kustomization["configMapGenerator"][0]["name"]


def test_the_observability_guide_lists_every_metric() -> None:
    guide = (DEPLOY.parent / "docs" / "observability.md").read_text()
    for d in names.ALL:
        assert f"`{d.prometheus}`" in guide, d.name
    for attribute in SEARCH_ATTRIBUTES:
        assert attribute.name in guide
