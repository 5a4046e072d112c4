"""Deployment files: compose, Prometheus, Kubernetes, the Dockerfile and the settings they set.

External validators run when installed (.ci/run installs docker-compose and promtool;
kubectl, for `kubectl kustomize`, is optional) and skip with the reason otherwise. No
Docker engine runs here: images are not built, only their recipes are checked.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_FILES = ("docker-compose.yml", "docker-compose.gpu.yml")
SERVE = ["flexcode", "serve", "--host", "0.0.0.0", "--port", "8000"]


def _tool(name: str, package: str | None) -> str:
    """The binary's path; skip (with how to get it) when it is not installed."""
    path = shutil.which(name)
    if path is None:
        how = f"Debian package `{package}`, which .ci/run installs" if package else "optional"
        pytest.skip(f"{name} not installed ({how})")
    return path


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


# --------------------------------------------------------------------------- compose


@pytest.fixture
def compose_dir(tmp_path) -> Path:
    """The compose files beside a .env copied from deploy/env.example, as the docs say."""
    for name in COMPOSE_FILES:
        shutil.copy(REPO / name, tmp_path / name)
    shutil.copy(DEPLOY / "env.example", tmp_path / ".env")
    return tmp_path


def _compose_config(compose_dir: Path, *files: str, quiet: bool = False) -> dict | None:
    binary = _tool("docker-compose", "docker-compose")
    # Only what compose needs: no FLEXCODE_* or other variable from this shell leaks in.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(compose_dir)}
    args = [binary]
    for name in files:
        args += ["-f", name]
    args += ["config", "-q"] if quiet else ["config"]
    out = _run(args, compose_dir, env)
    return None if quiet else yaml.safe_load(out)


@pytest.mark.parametrize("files", [COMPOSE_FILES[:1], COMPOSE_FILES], ids=["cpu", "gpu"])
def test_compose_config_is_valid(compose_dir, files):
    _compose_config(compose_dir, *files, quiet=True)


def test_compose_services(compose_dir):
    config = _compose_config(compose_dir, COMPOSE_FILES[0])
    services = config["services"]
    assert set(services) == {"redis", "trainer", "api", "prometheus", "grafana"}

    redis = services["redis"]
    assert "--appendonly" in redis["command"] and "yes" in redis["command"]
    assert any(v.endswith(":/data") or ":/data:" in v for v in _volumes(redis))
    assert "redis-cli" in redis["healthcheck"]["test"] and "ping" in redis["healthcheck"]["test"]

    trainer = services["trainer"]
    assert trainer["build"]["target"] == "trainer"
    assert trainer["command"] == [
        "flexcode", "train", "pipeline", "--dataset", "ml-100k", "--run-dir",
        "/data/runs/default", "--bundle-root", "/bundles", "--if-missing",
    ]  # fmt: skip
    assert "bundles:/bundles:rw" in _volumes(trainer) or "bundles:/bundles" in _volumes(trainer)

    api = services["api"]
    assert api["build"]["target"] == "api"
    assert api["command"] == SERVE
    assert api["environment"]["FLEXCODE_REDIS_URL"] == "redis://redis:6379/0"
    assert api["environment"]["FLEXCODE_BUNDLE_PATH"] == "/bundles"
    assert "bundles:/bundles:ro" in _volumes(api)
    assert api["depends_on"]["trainer"]["condition"] == "service_completed_successfully"
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"
    # env_file is inlined by `config`: the example's settings reach the api.
    assert api["environment"]["FLEXCODE_ENVIRONMENT"] == "production"

    assert any(v.endswith("/etc/prometheus:ro") for v in _volumes(services["prometheus"]))
    grafana = _volumes(services["grafana"])
    assert any(v.endswith("/etc/grafana/provisioning:ro") for v in grafana)
    assert any(v.endswith("/etc/grafana/dashboards:ro") for v in grafana)
    assert {"bundles", "redis-data"} <= set(config["volumes"])


def test_compose_dataset_comes_from_env(compose_dir):
    env = compose_dir / ".env"
    env.write_text(env.read_text().replace("FLEXCODE_DATASET=ml-100k", "FLEXCODE_DATASET=/in/x"))
    trainer = _compose_config(compose_dir, COMPOSE_FILES[0])["services"]["trainer"]
    assert trainer["command"][trainer["command"].index("--dataset") + 1] == "/in/x"


