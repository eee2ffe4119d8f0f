"""deploy/observability/ agrees with what Cartwheel and prometheus-nats-exporter export, and with deploy/ and the docs.

Every metric the Grafana dashboard and the alert rules name is one a Cartwheel process registers (read from the
services' and the gateway's registries, built in-process without connecting anywhere) or one the NATS exporter
makes; every alert is complete and its runbook is a section of docs/operating.md; the exporter runs beside each
NATS node in Compose and Kubernetes, and Prometheus scrapes it, the services and the gateway where they serve.
"""

from __future__ import annotations

import importlib
import json
import os
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from cartwheel.settings import SERVICES, Settings

ROOT = Path(__file__).resolve().parents[2]
OBSERVABILITY = ROOT / "deploy" / "observability"
OPERATING = ROOT / "docs" / "operating.md"
EXPORTER_IMAGE = "natsio/prometheus-nats-exporter"
EXPORTER_PORT = 7777

# Metric names prometheus-nats-exporter makes, from its source at v0.20.1 (github.com/nats-io/prometheus-nats-exporter):
# collector/jsz.go (prometheus.BuildFQName("jetstream", ...)), collector/connz.go and collector/healthz.go name theirs;
# /varz and /routez go through collector/collector.go's objectToMetrics, which names each number in the endpoint's
# JSON gnatsd_<endpoint>_<key path joined by _>; the keys below are those of nats-server 2.15.1's /varz and /routez
# (tests/integration/test_nats_monitoring.py reads them from the wheel's server and checks this list).
EXPORTER_JETSTREAM = {
    f"jetstream_{name}" for name in (
        "server_jetstream_disabled", "server_total_streams", "server_total_consumers", "server_total_messages",
        "server_total_message_bytes", "server_max_memory", "server_max_storage",
        "account_max_memory", "account_max_storage", "account_storage_used", "account_memory_used",
        "stream_total_messages", "stream_limit_messages", "stream_total_bytes", "stream_limit_bytes",
        "stream_first_seq", "stream_last_seq", "stream_consumer_count", "stream_subject_count",
        "stream_source_lag", "stream_source_active_duration_ns",
        "stream_mirror_lag", "stream_mirror_active_duration_ns",
        "consumer_delivered_consumer_seq", "consumer_delivered_stream_seq", "consumer_last_delivery_seconds",
        "consumer_last_ack_seconds", "consumer_num_ack_pending", "consumer_num_redelivered", "consumer_num_waiting",
        "consumer_num_pending", "consumer_ack_floor_stream_seq", "consumer_ack_floor_consumer_seq",
    )
}
EXPORTER_CONNZ = {f"gnatsd_connz_{name}" for name in (
    "num_connections", "offset", "total", "limit", "pending_bytes", "subscriptions", "in_bytes", "out_bytes",
    "in_msgs", "out_msgs")}
EXPORTER_HEALTHZ = {"gnatsd_healthz_status", "gnatsd_healthz_status_value"}
VARZ_KEYS = {
    "connections", "total_connections", "routes", "remotes", "leafnodes", "in_msgs", "out_msgs", "in_bytes",
    "out_bytes", "slow_consumers", "subscriptions", "mem", "cpu", "cores", "gomaxprocs", "max_connections",
    "max_payload", "max_pending", "stale_connections", "stalled_clients",
    "jetstream_stats_memory", "jetstream_stats_storage", "jetstream_stats_reserved_memory",
    "jetstream_stats_reserved_storage", "jetstream_stats_accounts", "jetstream_stats_ha_assets",
    "jetstream_stats_api_total", "jetstream_stats_api_errors", "jetstream_config_max_memory",
    "jetstream_config_max_storage",
}
EXPORTER_VARZ = {f"gnatsd_varz_{key}" for key in VARZ_KEYS}
EXPORTER_ROUTEZ = {"gnatsd_routez_num_routes"}
EXPORTER_METRICS = EXPORTER_JETSTREAM | EXPORTER_CONNZ | EXPORTER_HEALTHZ | EXPORTER_VARZ | EXPORTER_ROUTEZ
PROMETHEUS_OWN = {"up"}  # made by Prometheus for every target

# ---------------------------------------------------------------- reading PromQL

