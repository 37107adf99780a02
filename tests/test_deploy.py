"""deploy/: Prometheus config, alert rules and the Grafana dashboard, against the daemon's real metrics."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from lifelong.benchmarks import digits
from lifelong.config import load_settings
from lifelong.connectors.broker import free_port
from lifelong.http.api import HttpApi
from lifelong.monitor.metrics import KnownGauge, Metrics
from tests.kafka_setup import Running, Setup, events, wait_for

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
RULES = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "lifelong.json"
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None or PROMTOOL is None,
    reason="Debian's prometheus is not installed (make test installs it where it can: root and apt)",
)


# What the dashboards and alerts must show (issue 7).
NEEDED = [
    "lifelong_events_total",
    "lifelong_dead_letters_total",
    "lifelong_consumer_lag",
    "lifelong_memory_class_samples",
    "lifelong_prequential_accuracy",
    "lifelong_drift_novelty_ratio",
    "lifelong_drift_label_shift_distance",
    "lifelong_drift_accuracy_drop",
    "lifelong_drift_alarms_total",
    "lifelong_update_duration_seconds_bucket",
    "lifelong_updates_total",
    "lifelong_model_version",
    "lifelong_rollbacks_total",
]


def dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    return [t["expr"] for panel in board["panels"] for t in panel["targets"]]


def annotation_exprs() -> list[str]:
    return [a["expr"] for a in json.loads(DASHBOARD.read_text())["annotations"]["list"]]


def rule_exprs() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def metric_names(expr: str) -> set[str]:
    """The lifelong_* series an expression reads (histogram and counter suffixes included)."""
    return set(re.findall(r"\blifelong_[a-z_]+\b", expr))


def exported_names() -> set[str]:
    """Every series name the daemon's metrics can expose (gauges absent until known given a value)."""
    registry = CollectorRegistry()
    metrics = Metrics(registry=registry)
    for gauge in vars(metrics).values():
        if isinstance(gauge, KnownGauge):
            gauge.set(1.0)
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    return {f.name + suffix for f in registry.collect() for suffix in suffixes.get(f.type, [""])}


def test_every_dashboard_and_alert_expression_reads_metrics_the_daemon_exports() -> None:
    exported = exported_names()
    exprs = dashboard_exprs() + annotation_exprs() + rule_exprs()
    assert len(exprs) >= 15
    for expr in exprs:
        unknown = metric_names(expr) - exported
        assert not unknown, f"{expr!r} reads {unknown}, which the daemon does not export"
    read = set().union(*(metric_names(e) for e in exprs))
    for needed in NEEDED:
        assert needed in read, f"no panel, annotation or alert shows {needed}"


@needs_prometheus
def test_promtool_accepts_the_config_and_the_rules() -> None:
    assert PROMTOOL is not None
    for args in (
        ["check", "rules", str(RULES)],
        ["check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
    ):
        done = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stdout + done.stderr


class Prometheus:
    """Debian's prometheus on loopback, scraping one target every second, with the repository's rules."""

    def __init__(self, directory: Path, target: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        config = directory / "prometheus.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(RULES)],
                    "scrape_configs": [{"job_name": "lifelong", "static_configs": [{"targets": [target]}]}],
                }
            )
        )
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = open(directory / "prometheus.log", "w")  # noqa: SIM115
        assert PROMETHEUS is not None
        self.process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.base}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[Any]:
        data = self.api("query", query=expr)
        return data["result"]  # type: ignore[no-any-return]

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self.log.close()


@pytest.fixture
def prometheus_for(tmp_path: Path) -> Iterator[Any]:
    started: list[Prometheus] = []

    def start(target: str) -> Prometheus:
        server = Prometheus(tmp_path / "prometheus", target)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