def test_compose_gpu_override(compose_dir):
    services = _compose_config(compose_dir, *COMPOSE_FILES)["services"]
    for name in ("trainer", "api"):
        service = services[name]
        assert service["build"]["args"]["FLAVOR"] == "gpu"
        assert service["image"].endswith(":gpu")
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert services["api"]["environment"]["FLEXCODE_DEVICE"] == "cuda"
    assert services["api"]["command"] == SERVE


def _volumes(service: dict) -> list[str]:
    """Volume entries as 'source:target[:mode]' strings, whichever syntax config printed."""
    out = []
    for v in service.get("volumes", []):
        if isinstance(v, str):
            out.append(v)
        else:
            mode = ":ro" if v.get("read_only") else ""
            out.append(f"{v['source']}:{v['target']}{mode}")
    return out


# --------------------------------------------------------------------------- prometheus


def test_promtool_check_config():
    promtool = _tool("promtool", "prometheus")
    # Relative rule_files resolve against the config's directory, as in the container.
    _run([promtool, "check", "config", "prometheus.yml"], DEPLOY / "prometheus")


def test_promtool_check_rules():
    promtool = _tool("promtool", "prometheus")
    _run([promtool, "check", "rules", "alerts.yml"], DEPLOY / "prometheus")


def test_promtool_alert_unit_tests():
    promtool = _tool("promtool", "prometheus")
    _run([promtool, "test", "rules", "alerts_test.yml"], DEPLOY / "prometheus")


def test_prometheus_scrapes_the_api():
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    api = jobs["flexcode-api"]
    assert api.get("metrics_path", "/metrics") == "/metrics"
    assert api["static_configs"][0]["targets"] == ["api:8000"]
    assert config["rule_files"] == ["alerts.yml"]
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    # The alert names the api's job by the name the scrape config gives it.
    assert any('job="flexcode-api"' in r["expr"] for g in alerts["groups"] for r in g["rules"])