# Words that are PromQL (functions and aggregations are recognised by the "(" after them).
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or", "unless",
            "inf", "nan", "atan2"}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GRAFANA_VARIABLE = re.compile(r"\$\{\w+(?::\w+)?\}|\$\w+")
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)(\s*\()?")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: label names (in ``{...}``, ``by (...)``, ``on (...)``),
    strings, ranges, durations, numbers, functions and keywords aside."""
    text = _STRING.sub('""', expr)
    text = _GRAFANA_VARIABLE.sub("1m", text)  # $__rate_interval and the like stand in ranges
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = re.sub(r"\boffset\s+-?\d+\w*", " ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in KEYWORDS:
            continue
        names.add(name)
    return names


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up", {"up"}),
        ('sum by (service, lane) (rate(cartwheel_lane_commands_total{lane="inventory"}[5m])) > 0.1',
         {"cartwheel_lane_commands_total"}),
        ("histogram_quantile(0.95, sum by (le, route) (rate(x_bucket[$__rate_interval])))", {"x_bucket"}),
        ('a{status=~"5..", status!="503"} / on (instance) group_left (version) b offset 5m', {"a", "b"}),
        ("sum(rate(a[1h:5m])) without (pod) unless c == 1e3", {"a", "c"}),
        ('time() - process_start_time_seconds{service=~"$service"}', {"process_start_time_seconds"}),
        ('label_replace(m, "dst", "$1", "src", "(.*)")', {"m"}),
        ("sum by(lane)(increase(d[15m])) or vector(0)", {"d"}),
    ],
)
def test_metric_names_are_read_from_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


# ---------------------------------------------------------------- what Cartwheel exports

SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}


def sample_names(families: Any) -> set[str]:
    """The names a scrape shows for these metric families (a Counter named ``x`` is ``x_total``, ...)."""
    return {family.name + suffix for family in families for suffix in SAMPLE_SUFFIXES.get(family.type, ("",))}


@cache
def cartwheel_metrics() -> dict[str, frozenset[str]]:
    """What each service's registry and the gateway's export: the services built as ``cartwheel run`` builds them
    (constructing only: nothing connects before start), the gateway's request metrics and its stream gauge."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("CARTWHEEL_")}
    for var in saved:
        del os.environ[var]
    try:
        import tempfile

        settings = Settings(var_dir=Path(tempfile.mkdtemp(prefix="cartwheel-metrics-")))
        exported = {}
        for name in SERVICES:
            service = importlib.import_module(f"services.{name}.app").build(settings)
            exported[name] = frozenset(sample_names(service.registry.collect()))
            service.db.close()
    finally:
        os.environ.update(saved)
    from services.gateway.metrics import GatewayMetrics
    from services.gateway.sse import OPEN_STREAMS

    exported["gateway"] = frozenset(sample_names([*GatewayMetrics().registry.collect(), *OPEN_STREAMS.describe()]))
    return exported


def exported_anywhere() -> set[str]:
    return set().union(*cartwheel_metrics().values())


# ---------------------------------------------------------------- the files


@cache
def alerts() -> dict[str, Any]:
    return yaml.safe_load((OBSERVABILITY / "alerts.yml").read_text())


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in alerts()["groups"] for rule in group["rules"]]


@cache
def dashboard() -> dict[str, Any]:
    return json.loads((OBSERVABILITY / "grafana-dashboard.json").read_text())


def dashboard_panels() -> list[dict[str, Any]]:
    panels = []
    for panel in dashboard()["panels"]:
        panels += [panel, *panel.get("panels", [])]
    return [p for p in panels if p["type"] != "row"]


def expressions() -> dict[str, str]:
    """Every PromQL expression of the alerts and the dashboard, by where it is."""
    found = {f"alert {r['alert']}": r["expr"] for r in alert_rules()}
    for panel in dashboard_panels():
        for target in panel["targets"]:
            found[f"panel {panel['title']!r} {target['refId']}"] = target["expr"]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            found[f"variable {variable['name']}"] = re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", query)
    return found