@needs_prometheus
@pytest.mark.kafka
@pytest.mark.slow
def test_prometheus_scrapes_the_daemon_and_every_expression_returns_data(setup, prometheus_for) -> None:  # type: ignore[no-untyped-def]
    x, y, _, _ = digits()
    schedule = {"interval_s": 1, "min_new_labels": 200, "first_round_labels": 200}
    run: Setup = setup("prometheus", schedule=schedule)
    daemon = Running(run, run.state.parent / "prometheus-daemon.log")
    try:
        prometheus = prometheus_for(daemon.base.removeprefix("http://"))
        run.produce([*events(x[:600], y[:600], "p", feedback_every=3), ("samples", b"bad", b"{not json")])
        wait_for(lambda: (daemon.value("lifelong_updates_total", result="promoted") or 0) >= 1)
        run.produce(events(x[600:900], y[600:900], "q"))  # live accuracy and rates after the first version
        # Absent until the first version has predicted a sample and its label has scored it.
        wait_for(lambda: daemon.value("lifelong_prequential_accuracy") is not None)
        wait_for(
            lambda: any(t["health"] == "up" for t in prometheus.api("targets")["activeTargets"]),
            what=lambda: json.dumps(prometheus.api("targets")),
        )

        def answered(expr: str) -> bool:
            return bool(prometheus.query(expr))

        # Rates need two scrapes of a change; the histogram a round inside the window.
        for expr in dashboard_exprs():
            wait_for(lambda expr=expr: answered(expr), timeout_s=60, what=lambda expr=expr: expr)  # type: ignore[misc]
        # Alert and annotation expressions compare against thresholds that a healthy daemon does not cross:
        # each must evaluate, and every series it reads must be there.
        for expr in rule_exprs() + annotation_exprs():
            prometheus.query(expr)
            for name in metric_names(expr) - {"lifelong_update_duration_seconds_bucket"}:
                assert answered(name), f"{name} (read by {expr!r}) has no series"
        rules = prometheus.api("rules")["groups"][0]["rules"]
        assert {r["name"] for r in rules} >= {
            "LifelongDown",
            "LifelongLiveAccuracyDropped",
            "LifelongDriftAlarm",
        }
        assert all(r["health"] == "ok" for r in rules), [r for r in rules if r["health"] != "ok"]
        assert not [r for r in rules if r["name"] == "LifelongDown" and r["state"] != "inactive"]
    finally:
        daemon.stop(grace_s=20)


# -- the packaging matches what the daemon really uses ----------------------------------------

CONFIG_PATH = "/etc/lifelong/lifelong.toml"


def settings_from(text: str, tmp_path: Path) -> Any:
    path = tmp_path / "lifelong.toml"
    path.write_text(text)
    return load_settings(path, environ={})


def probe_paths_answered() -> set[str]:
    """The paths the daemon's HTTP app answers with a probe (200 or 503), not 404."""

    class Admin:
        def health(self) -> tuple[bool, dict[str, Any]]:
            return True, {}

        readiness = health

        def versions(self) -> dict[str, Any]:
            return {}

        def rollback(self, version: int | None, reason: str) -> dict[str, Any]:
            return {}

    app = HttpApi(admin=Admin(), registry=CollectorRegistry(), token="t")
    answered = set()
    statuses: list[str] = []
    for path in ("/healthz", "/readyz", "/metrics", "/versions"):
        statuses.clear()
        app({"REQUEST_METHOD": "GET", "PATH_INFO": path}, lambda status, headers: statuses.append(status))
        if statuses and not statuses[0].startswith("404"):
            answered.add(path)
    return answered


def test_the_container_config_is_valid_and_serves_on_all_interfaces(tmp_path: Path) -> None:
    settings = settings_from((DEPLOY / "lifelong.toml").read_text(), tmp_path)
    assert settings.http.host == "0.0.0.0" and settings.http.port == 9464
    assert str(settings.state.dir) == "/var/lib/lifelong"
    assert settings.http.admin_token is None  # from the LIFELONG_ADMIN_TOKEN secret, never the file
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^USER lifelong$", dockerfile, re.M) and "useradd --system --uid 10001" in dockerfile
    assert re.search(rf"^EXPOSE {settings.http.port}$", dockerfile, re.M)
    assert f"COPY deploy/lifelong.toml {CONFIG_PATH}" in dockerfile
    assert f'CMD ["run", "--config", "{CONFIG_PATH}"]' in dockerfile
    assert f'"lifelong", "check", "--config", "{CONFIG_PATH}"' in dockerfile
    assert f'VOLUME ["{settings.state.dir}"]' in dockerfile
    assert "ARG VARIANT=cpu" in dockerfile and '"$VARIANT" != "cuda"' in dockerfile


