"""deploy/: the compose stack and the Kubernetes manifests, validated against their schemas and
against what the code says (metric names, search attributes, ports, probes, secrets, the CLI's
flags and the environment variables the code reads).

No Docker engine runs here: `docker compose config` validates the compose file where the compose
plugin is installed, the compose-spec JSON schema (check-jsonschema's copy) everywhere.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import opentelemetry.sdk.environment_variables as otel_env
import pytest
import yaml
from temporalio.envconfig import ClientConfigProfile

from vecmigrate.config import CATALOG_ENV
from vecmigrate.control.cli import parser
from vecmigrate.model.credentials import is_reference, secret_in_url
from vecmigrate.model.search import ALL as SEARCH_ATTRIBUTES
from vecmigrate.security.credentials import KEY_PREFIX
from vecmigrate.telemetry import names

ROOT = Path(__file__).parent.parent
DEPLOY = ROOT / "deploy"
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
    # The gateway's metrics on their own address (its API port asks for a credential).
    metrics_at = services["gateway"]["environment"]["VECMIGRATE_GATEWAY_METRICS"]
    assert targets["vecmigrate-gateway"] == [f"gateway:{metrics_at.rsplit(':', 1)[1]}"]
    assert parser().parse_args(services["gateway"]["command"]).port != int(
        metrics_at.rsplit(":", 1)[1]
    )
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
        "vecmigrate-codec-server",
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
            if d["metadata"]["name"] == "vecmigrate-gateway":
                # It loads its collections before its API listens: time for that, on /readyz.
                startup = c["startupProbe"]
                assert startup["httpGet"] == {"path": "/readyz", "port": "metrics"}, where
                assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, where
            # Secrets are mounted files, never values in the manifest or the environment.
            for env in c.get("env", []):
                assert "secretKeyRef" not in str(env.get("valueFrom", "")), where
            for mount in c["volumeMounts"]:
                assert mount["name"] in declared, where
        secret = [v for v in pod["volumes"] if "secret" in v]
        assert "vecmigrate" in {v["secret"]["secretName"] for v in secret}
        # No SQLite on a network volume: the shared volume holds index artifacts only, and the
        # catalog comes from a PostgreSQL URL.
        shared = [
            v["name"]
            for v in pod["volumes"]
            if v.get("persistentVolumeClaim", {}).get("claimName") == "vecmigrate-artifacts"
        ]
        for c in pod["containers"]:
            for mount in c["volumeMounts"]:
                if mount["name"] in shared:
                    assert mount["mountPath"] == "/data/artifacts"
    maps = {d["metadata"]["name"]: d["data"] for _, d in docs if d["kind"] == "ConfigMap"}
    config = maps["vecmigrate"]
    # The catalog's URL holds no password; the password, the key ring and the anchors are named.
    assert secret_in_url(config["VECMIGRATE_CATALOG_URL"]) is None
    assert "sslmode=verify-full" in config["VECMIGRATE_CATALOG_URL"]
    assert config["VECMIGRATE_CATALOG_PASSWORD"].startswith("file:/run/secrets/")
    assert config["VECMIGRATE_KEYRING"].startswith("file:/run/secrets/")
    assert config["VECMIGRATE_ANCHORS"] == "/anchors"
    # Temporal over mutual TLS, for the processes that connect to it.
    for name in ("SERVER_CA_CERT", "CLIENT_CERT", "CLIENT_KEY"):
        path = maps["vecmigrate-temporal-client"][f"TEMPORAL_TLS_{name}_PATH"]
        assert path.startswith("/"), name
    assert "sqlite" not in json.dumps([d for _, d in docs]).lower()
    by_name = {d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in deployments}
    for name, pod in by_name.items():
        args = parser().parse_args(pod["containers"][0]["args"])
        if args.command in ("serve", "codec-server"):
            assert args.tls_cert, name
            assert args.tls_key, name
            assert args.credentials, name
            probe = pod["containers"][0]["readinessProbe"]["httpGet"]
            assert probe["scheme"] == "HTTPS", name
        if args.command in ("worker", "serve"):
            # Workers and the gateway append to the ledger: the anchors' own volume.
            mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
            claims = {
                v["name"]: v["persistentVolumeClaim"]["claimName"]
                for v in pod["volumes"]
                if "persistentVolumeClaim" in v
            }
            assert claims[mounts[config["VECMIGRATE_ANCHORS"]]] == "vecmigrate-anchors", name
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


# What compose and the manifests hold must be checked against the code, not against a list kept
# here: the environment variables vecmigrate reads are its source's string literals (and the
# Temporal client's own, asked of temporalio.envconfig), its flags are its parser's.

ENV_NAME = re.compile(r"""["']((?:VECMIGRATE|TEMPORAL|OTEL)_[A-Z0-9_]+)["']""")
# A variable whose name says it holds a secret must hold a reference to it instead.
SECRET_NAME = re.compile(r"(?:^|_)(?:PASSWORD|PWD|PASS|API_KEY|TOKEN|SECRET|KEYRING)$")
URL = re.compile(r"[a-z][a-z0-9+.-]*://[^\s'\"]+")
SECRET_VALUE = re.compile(
    rf"-----BEGIN [A-Z ]*PRIVATE KEY-----|\b{KEY_PREFIX}[A-Za-z0-9_-]{{8,}}|"
    r"\$\{[A-Z_]*(?:PASSWORD|PWD|TOKEN|SECRET|API_KEY)[A-Z_]*:?-"
)


def code_env_names() -> set[str]:
    """The environment variables vecmigrate's own code reads (names as string literals)."""
    found = {CATALOG_ENV + "_FILE"}  # config.default_catalog_url derives it from CATALOG_ENV
    for folder in ("vecmigrate", "workers", "activities", "workflows"):
        for path in (ROOT / folder).rglob("*.py"):
            found |= set(ENV_NAME.findall(path.read_text()))
    return found


def temporal_client_reads(name: str) -> bool:
    """Whether the Temporal client configuration (envconfig) changes when ``name`` is set."""
    if not name.startswith("TEMPORAL_"):
        return False
    base = ClientConfigProfile.load(disable_file=True, override_env_vars={})
    given = ClientConfigProfile.load(disable_file=True, override_env_vars={name: "/x/y"})
    return given.to_dict() != base.to_dict()


def otel_sdk_reads(name: str) -> bool:
    """Whether ``name`` is one of the variables the OpenTelemetry SDK itself reads (a sampler,
    say: vecmigrate leaves them to the SDK)."""
    return name in {
        v for k, v in vars(otel_env).items() if k.startswith("OTEL_") and isinstance(v, str)
    }


def unknown_env(names_set: set[str]) -> set[str]:
    """The names in ``names_set`` no vecmigrate code, Temporal client or OpenTelemetry SDK
    reads."""
    known = code_env_names()
    return {
        n
        for n in names_set
        if n not in known and not temporal_client_reads(n) and not otel_sdk_reads(n)
    }


def strings(value: Any) -> Iterator[str]:
    """Every string in a parsed YAML document (keys included)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from strings(k)
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)


def secrets_in(value: Any) -> list[str]:
    """What in a document is a secret written out: a password-bearing URL, a private key, an
    API key, a password defaulted in an interpolation."""
    found = []
    for text in strings(value):
        for url in URL.findall(text):
            what = secret_in_url(url)
            if what is not None:
                found.append(f"{what}: {url.split('://')[0]}://...")
        if SECRET_VALUE.search(text):
            found.append(f"a secret value in {text[:40]!r}...")
    return found


def env_secrets(env: dict[str, Any]) -> list[str]:
    """Variables named as secrets that hold something other than a reference or a file path."""
    bad = []
    for name, value in env.items():
        text = str(value)
        if not SECRET_NAME.search(name) or text in ("true", "false"):
            continue
        if not is_reference(text):
            bad.append(name)
    return bad


def vecmigrate_services() -> dict[str, dict[str, Any]]:
    return {
        name: s
        for name, s in compose()["services"].items()
        if str(s.get("image", "")).startswith("vecmigrate:") or "build" in s
    }


def vecmigrate_containers() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(where, container, its pod spec) of every container running the vecmigrate image."""
    for name, doc in manifests():
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        pod = doc["spec"]["template"]["spec"]
        for c in pod["containers"]:
            if c["image"].startswith("vecmigrate:"):
                yield f"{name}/{doc['metadata']['name']}/{c['name']}", c, pod


def container_env(c: dict[str, Any]) -> dict[str, str]:
    """A container's environment: its ConfigMaps' data, then its own entries."""
    maps = {d["metadata"]["name"]: d["data"] for _, d in manifests() if d["kind"] == "ConfigMap"}
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        env.update(maps[source["configMapRef"]["name"]])
    env.update({e["name"]: e["value"] for e in c.get("env", []) if "value" in e})
    return env


def referenced_files(env: dict[str, Any], command: list[str]) -> set[str]:
    """Absolute paths a process is told to read: file: references, *_PATH variables, path
    arguments of flags."""
    found = set()
    for name, value in env.items():
        text = str(value)
        if text.startswith("file:"):
            found.add(text.removeprefix("file:"))
        elif name.endswith(("_PATH", "_FILE")) and text.startswith("/"):
            found.add(text)
        found |= set(re.findall(r"sslrootcert=(/[^&]+)", text))
    for arg in command:
        value = arg.partition("=")[2] if arg.startswith("--") else arg
        if value.startswith("/run/secrets/") or value.startswith("/etc/"):
            found.add(value)
    return found


def test_nothing_secret_is_written_in_compose_or_the_manifests() -> None:
    assert secrets_in(compose()) == []
    for name, doc in manifests():
        assert secrets_in(doc) == [], name
    for name, service in compose()["services"].items():
        assert env_secrets(service.get("environment") or {}) == [], name
    for where, c, _ in vecmigrate_containers():
        assert env_secrets(container_env(c)) == [], where
    for _, doc in manifests():
        if doc["kind"] == "ConfigMap":
            assert env_secrets(doc["data"]) == [], doc["metadata"]["name"]
    # Every vecmigrate process has its catalog's password and the key ring by reference.
    for name, service in vecmigrate_services().items():
        env = service["environment"]
        assert env["VECMIGRATE_KEYRING"].startswith("file:/run/secrets/"), name
        if "VECMIGRATE_CATALOG_URL" in env:
            assert env["VECMIGRATE_CATALOG_PASSWORD"].startswith("file:/run/secrets/"), name
            assert env["VECMIGRATE_ANCHORS"] == "/anchors", name
            assert "anchors:/anchors" in service["volumes"], name


def test_the_secret_checks_catch_what_they_look_for() -> None:
    """The checks above are not vacuous: each kind of leak is found."""
    assert secrets_in({"url": "postgresql+psycopg://vecmigrate:hunter2@db/vecmigrate"})
    assert secrets_in(["https://milvus:19530?token=root:Milvus"])
    assert secrets_in({"PASSWORD": "${CATALOG_DB_PASSWORD:-vecmigrate}"})
    assert secrets_in("-----BEGIN EC PRIVATE KEY-----\nMHcCAQ...")
    assert secrets_in({"key": f"{KEY_PREFIX}abc123_0123456789abcdef"})
    assert secrets_in({"url": "postgresql+psycopg://vecmigrate@db/vecmigrate"}) == []
    assert env_secrets({"VECMIGRATE_CATALOG_PASSWORD": "vecmigrate"}) == [
        "VECMIGRATE_CATALOG_PASSWORD"
    ]
    assert env_secrets({"VECMIGRATE_TEMPORAL_API_KEY": "sekrit"}) != []
    assert env_secrets({"TEMPORAL_API_KEY": "sekrit"}) != []
    assert env_secrets({"POSTGRES_PASSWORD_FILE": "/run/secrets/x"}) == []
    assert env_secrets({"VECMIGRATE_KEYRING": "file:/run/secrets/keyring.json"}) == []


def test_every_secret_a_service_reads_is_declared_and_mounted() -> None:
    stack = compose()
    declared = stack["secrets"]
    script = (DEPLOY / "make-secrets.sh").read_text()
    for name, entry in declared.items():
        # Each secret file is one make-secrets.sh creates.
        file = Path(entry["file"])
        assert file.parent == Path("secrets"), name
        stem = file.name.removesuffix(".pem").removesuffix(".key")
        assert file.name in script or f"$name.{file.suffix[1:]}" in script, name
        assert stem in script, name
    for name, service in stack["services"].items():
        mounted = set(service.get("secrets") or [])
        assert mounted <= set(declared), (name, mounted - set(declared))
        env = service.get("environment") or {}
        command = [str(a) for a in (service.get("command") or [])]
        health = [str(a) for a in (service.get("healthcheck") or {}).get("test", [])]
        for path in referenced_files(env, command) | {
            p for t in health for p in re.findall(r"/run/secrets/[\w.-]+", t)
        }:
            if path.startswith("/run/secrets/"):
                assert path.removeprefix("/run/secrets/") in mounted, (name, path)
        # A password file given to a third-party image is a mounted secret too.
        for var, value in env.items():
            if var.endswith("_FILE"):
                assert str(value).removeprefix("/run/secrets/") in mounted, (name, var)
    # Kubernetes: every file a process reads is under a volume the pod mounts, and a file in a
    # Secret or ConfigMap volume is a key the commands in config.yaml create.
    created = kubernetes_objects_created()
    for _, doc in manifests():
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        pod = doc["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        for c in pod["containers"]:
            where = f"{doc['metadata']['name']}/{c['name']}"
            command = [str(a) for a in c.get("args") or c.get("command") or []]
            for path in referenced_files(container_env(c), command):
                mount = next(
                    (m for m in c["volumeMounts"] if path.startswith(m["mountPath"] + "/")),
                    None,
                )
                assert mount is not None, (where, path)
                key = path.removeprefix(mount["mountPath"] + "/")
                assert key in volume_files(volumes[mount["name"]], created), (where, path)


def kubernetes_objects_created() -> dict[tuple[str, str], set[str]]:
    """The Secrets and ConfigMaps config.yaml's header creates: (kind, name) -> keys."""
    header = "\n".join(
        line.removeprefix("#").strip()
        for line in (DEPLOY / "kubernetes" / "config.yaml").read_text().splitlines()
        if line.startswith("#")
    ).replace("\\\n", " ")
    created: dict[tuple[str, str], set[str]] = {}
    for line in header.splitlines():
        if not line.startswith("kubectl "):
            continue
        words = shlex.split(line)
        at = words.index("create")
        kind, name = words[at + 1], words[at + 2]
        if kind == "secret":
            kind, name = "secret", words[at + 3]
            sub = words[at + 2]
            keys = {"tls.crt", "tls.key"} if sub == "tls" else set()
        else:
            keys = set()
        for w in words:
            if w.startswith("--from-file="):
                spec = w.removeprefix("--from-file=")
                keys.add(spec.split("=")[0] if "=" in spec else Path(spec).name)
        created[(kind, name)] = keys
    return created


def volume_files(volume: dict[str, Any], created: dict[tuple[str, str], set[str]]) -> set[str]:
    """The file names a Secret or ConfigMap volume shows (anything for other volumes)."""
    if "secret" in volume:
        source, kind, name = volume["secret"], "secret", volume["secret"]["secretName"]
    elif "configMap" in volume:
        source, kind, name = volume["configMap"], "configmap", volume["configMap"]["name"]
        if name == "vecmigrate-temporal-setup":
            return {"setup.sh"}
    else:
        return {"*"}
    keys = created.get((kind, name))
    assert keys is not None, f"{kind} {name} is not created by the commands in config.yaml"
    items = source.get("items")
    if items is None:
        return keys
    assert {i["key"] for i in items} <= keys, (name, items)
    return {i["path"] for i in items}


def test_the_kubernetes_secret_check_is_not_vacuous() -> None:
    created = kubernetes_objects_created()
    assert ("secret", "vecmigrate") in created
    assert "keyring.json" in created[("secret", "vecmigrate")]
    assert created[("secret", "vecmigrate-temporal")] == {"tls.crt", "tls.key"}
    with pytest.raises(AssertionError):
        volume_files({"secret": {"secretName": "nowhere"}}, created)
    with pytest.raises(AssertionError):
        volume_files(
            {"secret": {"secretName": "vecmigrate", "items": [{"key": "x", "path": "x"}]}},
            created,
        )


def test_every_command_uses_flags_the_cli_has() -> None:
    commands = [(name, s["command"]) for name, s in vecmigrate_services().items()]
    commands += [(where, c["args"]) for where, c, _ in vecmigrate_containers()]
    commands += make_secrets_commands()
    assert len(commands) >= 10
    for where, argv in commands:
        try:
            parser().parse_args([str(a) for a in argv])
        except SystemExit:
            pytest.fail(f"{where}: vecmigrate does not accept {argv}")


def make_secrets_commands() -> list[tuple[str, list[str]]]:
    """The vecmigrate commands make-secrets.sh runs (shell variables left as words)."""
    text = (DEPLOY / "make-secrets.sh").read_text().replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        if '"$vecmigrate"' in line:
            words = shlex.split(line.split('"$vecmigrate"', 1)[1])
            found.append(("make-secrets.sh", words))
    assert found
    return found


def test_the_flag_check_refuses_a_flag_the_cli_lacks() -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(["serve", "--tls-certificate", "/x"])


def test_every_variable_a_vecmigrate_process_is_given_is_one_the_code_reads() -> None:
    for name, service in vecmigrate_services().items():
        assert unknown_env(set(service["environment"])) == set(), name
    for where, c, _ in vecmigrate_containers():
        assert unknown_env(set(container_env(c))) == set(), where
    # The check knows the Temporal client's variables and refuses made-up ones.
    assert unknown_env({"TEMPORAL_TLS_CLIENT_CERT_PATH", "VECMIGRATE_TEMPORAL_API_KEY"}) == set()
    assert unknown_env({"VECMIGRATE_CATALOG_PASSWORD_FILE", "TEMPORAL_TLS_CERT"}) == {
        "VECMIGRATE_CATALOG_PASSWORD_FILE",
        "TEMPORAL_TLS_CERT",
    }
    # And the OpenTelemetry SDK's own variables, but not made-up ones.
    assert unknown_env({"OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLE_RATE"}) == {
        "OTEL_TRACES_SAMPLE_RATE"
    }


def test_the_web_ui_decodes_through_the_codec_server() -> None:
    services = compose()["services"]
    codec = parser().parse_args(services["codec-server"]["command"])
    assert codec.command == "codec-server"
    assert codec.tls_cert
    assert codec.tls_key
    assert codec.credentials
    ui = services["temporal-ui"]
    assert ui["environment"]["TEMPORAL_CODEC_ENDPOINT"] == f"https://localhost:{codec.port}"
    assert f"{codec.port}:{codec.port}" in services["codec-server"]["ports"]
    ui_port = ui["ports"][0].split(":")[-1]
    assert f"http://localhost:{ui_port}" in codec.cors_origin
    gateway = parser().parse_args(services["gateway"]["command"])
    assert gateway.tls_cert
    assert gateway.tls_key
    assert gateway.credentials
    assert not gateway.no_auth
