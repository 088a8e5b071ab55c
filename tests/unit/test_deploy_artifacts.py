"""Deployment artefacts, checked offline (no Docker daemon, no cluster, no Prometheus server):

- the Dockerfile passes hadolint, is multi-stage, runs as a non-root user, checks /health/live, keeps compilers in
  its build stage and pins torch as pyproject.toml does;
- every `.yaml` of the repository outside folders named tests, data, node_modules or .venv (and .git) is found by
  what it holds, not from a list: one with top-level `apiVersion` and `kind` is a Kubernetes manifest and must pass
  `kubernetes-validate --strict` with a current API version; one with top-level `groups` is a Prometheus rules file
  and must pass `promtool check rules`; one with `rule_files` and `tests` is a rules unit test, run by
  `promtool test rules`, and every alert must fire in one;
- the manifests say what recograph really reads: every environment variable is a setting, the API deployment runs
  `serve` without the worker and probes /health/ready and /health/live on its port, secrets come by reference,
  and only the gateway reaches the API port;
- the Grafana dashboard's queries parse as PromQL (tests/e2e/test_deploy_metrics.py checks that /metrics exports
  every metric they and the alerts read).

hadolint and kubernetes-validate come with the `test` extra; promtool with Debian's `prometheus` package, which
`make test` installs when it is missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import AliasChoices

from models.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SKIPPED_DIRS = frozenset({"tests", "data", "node_modules", ".venv", ".git"})
# The API versions current for each kind (Kubernetes 1.37); anything older is refused even where it still validates.
CURRENT_API = {
    "ConfigMap": "v1", "Secret": "v1", "Service": "v1", "ServiceAccount": "v1", "PersistentVolumeClaim": "v1",
    "Deployment": "apps/v1", "StatefulSet": "apps/v1", "HorizontalPodAutoscaler": "autoscaling/v2",
    "PodDisruptionBudget": "policy/v1", "NetworkPolicy": "networking.k8s.io/v1", "Ingress": "networking.k8s.io/v1",
    "CronJob": "batch/v1", "Job": "batch/v1",
}
SECRET_NAMES = re.compile(r"(_URL|_TOKEN|_KEY|PASSWORD)$")


def _tool(name: str) -> str:
    """Return the path of a command-line tool: the virtual environment's first, then PATH's; fail when missing."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    assert found, f"{name} is missing: `make test` installs it (the test extra; Debian's prometheus for promtool)"
    return found


def _run(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def yaml_documents() -> dict[Path, list[Any]]:
    """Return every .yaml/.yml file of the repository outside the skipped folders, with its documents."""
    found: dict[Path, list[Any]] = {}
    for directory, subdirs, files in os.walk(ROOT):
        subdirs[:] = sorted(d for d in subdirs if d not in SKIPPED_DIRS)
        for name in sorted(files):
            if name.endswith((".yaml", ".yml")):
                path = Path(directory, name)
                found[path] = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return found


def _with(keys: set[str]) -> dict[Path, list[dict]]:
    return {path: [d for d in docs if isinstance(d, dict) and keys <= d.keys()]
            for path, docs in yaml_documents().items()
            if any(isinstance(d, dict) and keys <= d.keys() for d in docs)}


def manifests() -> dict[Path, list[dict]]:
    """Return the Kubernetes manifests (documents with top-level apiVersion and kind) by file."""
    return _with({"apiVersion", "kind"})


def rules_files() -> list[Path]:
    """Return the Prometheus rules files (top-level `groups`)."""
    return sorted(_with({"groups"}))


def rules_tests() -> dict[Path, dict]:
    """Return the promtool rules unit tests (top-level `rule_files` and `tests`)."""
    return {path: docs[0] for path, docs in _with({"rule_files", "tests"}).items()}


def _by_kind(kind: str) -> list[dict]:
    return [d for docs in manifests().values() for d in docs if d["kind"] == kind]


def _deployment(name: str) -> dict:
    [found] = [d for d in _by_kind("Deployment") if d["metadata"]["name"] == name]
    return found


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def known_settings() -> set[str]:
    """Return the environment variables recograph's settings read."""
    names: set[str] = set()
    for section in Settings.model_fields.values():
        model = section.annotation
        prefix = model.model_config.get("env_prefix", "")
        for field_name, field in model.model_fields.items():
            alias = field.validation_alias
            names.update(alias.choices if isinstance(alias, AliasChoices) else [(prefix + field_name).upper()])
    return names


# --- the image ---------------------------------------------------------------------------------------------------


def _stages(text: str) -> list[list[str]]:
    """Return the Dockerfile's instructions (continuation lines joined) split by stage."""
    lines = [line for line in text.replace("\\\n", " ").splitlines() if line.strip() and not line.startswith("#")]
    stages: list[list[str]] = []
    for line in lines:
        if line.startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def test_deploy_dockerfile_passes_hadolint():
    result = _run(_tool("hadolint"), "--no-color", "Dockerfile")
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_deploy_hadolint_really_lints(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get update && apt-get install -y curl\n")
    result = _run(_tool("hadolint"), "--no-color", bad)
    assert result.returncode != 0 and "DL3006" in result.stdout and "DL3008" in result.stdout, result.stdout


def test_deploy_dockerfile_is_multi_stage_slim_non_root_and_checks_liveness():
    text = (ROOT / "Dockerfile").read_text()
    build, runtime = _stages(text)
    assert build[0].startswith("FROM ${PYTHON_IMAGE} AS build") and runtime[0].startswith("FROM ${PYTHON_IMAGE}")
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", text, re.M)
    assert any("build-essential" in line for line in build)
    assert not any(re.search(r"build-essential|\bgcc\b|\bg\+\+|\bmake\b", line) for line in runtime)
    assert any(line.startswith("COPY --from=build /opt/recograph") for line in runtime)
    [user] = [line.split()[1] for line in runtime if line.startswith("USER ")]
    assert user.split(":")[0] not in {"0", "root"}
    [health] = [line for line in runtime if line.startswith("HEALTHCHECK ")]
    assert "/health/live" in health and "RECOGRAPH_PORT" in health
    assert runtime[-2:] == ['ENTRYPOINT ["recograph"]', 'CMD ["serve"]']
    for setting in re.findall(r"\b(RECOGRAPH_[A-Z_]+)=", text):
        assert setting in known_settings(), setting


def test_deploy_dockerfile_pins_torch_as_pyproject_does_from_the_cpu_index():
    pinned = [d for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
              if d.startswith("torch")]
    assert pinned == ["torch==2.13.0"]
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r'--index-url "\$\{TORCH_INDEX_URL\}" torch==2\.13\.0', text)
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text


def test_deploy_dockerignore_keeps_local_state_and_tests_out():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", "data", "tests", ".env", "**/node_modules", "**/__pycache__"} <= ignored
    # what the image is built from stays in
    assert not ignored & {"graph", "resolvers", "domain", "workers", "models", "pyproject.toml", "README.md", "LICENSE"}


# --- Kubernetes ----------------------------------------------------------------------------------------------------


def test_deploy_manifests_are_found_by_content_outside_the_skipped_folders():
    found = manifests()
    kinds = sorted(d["kind"] for docs in found.values() for d in docs)
    for kind in ("ConfigMap", "Deployment", "HorizontalPodAutoscaler", "NetworkPolicy", "PodDisruptionBudget",
                 "Service"):
        assert kind in kinds, kind
    assert kinds.count("Deployment") >= 2
    assert all(not SKIPPED_DIRS & set(path.relative_to(ROOT).parts) for path in found)


def test_deploy_every_manifest_validates_strictly_with_a_current_api_version():
    files = sorted(manifests())
    result = _run(_tool("kubernetes-validate"), "--strict", *files)
    assert result.returncode == 0, result.stdout + result.stderr
    # A kind or version it has no schema for only warns: that must fail too.
    assert not re.search(r"^(WARN|ERROR)", result.stdout + result.stderr, re.M), result.stdout + result.stderr
    assert result.stdout.count("passed for resource") == sum(len(d) for d in manifests().values())
    for path, docs in manifests().items():
        for doc in docs:
            assert CURRENT_API.get(doc["kind"]) == doc["apiVersion"], (path.name, doc["kind"], doc["apiVersion"])


def test_deploy_kubernetes_validate_strict_refuses_unknown_fields(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n  labelz: {}\n")
    result = _run(_tool("kubernetes-validate"), "--strict", bad)
    assert result.returncode != 0 and "labelz" in result.stdout + result.stderr


def test_deploy_api_runs_serve_without_the_worker_and_probes_health():
    api = _deployment("recograph-api")["spec"]["template"]["spec"]
    [container] = api["containers"]
    env = _env(container)
    assert container["args"] == ["serve"]
    assert env["RECOGRAPH_RUN_WORKER"]["value"] == "false"
    port = int(env["RECOGRAPH_PORT"]["value"])
    assert {"name": "http", "containerPort": port, "protocol": "TCP"} in container["ports"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/health/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health/live", "port": "http"}
    assert api["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    requests = container["resources"]["requests"]
    assert requests["cpu"] == env["RECOGRAPH_PROCESSES"]["value"]  # one serving process per core requested
    assert "memory" in requests and "memory" in container["resources"]["limits"]
    worker = _deployment("recograph-worker")["spec"]["template"]["spec"]["containers"][0]
    assert worker["args"] == ["worker"]
    assert worker["livenessProbe"]["httpGet"]["port"] == "metrics"
    assert int(_env(worker)["RECOGRAPH_JOBS_METRICS_PORT"]["value"]) == worker["ports"][0]["containerPort"]


def test_deploy_every_variable_is_a_setting_and_every_secret_comes_by_reference():
    known = known_settings()
    for deployment in _by_kind("Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            for name, entry in _env(container).items():
                assert name in known, f"{deployment['metadata']['name']}: {name} is no setting of recograph"
                if SECRET_NAMES.search(name):
                    assert "value" not in entry and "secretKeyRef" in entry["valueFrom"], name
            for source in container.get("envFrom", []):
                assert "configMapRef" in source  # never a whole Secret poured into the environment
    for config in _by_kind("ConfigMap"):
        for name in config.get("data", {}):
            assert name in known and not SECRET_NAMES.search(name), name
    assert not _by_kind("Secret"), "secrets are created beside the manifests, never committed"
    api_env = _env(_deployment("recograph-api")["spec"]["template"]["spec"]["containers"][0])
    for name in ("MONGODB_URL", "REDIS_URL", "QDRANT_URL", "RECOGRAPH_METRICS_TOKEN"):
        assert "secretKeyRef" in api_env[name]["valueFrom"], name


def test_deploy_only_the_gateway_reaches_the_api_port():
    api = _deployment("recograph-api")
    labels = api["spec"]["template"]["metadata"]["labels"]
    port = int(_env(api["spec"]["template"]["spec"]["containers"][0])["RECOGRAPH_PORT"]["value"])
    [policy] = [p for p in _by_kind("NetworkPolicy")
                if p["spec"]["podSelector"]["matchLabels"].items() <= labels.items()]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    reaching_api = [rule for rule in policy["spec"]["ingress"] if any(p["port"] == port for p in rule["ports"])]
    assert reaching_api == [{"from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "gateway"}}}],
                             "ports": [{"port": port, "protocol": "TCP"}]}]


def test_deploy_service_hpa_and_pdb_point_at_the_api_pods():
    api = _deployment("recograph-api")
    labels = api["spec"]["template"]["metadata"]["labels"]
    ports = {p["name"]: p["containerPort"] for p in api["spec"]["template"]["spec"]["containers"][0]["ports"]}
    [service] = [s for s in _by_kind("Service") if s["spec"]["selector"].items() <= labels.items()]
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports.keys()
    [hpa] = _by_kind("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "recograph-api"}
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu" and hpa["spec"]["minReplicas"] >= 2
    [pdb] = _by_kind("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]  # a drain can always proceed


# --- Prometheus and Grafana -----------------------------------------------------------------------------------------


def test_deploy_rules_files_are_found_and_pass_promtool_check():
    found = rules_files()
    assert ROOT / "deploy" / "prometheus" / "alerts.yaml" in found
    for path in found:
        result = _run(_tool("promtool"), "check", "rules", path)
        assert result.returncode == 0, result.stdout + result.stderr


def test_deploy_rules_unit_tests_pass_and_every_alert_fires_in_one():
    tests = rules_tests()
    covered = {(path.parent / name).resolve() for path, spec in tests.items() for name in spec["rule_files"]}
    assert set(rules_files()) <= covered, "every rules file has a promtool unit test beside it"
    for path in tests:
        result = _run(_tool("promtool"), "test", "rules", path.name, cwd=path.parent)
        assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr
    alerts = {rule["alert"] for path in rules_files() for group in yaml.safe_load(path.read_text())["groups"]
              for rule in group["rules"] if "alert" in rule}
    fired = {case["alertname"] for spec in tests.values() for test in spec["tests"]
             for case in test.get("alert_rule_test", []) if case.get("exp_alerts")}
    quiet = {case["alertname"] for spec in tests.values() for test in spec["tests"]
             for case in test.get("alert_rule_test", []) if not case.get("exp_alerts")}
    assert alerts == fired, f"alerts no test sees fire: {sorted(alerts - fired)}"
    assert alerts == quiet, f"alerts no test sees stay quiet: {sorted(alerts - quiet)}"


def test_deploy_promtool_test_rules_really_fails(tmp_path):
    (tmp_path / "alerts.yaml").write_text((ROOT / "deploy/prometheus/alerts.yaml").read_text())
    (tmp_path / "t.yaml").write_text(yaml.safe_dump({
        "rule_files": ["alerts.yaml"], "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": [{"series": "recograph_consumer_alive", "values": "1x10"}],
                   "alert_rule_test": [{"eval_time": "10m", "alertname": "RecographConsumerDown",
                                        "exp_alerts": [{"exp_labels": {"severity": "critical"}}]}]}],
    }))
    result = _run(_tool("promtool"), "test", "rules", "t.yaml", cwd=tmp_path)
    assert result.returncode != 0 and "FAILED" in result.stdout + result.stderr


def dashboard_queries() -> list[str]:
    """Return the PromQL of every panel target and query variable of the Grafana dashboard."""
    board = json.loads((ROOT / "deploy" / "grafana" / "recograph.json").read_text())
    panels = [p for top in board["panels"] for p in [top, *top.get("panels", [])]]
    queries = [t["expr"] for p in panels for t in p.get("targets", [])]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.+), *\w+\)", variable["query"]["query"])
            assert match, variable["query"]["query"]
            queries.append(match.group(1))
    return queries


def test_deploy_dashboard_queries_parse_as_promql(tmp_path):
    queries = dashboard_queries()
    assert len(queries) >= 30
    # Grafana's variables become what they stand for; promtool then parses each query as a recording rule.
    concrete = [re.sub(r"\$\{?\w+\}?", lambda m: "5m" if "rate_interval" in m.group() else ".*", q) for q in queries]
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:q{n}", "expr": q}
                                                         for n, q in enumerate(concrete)]}]}
    (tmp_path / "dashboard.yaml").write_text(yaml.safe_dump(rules))
    result = _run(_tool("promtool"), "check", "rules", tmp_path / "dashboard.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", ["alerts", "dashboard"])
def test_deploy_every_query_reads_a_recograph_metric(name):
    if name == "alerts":
        queries = [rule["expr"] for path in rules_files() for group in yaml.safe_load(path.read_text())["groups"]
                   for rule in group["rules"]]
    else:
        queries = dashboard_queries()
    for query in queries:
        assert re.search(r"\brecograph_\w+", query), query