def test_compose_wires_kafka_the_daemon_prometheus_and_grafana_as_the_daemon_expects(tmp_path: Path) -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"kafka", "lifelong", "producer", "prometheus", "grafana"} <= set(services)
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft
    settings = settings_from((DEPLOY / "lifelong.toml").read_text(), tmp_path)
    assert settings.kafka.bootstrap_servers == "kafka:9092"
    assert "PLAINTEXT://kafka:9092" in services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]

    daemon = services["lifelong"]
    port = settings.http.port
    assert f"{port}:{port}" in daemon["ports"]
    assert f"lifelong-state:{settings.state.dir}" in daemon["volumes"]
    assert f"./lifelong.toml:{CONFIG_PATH}:ro" in daemon["volumes"]
    assert daemon["command"] == ["run", "--config", CONFIG_PATH]
    assert "LIFELONG_ADMIN_TOKEN" in daemon["environment"]
    assert daemon["healthcheck"]["test"][1:3] == ["lifelong", "check"]
    assert int(daemon["stop_grace_period"].removesuffix("s")) > settings.schedule.grace_s
    assert (DEPLOY / daemon["build"]["context"] / daemon["build"]["dockerfile"]).is_file()

    producer = services["producer"]["command"]
    assert producer[0] == "produce" and CONFIG_PATH in producer
    dataset = producer[producer.index("--dataset") + 1]
    assert dataset == "split-digits" and settings.data.features == 64  # digits have 64 features

    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = prometheus["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == [f"lifelong:{port}"] and prometheus["scrape_configs"][0]["metrics_path"] == "/metrics"
    assert "./prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    assert prometheus["rule_files"] == ["alerts.yml"] and RULES.is_file()

    grafana = services["grafana"]["volumes"]
    source = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert source["datasources"][0]["url"] == "http://prometheus:9090"
    assert "9090:9090" in services["prometheus"]["ports"]
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/lifelong.yml").read_text())
    dashboards = provider["providers"][0]["options"]["path"]
    assert f"./grafana/dashboards:{dashboards}:ro" in grafana
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in grafana
    board = json.loads(DASHBOARD.read_text())
    uids = {t["datasource"]["uid"] for p in board["panels"] for t in p["targets"]}
    assert uids == {source["datasources"][0]["uid"]}


def test_kubernetes_manifests_match_the_daemon_ports_probes_volumes_and_secret(tmp_path: Path) -> None:
    docs = {
        (d["kind"], d["metadata"]["name"]): d
        for path in sorted((DEPLOY / "k8s").glob("*.yaml"))
        if path.name != "kustomization.yaml"
        for d in yaml.safe_load_all(path.read_text())
    }
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(
        p.name for p in (DEPLOY / "k8s").glob("*.yaml") if p.name != "kustomization.yaml"
    )
    config = docs[("ConfigMap", "lifelong-config")]
    settings = settings_from(config["data"]["lifelong.toml"], tmp_path)
    deployment = docs[("Deployment", "lifelong")]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == settings.http.port and settings.http.host == "0.0.0.0"
    probes = {container["livenessProbe"]["httpGet"]["path"], container["readinessProbe"]["httpGet"]["path"]}
    assert probes == {"/healthz", "/readyz"} and probes <= probe_paths_answered()
    assert container["livenessProbe"]["httpGet"]["port"] == "http"
    assert pod["terminationGracePeriodSeconds"] > settings.schedule.grace_s

    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["state"] == str(settings.state.dir)
    claim = volumes["state"]["persistentVolumeClaim"]["claimName"]
    assert ("PersistentVolumeClaim", claim) in docs
    assert container["args"] == ["run", "--config", f"{mounts['config']}/lifelong.toml"]
    assert volumes["config"]["configMap"]["name"] == "lifelong-config"

    env = {e["name"]: e for e in container["env"]}
    secret_ref = env["LIFELONG_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]
    secret = docs[("Secret", secret_ref["name"])]
    assert secret_ref["key"] in secret["stringData"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001

    service = docs[("Service", "lifelong")]
    assert service["spec"]["ports"][0]["port"] == settings.http.port
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(settings.http.port)
    assert annotations["prometheus.io/path"] == "/metrics" and "/metrics" in probe_paths_answered()


def test_the_systemd_unit_runs_the_daemon_as_a_user_and_outwaits_its_grace_period(tmp_path: Path) -> None:
    unit = (DEPLOY / "systemd" / "lifelong.service").read_text()
    fields = dict(
        line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#")
    )
    assert fields["ExecStart"].endswith(f"lifelong run --config {CONFIG_PATH}")
    assert fields["User"] == "lifelong" and fields["KillSignal"] == "SIGTERM"
    settings = settings_from((DEPLOY / "lifelong.toml").read_text(), tmp_path)
    assert int(fields["TimeoutStopSec"]) > settings.schedule.grace_s
    assert fields["StateDirectory"] == Path(settings.state.dir).name
    assert "LIFELONG_ADMIN_TOKEN" in unit and fields["EnvironmentFile"] == "/etc/lifelong/env"


@pytest.mark.kafka
@pytest.mark.slow
def test_the_demo_producer_streams_what_the_daemon_ingests(setup) -> None:  # type: ignore[no-untyped-def]
    run: Setup = setup("producer", learner={"enabled": False})
    x, _, _, _ = digits()
    sent = run.run("produce", "--rate", "5000", "--feedback-delay", "0.2")
    assert sent.returncode == 0, sent.stderr[-2000:]
    assert json.loads(sent.stdout) == {"samples": len(x)}
    burst = run.run("run", "--burst")
    assert burst.returncode == 0, burst.stderr[-2000:]
    status = run.status()
    assert status["samples"] == len(x) and status["labeled"] == len(x) and status["waiting"] == 0
    assert status["dead_letters"] == 0