def test_grafana_provisioning():
    prov = DEPLOY / "grafana" / "provisioning"
    (ds,) = yaml.safe_load((prov / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert ds["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((prov / "dashboards" / "flexcode.yml").read_text())["providers"]
    assert provider["options"]["path"] == "/etc/grafana/dashboards"
    dashboard = (DEPLOY / "grafana" / "dashboards" / "flexcode.json").read_text()
    # Every panel's datasource is the provisioned one.
    uids = set(re.findall(r'"uid":\s*"([^"]+)"', dashboard)) - {"flexcode-api"}
    assert uids == {ds["uid"]}


# --------------------------------------------------------------------------- kubernetes


def _k8s_docs() -> dict[Path, list[dict]]:
    docs = {}
    for path in sorted(K8S.rglob("*.yaml")):
        docs[path] = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return docs


def _resources() -> dict[tuple[str, str], dict]:
    """Base and redis manifests (not the overlay's partial patches) by (kind, name)."""
    out = {}
    for path, docs in _k8s_docs().items():
        if "overlays" in path.parts:
            continue
        for doc in docs:
            if doc["kind"] != "Kustomization":
                out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


def test_k8s_yaml_parses_with_required_fields():
    docs = _k8s_docs()
    assert docs, "no manifests under deploy/k8s"
    for path, manifests in docs.items():
        for doc in manifests:
            where = path.relative_to(REPO)
            assert {"apiVersion", "kind"} <= set(doc), f"{where}: apiVersion/kind missing"
            if doc["kind"] != "Kustomization":
                assert doc["metadata"]["name"], f"{where}: metadata.name missing"


def test_k8s_has_every_kind():
    kinds = {kind for kind, _ in _resources()}
    expected = {"Namespace", "ConfigMap", "Secret", "PersistentVolumeClaim", "Deployment"}
    expected |= {"Service", "HorizontalPodAutoscaler", "Job", "StatefulSet"}
    assert expected <= kinds, f"missing kinds: {sorted(expected - kinds)}"


def _container(workload: dict) -> dict:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return container


def test_k8s_deployment():
    resources = _resources()
    deployment = resources[("Deployment", "flexcode-api")]
    container = _container(deployment)
    assert container["command"][:2] == ["flexcode", "serve"]
    assert container["command"] == SERVE
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {"requests", "limits"} <= set(container["resources"])
    env_from = {next(iter(ref.values()))["name"] for ref in container["envFrom"]}
    assert env_from == {"flexcode-settings", "flexcode-secrets"}
    assert ("ConfigMap", "flexcode-settings") in resources
    assert ("Secret", "flexcode-secrets") in resources
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {"flexcode-bundles"}
    assert ("PersistentVolumeClaim", "flexcode-bundles") in resources
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/bundles")
    assert mount["readOnly"] is True
    # The Service and the HPA point at this Deployment.
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = resources[("Service", "flexcode-api")]["spec"]["selector"]
    assert selector.items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    target = resources[("HorizontalPodAutoscaler", "flexcode-api")]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "flexcode-api")


def test_k8s_settings_and_secret():
    resources = _resources()
    settings = resources[("ConfigMap", "flexcode-settings")]["data"]
    assert settings["FLEXCODE_BUNDLE_PATH"] == "/bundles"
    assert settings["FLEXCODE_REDIS_URL"] == "redis://redis:6379/0"
    assert all(isinstance(v, str) for v in settings.values()), "ConfigMap values must be strings"
    secret = resources[("Secret", "flexcode-secrets")]["stringData"]
    assert "FLEXCODE_API_KEYS" not in settings
    assert "REPLACE" in secret["FLEXCODE_API_KEYS"], "the committed key must be a placeholder"


def test_k8s_training_job():
    resources = _resources()
    job = resources[("Job", "flexcode-train")]
    container = _container(job)
    assert container["command"][:3] == ["flexcode", "train", "pipeline"]
    assert "--bundle-root" in container["command"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] in {"Never", "OnFailure"}
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for v in job["spec"]["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {"flexcode-bundles"}


def test_k8s_redis_persists_with_aof():
    redis = _resources()[("StatefulSet", "redis")]
    args = _container(redis)["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert redis["spec"]["volumeClaimTemplates"], "Redis data needs a persistent volume"


def test_kustomizations_reference_existing_files():
    for path, docs in _k8s_docs().items():
        for doc in docs:
            if doc["kind"] != "Kustomization":
                continue
            refs = list(doc.get("resources", [])) + [p["path"] for p in doc.get("patches", [])]
            for ref in refs:
                assert (path.parent / ref).exists(), f"{path.relative_to(REPO)}: {ref} missing"


@pytest.fixture(scope="module")
def kustomize():
    kubectl = _tool("kubectl", None)  # renders the kustomizations; not needed otherwise

    def build(directory: str) -> dict[tuple[str, str], dict]:
        out = _run([kubectl, "kustomize", str(K8S / directory)], REPO)
        return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(out) if d}

    return build


def test_kustomize_base_renders(kustomize):
    rendered = kustomize("base")
    assert all(d["metadata"].get("namespace", "flexcode") == "flexcode" for d in rendered.values())
    assert _container(rendered[("Deployment", "flexcode-api")])["image"] == "flexcode-api:cpu"
    assert set(kustomize("redis")) == {("Service", "redis"), ("StatefulSet", "redis")}


def test_kustomize_gpu_overlay(kustomize):
    rendered = kustomize("overlays/gpu")
    api = _container(rendered[("Deployment", "flexcode-api")])
    assert api["image"] == "flexcode-api:gpu"
    assert api["command"] == SERVE
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert str(api["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    assert rendered[("ConfigMap", "flexcode-settings")]["data"]["FLEXCODE_DEVICE"] == "cuda"
    train = _container(rendered[("Job", "flexcode-train")])
    assert train["image"] == "flexcode-trainer:gpu"
    assert train["command"][:3] == ["torchrun", "--standalone", "--nproc_per_node=$(GPUS)"]
    assert train["command"][3:8] == ["-m", "training.cli", "train", "pipeline", "--dataset"]
    gpus = next(e["value"] for e in train["env"] if e["name"] == "GPUS")
    assert str(train["resources"]["limits"]["nvidia.com/gpu"]) == gpus
    assert {e["name"] for e in train["env"]} >= {"GPUS", "DATASET"}


# --------------------------------------------------------------------------- settings names


def _settings_fields() -> set[str]:
    settings = pytest.importorskip("service.settings", reason="service/settings.py not there yet")
    return {f"FLEXCODE_{name.upper()}" for name in settings.Settings.model_fields}


def _flexcode_names(text: str) -> set[str]:
    return set(re.findall(r"\bFLEXCODE_[A-Z0-9_]+\b", text))


# Variables the deploy files use that are compose's own, not the service's.
COMPOSE_ONLY = {"FLEXCODE_DATASET", "FLEXCODE_API_PORT"}


def test_deploy_files_set_only_real_settings():
    """A misspelt FLEXCODE_ name is silently ignored by pydantic-settings: catch it here."""
    fields = _settings_fields()
    sources = {
        "deploy/env.example": _flexcode_names(" ".join(_env_file(DEPLOY / "env.example"))),
        "configmap": set(_resources()[("ConfigMap", "flexcode-settings")]["data"]),
        "docker-compose files": set().union(
            *(_flexcode_names((REPO / f).read_text()) for f in COMPOSE_FILES)
        ),
        "Dockerfile": _flexcode_names((REPO / "Dockerfile").read_text()),
    }
    for where, names in sources.items():
        unknown = names - fields - COMPOSE_ONLY
        assert not unknown, f"{where} sets {sorted(unknown)}, which Settings does not read"


def test_docs_list_every_setting():
    fields = _settings_fields()
    documented = _flexcode_names((REPO / "docs" / "deployment.md").read_text())
    assert not fields - documented, (
        f"docs/deployment.md's configuration table lacks {sorted(fields - documented)}"
    )


# --------------------------------------------------------------------------- Dockerfile


def _stages(dockerfile: str) -> dict[str, str]:
    """Stage name -> its text (from its FROM line to the next FROM)."""
    parts = re.split(r"(?m)^FROM\s+", dockerfile)[1:]
    out = {}
    for part in parts:
        header = part.splitlines()[0]
        match = re.search(r"\bAS\s+(\S+)", header, re.IGNORECASE)
        out[match.group(1) if match else header] = part
    return out


def test_dockerfile_stages():
    text = (REPO / "Dockerfile").read_text()
    stages = _stages(text)
    assert {"os-cpu", "os-gpu", "build", "runtime", "trainer", "api"} <= set(stages)
    assert list(stages)[-1] == "api", "a plain `docker build .` should give the serving image"
    api, trainer = stages["api"], stages["trainer"]
    assert re.search(r"(?m)^USER flexcode$", api) and re.search(r"(?m)^USER flexcode$", trainer)
    assert "HEALTHCHECK" in api and "/healthz" in api and "curl" not in api.split("HEALTHCHECK")[1]
    assert 'CMD ["flexcode", "serve", "--host", "0.0.0.0", "--port", "8000"]' in api
    assert "recbole==1.2.1" in trainer and "recbole" not in api
    assert "COPY --from=build /opt/venv" in stages["runtime"]
    assert not re.search(r"(?m)^COPY\s+(\S*/)?bundles", text), "the bundle must not be baked in"
    assert re.search(r"(?m)^ARG FLAVOR=cpu$", text)


def test_dockerfile_torch_matches_makefile():
    makefile = (REPO / "Makefile").read_text()
    pinned = re.search(r"TORCH_SPEC \?= torch==(\S+)", makefile).group(1)
    assert f"ARG TORCH_VERSION={pinned}" in (REPO / "Dockerfile").read_text()
    assert f"TORCH_VERSION:-{pinned}" in (DEPLOY / "docker" / "install-deps.sh").read_text()


def test_dockerignore_keeps_what_the_dockerfile_copies():
    allowed = {
        line[1:].rstrip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    text = (REPO / "Dockerfile").read_text()
    for match in re.finditer(r"(?m)^COPY\s+(?!--from)(.+)$", text):
        *sources, _dest = match.group(1).split()
        for source in sources:
            assert source.rstrip("/") in allowed, f".dockerignore drops {source}"
    assert ".env" not in allowed


def test_image_requirements_per_flavour():
    pytest.importorskip("tomllib")
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "image_requirements", DEPLOY / "docker" / "requirements.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    pyproject = REPO / "pyproject.toml"
    names = {
        f: {module._name(r) for r in module.requirements(f, pyproject)} for f in ("cpu", "gpu")
    }
    cpu_only, gpu_only = {"faiss-cpu", "onnxruntime"}, {"faiss-gpu-cu12", "onnxruntime-gpu"}
    assert cpu_only | {"onnx"} <= names["cpu"]
    assert gpu_only | {"onnx"} <= names["gpu"]
    assert not cpu_only & names["gpu"]
    assert names["cpu"] - cpu_only == names["gpu"] - gpu_only
    with pytest.raises(ValueError, match="choose from"):
        module.requirements("tpu", REPO / "pyproject.toml")