def github_anchor(heading: str) -> str:
    """The fragment GitHub gives a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def operating_text() -> str:
    """docs/operating.md with its code blocks blanked (a shell comment there is no heading)."""
    return re.sub(r"^```.*?^```", lambda m: re.sub(r"[^\n]", " ", m.group(0)), OPERATING.read_text(),
                  flags=re.M | re.S)


@cache
def operating_anchors() -> frozenset[str]:
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*$", operating_text(), re.M)
    return frozenset(github_anchor(h) for h in headings)


def operating_section(anchor: str) -> str:
    """The text of the docs/operating.md section with that anchor, to the next heading."""
    text = operating_text()  # the same length as the file: offsets in one are offsets in the other
    for match in re.finditer(r"^(#{1,6})\s+(.+?)\s*$", text, re.M):
        if github_anchor(match.group(2)) == anchor:
            end = re.compile(r"^#{1,6}\s", re.M).search(text, match.end())
            return OPERATING.read_text()[match.end(): end.start() if end else len(text)]
    raise AssertionError(f"no section #{anchor} in docs/operating.md")


# ---------------------------------------------------------------- tests


def test_every_metric_the_alerts_and_dashboard_name_is_exported() -> None:
    """A metric misspelt, renamed or not (yet) registered would leave a panel empty and an alert silent for ever."""
    cartwheel = exported_anywhere()
    missing: dict[str, set[str]] = {}
    for where, expr in expressions().items():
        names = metric_names(expr)
        assert names, f"{where}: selects no metric: {expr}"
        for name in names:
            known = EXPORTER_METRICS if name.startswith(("gnatsd_", "jetstream_")) else cartwheel | PROMETHEUS_OWN
            if name not in known:
                missing.setdefault(name, set()).add(where)
    said = [f"{name} (in {', '.join(sorted(where))})" for name, where in sorted(missing.items())]
    assert not missing, "not exported: " + "; ".join(said)


def test_every_service_exports_the_common_metrics() -> None:
    """Readiness, NATS, database pool, outbox and consumer metrics, on every service (the alerts are per service)."""
    common = {"cartwheel_build_info", "process_cpu_seconds_total", "process_resident_memory_bytes",
              "process_start_time_seconds", "cartwheel_ready", "cartwheel_nats_connected",
              "cartwheel_nats_reconnects_total", "cartwheel_db_pool_checked_out", "cartwheel_db_pool_size",
              "cartwheel_outbox_pending", "cartwheel_outbox_oldest_age_seconds",
              "cartwheel_outbox_publish_failures_total", "cartwheel_event_consumer_pending",
              "cartwheel_event_consumer_redeliveries_total", "cartwheel_handler_failures_total",
              "cartwheel_requests_total", "cartwheel_request_duration_seconds_bucket"}
    lanes = {"cartwheel_lane_lag_commands", "cartwheel_lane_oldest_unapplied_seconds",
             "cartwheel_lane_lease_renewal_failures_total", "cartwheel_lane_lease_renewal_age_seconds",
             "cartwheel_lane_partitions_owned", "cartwheel_lane_apply_seconds_bucket"}
    missing = {name: sorted(common - exported) for name, exported in cartwheel_metrics().items() if name != "gateway"}
    missing |= {f"{name} (lane)": sorted(lanes - cartwheel_metrics()[name]) for name in ("inventory", "cart")}
    assert not any(missing.values()), {k: v for k, v in missing.items() if v}


def test_alerts_are_complete_and_have_a_runbook() -> None:
    names = [r["alert"] for r in alert_rules()]
    assert len(names) == len(set(names)), "alert names are unique"
    for group in alerts()["groups"]:
        assert group["name"] and group["rules"], group
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
            assert re.fullmatch(r"[A-Z]\w+", rule["alert"]), rule["alert"]
            assert isinstance(rule["expr"], str) and rule["expr"].strip(), rule["alert"]
            assert re.fullmatch(r"\d+[smh]", str(rule["for"])), f"{rule['alert']}: for as a duration"
            assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
            annotations = rule["annotations"]
            assert annotations["summary"].strip(), rule["alert"]
            path, _, anchor = annotations["runbook_url"].partition("#")
            assert path == "docs/operating.md" and anchor == rule["alert"].lower(), rule["alert"]
            assert anchor in operating_anchors(), f"{rule['alert']}: no section #{anchor} in docs/operating.md"
            assert "`" in operating_section(anchor), f"{rule['alert']}: its runbook says what to run"


def test_the_alert_rules_cover_what_issue_15_asks() -> None:
    """Readiness, lane lag and stale leases, outbox age, 5xx/503, webhook signature failures, redeliveries."""
    exprs = " ".join(r["expr"] for r in alert_rules())
    for metric in ("cartwheel_ready", "cartwheel_lane_lag_commands", "cartwheel_lane_lease_renewal_age_seconds",
                   "cartwheel_outbox_oldest_age_seconds", "cartwheel_gateway_http_requests_total",
                   'result="invalid_signature"', "cartwheel_event_consumer_redeliveries_total"):
        assert metric in exprs, metric
    assert 'status=~"5.."' in exprs and 'status="503"' in exprs


def test_the_dashboard_is_importable_and_every_panel_queries() -> None:
    board = dashboard()
    (source,) = board["__inputs"]
    assert (source["name"], source["type"], source["pluginId"]) == ("DS_PROMETHEUS", "datasource", "prometheus")
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 36
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in dashboard_panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"]
        assert panel["targets"], f"{panel['title']}: no query"
        for target in panel["targets"]:
            assert target["expr"].strip() and target["datasource"] == panel["datasource"], panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
    titles = " ".join(p["title"] for p in board["panels"] if p["type"] == "row").lower()
    for part in ("route", "subject", "lanes", "outbox", "checkout funnel", "nats", "jetstream"):
        assert part in titles, f"a row for {part}"


# ---------------------------------------------------------------- the exporter beside each NATS node


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def monitor_port(env: dict[str, str]) -> int:
    """The monitoring port a NATS node of deploy/nats/cluster.conf listens on, in that environment."""
    (value,) = re.findall(r"^http:\s*\$(\w+)\s*$", (ROOT / "deploy" / "nats" / "cluster.conf").read_text(), re.M)
    return int(env[value].rsplit(":", 1)[1])


def exporter_args(args: list[str], port: int) -> None:
    assert args[-1] == f"http://127.0.0.1:{port}", "the node's monitoring port, on its own loopback"
    for flag in ("-varz", "-connz", "-routez", "-healthz", "-jsz=all", "-use_internal_server_name"):
        assert flag in args, flag
    assert args[args.index("-port") + 1] == str(EXPORTER_PORT)


def test_compose_runs_an_exporter_in_each_nats_nodes_network() -> None:
    services = compose()["services"]
    nodes = {n: s for n, s in services.items() if str(s.get("image", "")).startswith("nats:")}
    exporters = {n: s for n, s in services.items() if str(s.get("image", "")).startswith(EXPORTER_IMAGE + ":")}
    assert len(nodes) == 3 and len(exporters) == len(nodes)
    watched = set()
    for name, exporter in exporters.items():
        node = exporter["network_mode"].removeprefix("service:")
        assert node in nodes and exporter["depends_on"][node]["condition"] == "service_healthy", name
        exporter_args(exporter["command"], monitor_port(nodes[node]["environment"]))
        watched.add(node)
    assert watched == set(nodes)
    scrape = yaml.safe_load((OBSERVABILITY / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in scrape["scrape_configs"]}
    assert sorted(jobs["nats"]["static_configs"][0]["targets"]) == [f"{n}:{EXPORTER_PORT}" for n in sorted(nodes)]
    metrics_port = 9100  # CARTWHEEL_METRICS_PORT's default, which Compose keeps
    assert Settings.model_fields["metrics_port"].default == metrics_port
    for job, names in (("cartwheel-services", set(SERVICES)), ("cartwheel-gateway", {"gateway"})):
        (sd,) = jobs[job]["dns_sd_configs"]
        assert set(sd["names"]) == names and sd["port"] == metrics_port, job
        assert names <= set(services), job
    assert scrape["rule_files"] == ["alerts.yml"]


def test_kubernetes_runs_the_exporter_beside_each_nats_node() -> None:
    docs = [d for d in yaml.safe_load_all((ROOT / "deploy" / "k8s" / "nats.yaml").read_text()) if d]
    (sts,) = [d for d in docs if d["kind"] == "StatefulSet"]
    pod = sts["spec"]["template"]
    containers = {c["name"]: c for c in pod["spec"]["containers"]}
    nats, exporter = containers["nats"], containers["exporter"]
    env = {e["name"]: e["value"] for e in nats["env"] if "value" in e}
    exporter_args(exporter["args"], monitor_port(env))
    assert exporter["image"] == compose()["x-nats-exporter"]["image"], "the same exporter as Compose"
    assert exporter["args"] == compose()["x-nats-exporter"]["command"], "the same flags as Compose"
    assert [p["containerPort"] for p in exporter["ports"]] == [EXPORTER_PORT]
    annotations = pod["metadata"]["annotations"]
    assert (annotations["prometheus.io/scrape"], annotations["prometheus.io/port"]) == ("true", str(EXPORTER_PORT))
    assert exporter["securityContext"]["readOnlyRootFilesystem"] is True
    assert exporter["resources"]["limits"] and exporter["readinessProbe"] and exporter["livenessProbe"]
    policies = [d for d in yaml.safe_load_all((ROOT / "deploy" / "k8s" / "networkpolicy.yaml").read_text()) if d]
    (policy,) = [p for p in policies if p["metadata"]["name"] == "nats"]
    rules = [r for r in policy["spec"]["ingress"] if any(p["port"] == EXPORTER_PORT for p in r["ports"])]
    assert rules and all({} not in r["from"] for r in rules), "the exporter's port: Prometheus and the namespace"
    scrape = yaml.safe_load((OBSERVABILITY / "prometheus-kubernetes.yml").read_text())
    jobs = {r.get("replacement") for job in scrape["scrape_configs"] for r in job["relabel_configs"]
            if r.get("target_label") == "job"}
    in_alerts = set(re.findall(r'job(?:=~?)"([^"]+)"', " ".join(r["expr"] for r in alert_rules())))
    assert jobs == {"cartwheel-gateway", "nats", "cartwheel-services"}
    assert all(any(re.fullmatch(j, job) for job in jobs) for j in in_alerts), in_alerts
