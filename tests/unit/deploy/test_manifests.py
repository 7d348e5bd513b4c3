"""deploy/kubernetes/ against the Kubernetes schemas and against the code: each container's flags
parse as its service's settings (a renamed flag fails here), ports agree between flags, probes and
Services, the NetworkPolicies admit exactly the matrix docs/deploy.md gives, the Redis password
comes only from its Secret, and only the gpu overlay asks for GPUs."""

import json
import os
import re

import kubernetes_validate
import pytest
import yaml

from kvmesh.prometheus_sd import role_name
from kvmesh.settings import load
from services.gateway.config import GatewaySettings
from services.kvindex.config import KvIndexSettings
from services.planner.config import PlannerSettings
from services.planner.connectors.kubernetes import DEPLOYMENTS
from services.router.config import RouterSettings
from services.worker import model_config
from services.worker.config import WorkerSettings
from tests import ROOT
from tests.unit.deploy.manifests import (
    COMPONENT,
    OVERLAYS,
    POD_IP,
    REDIS_PASSWORD,
    Pod,
    admits,
    containers,
    named,
    of_kind,
    render,
    selects,
    workloads,
)

KUBERNETES = "1.31.0"
SETTINGS = {
    "services.gateway": GatewaySettings,
    "services.router": RouterSettings,
    "services.kvindex": KvIndexSettings,
    "services.planner": PlannerSettings,
    "services.worker": WorkerSettings,
}
# The ports each service listens on, by setting; the gRPC ones answer the kubelet's grpc probes.
LISTENS = {
    GatewaySettings: ("http_port", "grpc_port"),
    RouterSettings: ("port", "metrics_port"),
    KvIndexSettings: ("port", "metrics_port"),
    PlannerSettings: ("port", "metrics_port"),
    WorkerSettings: ("grpc_port", "http_port", "metrics_port", "kv_events_port", "kv_events_replay_port", "nixl_port"),
}
GRPC = {GatewaySettings: "grpc_port", RouterSettings: "port", KvIndexSettings: "port", PlannerSettings: "port"}
HTTP = {GatewaySettings: "http_port", WorkerSettings: "http_port"}
# Where each service serves /metrics, by setting: the gateway on its HTTP port, a worker's Triton on its metrics port.
METRICS = {GatewaySettings: "http_port", RouterSettings: "metrics_port", KvIndexSettings: "metrics_port",
           PlannerSettings: "metrics_port", WorkerSettings: "metrics_port"}  # fmt: skip
MONITORING = "monitoring.coreos.com/v1"
REST_FLAGS = set(re.findall(r'flag\.String\("([\w-]+)"', (ROOT / "services" / "rest" / "main.go").read_text()))
REDIS_URL = f"redis://:{REDIS_PASSWORD}@kvmesh-redis:6379/0"
USES_REDIS = {"gateway", "router", "kvindex", "planner", "worker"}


@pytest.fixture(params=OVERLAYS)
def overlay(request):
    return request.param


@pytest.fixture
def docs(overlay):
    return render(overlay)


def parsed(container, monkeypatch):
    """The container's settings as its process would load them: its environment, its flags."""
    cls = SETTINGS[container.args[0]]
    with monkeypatch.context() as m:
        for name in [n for n in os.environ if n.startswith("KVMESH_") or n == "REDIS_URL"]:
            m.delenv(name)
        for name, value in container.env.items():
            m.setenv(name, value)
        try:
            return cls, load(cls, container.args[1:])
        except SystemExit as e:
            pytest.fail(f"{container.workload['metadata']['name']}: its args do not parse as {cls.__name__}: {e}")


def services_py(docs):
    return [c for c in containers(docs) if c.args and c.args[0] in SETTINGS]


def test_every_object_is_valid_kubernetes(docs):
    for doc in docs:
        if doc["apiVersion"] != MONITORING:  # the Prometheus Operator's kinds: test_every_metrics_port_is_scraped
            kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_every_service_parses_its_flags_binds_its_pod_ip_and_listens_on_its_declared_ports(docs, monkeypatch):
    assert {c.args[0] for c in services_py(docs)} == set(SETTINGS)
    for container in services_py(docs):
        cls, settings = parsed(container, monkeypatch)
        assert settings.host == settings.advertise_host == POD_IP
        assert settings.redis_url == REDIS_URL
        listening = {getattr(settings, name) for name in LISTENS[cls]}
        assert 0 not in listening, f"{cls.__name__}: every port fixed"
        assert container.container_ports == listening, container.workload["metadata"]["name"]


def test_probes_ask_the_ports_that_answer_them(docs, monkeypatch):
    for container in containers(docs):
        spec, name = container.spec, container.workload["metadata"]["name"]
        assert "readinessProbe" in spec and "livenessProbe" in spec, name
        cls, settings = parsed(container, monkeypatch) if container.args[0] in SETTINGS else (None, None)
        for probe in (spec[k] for k in ("readinessProbe", "livenessProbe", "startupProbe") if k in spec):
            if "grpc" in probe:
                assert probe["grpc"]["port"] == getattr(settings, GRPC[cls]), name
            elif "httpGet" in probe:
                port = probe["httpGet"]["port"]
                assert port in container.container_ports and (cls is None or port == getattr(settings, HTTP[cls])), name
            else:
                assert "exec" in probe or probe["tcpSocket"]["port"] in container.container_ports, name


def test_services_reach_ports_their_pods_declare(docs):
    for service in of_kind(docs, "Service"):
        pods = [c for c in containers(docs) if selects({"matchLabels": service["spec"]["selector"]}, c.labels)]
        assert pods, f"service {service['metadata']['name']} selects no pod"
        for port in service["spec"]["ports"]:
            assert all(port["targetPort"] in c.container_ports for c in pods), service["metadata"]["name"]


def service_port(docs, address: str) -> int:
    host, port = address.rsplit(":", 1)
    service = named(docs, "Service", host)
    assert int(port) in {p["port"] for p in service["spec"]["ports"]}, address
    return int(port)


def test_components_dial_each_other_by_service_name(docs, monkeypatch):
    by_args = {c.args[0]: parsed(c, monkeypatch)[1] for c in services_py(docs)}
    router, gateway, kvindex, planner = (by_args[f"services.{n}"] for n in ("router", "gateway", "kvindex", "planner"))
    # A session to each router: one address per router, never the load-balanced Service.
    routers = named(docs, "StatefulSet", "kvmesh-router")
    router_pods = routers["spec"]["serviceName"]
    assert named(docs, "Service", router_pods)["spec"]["clusterIP"] == "None"
    assert gateway.router_address.split(",") == [
        f"kvmesh-router-{i}.{router_pods}:{router.port}" for i in range(routers["spec"]["replicas"])
    ]
    # The planner sums every gateway's counters: one URL per gateway, never the load-balanced Service.
    gateways = named(docs, "StatefulSet", "kvmesh-gateway")
    headless = gateways["spec"]["serviceName"]
    assert named(docs, "Service", headless)["spec"]["clusterIP"] == "None"
    assert planner.gateway_metrics == [
        f"http://kvmesh-gateway-{i}.{headless}:{gateway.http_port}/metrics" for i in range(gateways["spec"]["replicas"])
    ]
    rest = next(c for c in containers(docs) if c.component == "rest")
    flags = dict(zip(rest.args[::2], rest.args[1::2], strict=True))
    assert {f.lstrip("-") for f in flags} <= REST_FLAGS, "a flag services/rest/main.go does not declare"
    assert flags["-listen"] == f"{POD_IP}:8082" and rest.container_ports == {8082}
    for flag, port in {"-gateway": gateway.grpc_port, "-router": router.port, "-kvindex": kvindex.port}.items():
        assert service_port(docs, flags[flag]) == port
    assert service_port(docs, flags["-planner"]) == planner.port


def sources(docs) -> dict[str, Pod]:
    """One pod of each component, plus a client elsewhere, a stranger in the namespace, Prometheus."""
    namespace = workloads(docs)[0]["metadata"]["namespace"]
    pods = {c.component: Pod(c.component, namespace, tuple(c.labels.items())) for c in containers(docs)}
    return pods | {
        "client": Pod("client", "elsewhere", ()),
        "stranger": Pod("stranger", namespace, (("app", "other"),)),
        "prometheus": Pod("prometheus", "monitoring", (("app.kubernetes.io/name", "prometheus"),)),
    }


def test_network_policies_admit_exactly_the_matrix(docs):
    everyone = set(sources(docs))
    expected = {
        ("redis", 6379): USES_REDIS,
        ("router", 8090): {"gateway", "rest"},
        ("router", 9090): {"prometheus"},
        ("kvindex", 8091): {"rest"},
        ("kvindex", 9091): {"prometheus"},
        ("planner", 8092): {"rest"},
        ("planner", 9092): {"prometheus"},
        ("gateway", 8080): everyone,  # the planner's and Prometheus's scrapes among them
        ("gateway", 8081): everyone,
        ("rest", 8082): everyone,
        # Workers reach each other on every port: UCX picks its own TCP ports for the KV.
        ("worker", 8000): {"worker"},  # the kubelet's probes only
        ("worker", 8001): {"gateway", "worker"},
        ("worker", 8002): {"prometheus", "worker"},
        ("worker", 5557): {"kvindex", "worker"},
        ("worker", 5558): {"kvindex", "worker"},
        ("worker", 5600): {"worker"},
    }
    policies, pods = of_kind(docs, "NetworkPolicy"), sources(docs)
    ports = {(c.component, p) for c in containers(docs) for p in c.container_ports}
    assert ports == set(expected), "every port a pod declares has its row in the matrix"
    for (target, port), allowed in expected.items():
        admitted = {name for name, pod in pods.items() if admits(policies, pod, pods[target], port)}
        assert admitted == allowed, f"{target}:{port}"


def test_every_component_has_its_network_policy_and_the_rest_is_denied(docs):
    policies = of_kind(docs, "NetworkPolicy")
    deny = [p for p in policies if p["spec"]["podSelector"] == {} and not p["spec"].get("ingress")]
    assert deny and deny[0]["spec"]["policyTypes"] == ["Ingress"]
    for container in containers(docs):
        own = [p for p in policies if p["spec"]["podSelector"] and selects(p["spec"]["podSelector"], container.labels)]
        assert [p["metadata"]["name"] for p in own] == [f"kvmesh-{container.component}"]


def test_triton_inference_is_opened_to_the_gateways_alone(docs):
    worker = named(docs, "NetworkPolicy", "kvmesh-worker")
    rules = [r for r in worker["spec"]["ingress"] if any(p["port"] == 8001 for p in r.get("ports", []))]
    gateway_pods = named(docs, "StatefulSet", "kvmesh-gateway")["spec"]["selector"]
    assert [r["from"] for r in rules] == [[{"podSelector": gateway_pods}]]


def test_only_the_gpu_overlay_asks_for_gpus(overlay, docs):
    for container in containers(docs):
        gpus = container.spec["resources"].get("limits", {}).get("nvidia.com/gpu")
        assert gpus == (1 if overlay == "gpu" and container.component == "worker" else None)


def test_every_container_requests_cpu_and_memory_and_has_a_memory_limit(docs):
    for container in containers(docs):
        resources = container.spec["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"]


def test_the_redis_password_comes_from_its_secret_only(docs):
    assert not of_kind(docs, "Secret"), "the operator creates the Secrets; no secret in the manifests"
    rendered = yaml.safe_dump_all(docs)
    assert set(re.findall(r"redis://\S*", rendered)) == {"redis://:$(REDIS_PASSWORD)@kvmesh-redis:6379/0"}
    redis = next(c for c in containers(docs) if c.component == "redis")
    assert redis.spec["args"][redis.spec["args"].index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    for container in containers(docs):
        entries = {e["name"]: e for e in container.spec.get("env", [])}
        assert ("REDIS_URL" in entries) == (container.component in USES_REDIS - {"redis"})
        if "REDIS_PASSWORD" in entries:
            assert entries["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "kvmesh-redis", "key": "password"}


def test_services_on_pod_addresses_check_keys_with_the_auth_secret(docs, monkeypatch):
    """Pod IPs are not loopback, so auth is on: each gRPC service needs the mesh token, and the
    gateway also the admin key, both from the kvmesh-auth Secret and nowhere else."""
    for container in services_py(docs):
        cls, settings = parsed(container, monkeypatch)
        entries = {e["name"]: e for e in container.spec.get("env", [])}
        serves_grpc = container.component in {"gateway", "router", "kvindex", "planner"}
        assert settings.auth_enabled
        assert ("KVMESH_MESH_TOKEN" in entries) == serves_grpc, container.component
        assert ("KVMESH_ADMIN_KEY" in entries) == (container.component == "gateway"), container.component
        for name, key in (("KVMESH_MESH_TOKEN", "mesh-token"), ("KVMESH_ADMIN_KEY", "admin-key")):
            if name in entries:
                assert entries[name]["valueFrom"]["secretKeyRef"] == {"name": "kvmesh-auth", "key": key}


def test_a_workers_kv_transfer_role_is_its_models(docs, monkeypatch):
    for container in services_py(docs):
        cls, settings = parsed(container, monkeypatch)
        if cls is WorkerSettings and "kv_transfer_config" in (overrides := json.loads(settings.engine_args)):
            own = model_config.engine_args(model_config.read(ROOT / "triton_models" / settings.triton_model))
            assert overrides["kv_transfer_config"]["kv_role"] == own["kv_transfer_config"]["kv_role"]


def test_the_pools_the_planner_scales_are_shipped(docs):
    assert set(DEPLOYMENTS.values()) <= {d["metadata"]["name"] for d in of_kind(docs, "Deployment")}
    role = named(docs, "Role", "kvmesh-planner")
    assert set(role["rules"][0]["resourceNames"]) == set(DEPLOYMENTS.values())
    workers = [w for w in workloads(docs) if w["spec"]["template"]["metadata"]["labels"][COMPONENT] == "worker"]
    assert {w["metadata"]["name"] for w in workers} == set(DEPLOYMENTS.values())


def test_a_draining_service_is_given_its_drain_before_it_is_killed(docs, monkeypatch):
    """Kubernetes kills a pod terminationGracePeriodSeconds (30 by default) after it begins stopping
    it, preStop included: a gateway or router killed inside its drain cuts the streams it was finishing."""
    for container in services_py(docs):
        cls, settings = parsed(container, monkeypatch)
        if cls not in (GatewaySettings, RouterSettings):  # a worker's drain_timeout_s is its role changes'
            continue
        drain_s = settings.drain_timeout_s
        waits = container.spec.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
        pre_stop_s = float(waits[1]) if waits[:1] == ["sleep"] else 0.0
        grace_s = container.workload["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
        assert grace_s >= pre_stop_s + drain_s + 5, (container.workload["metadata"]["name"], grace_s, drain_s)


def test_every_metrics_port_is_scraped_with_the_labels_kvmesh_up_gives(docs, monkeypatch):
    """Each service's pods carry prometheus.io annotations naming the port that serves /metrics, and
    one PodMonitor selects them on that port, labelling job kvmesh-<component> (as
    kvmesh/prometheus_sd.py does); a worker's model and role labels are what it serves."""
    monitors = of_kind(docs, "PodMonitor")
    assert all(m["apiVersion"] == MONITORING for m in monitors)
    for container in services_py(docs):
        cls, settings = parsed(container, monkeypatch)
        name, port = container.workload["metadata"]["name"], getattr(settings, METRICS[cls])
        annotations = container.workload["spec"]["template"]["metadata"]["annotations"]
        assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": str(port),
                               "prometheus.io/path": "/metrics"}, name  # fmt: skip
        (monitor,) = [m for m in monitors if selects(m["spec"]["selector"], container.labels)]
        (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
        assert {p["name"]: p["containerPort"] for p in container.spec["ports"]}[endpoint["port"]] == port, name
        labelled = {r["targetLabel"]: r.get("replacement") or r["sourceLabels"][0] for r in endpoint["relabelings"]}
        assert labelled["job"] == f"kvmesh-{container.component}"
        assert labelled["kvmesh_id"] == "__meta_kubernetes_pod_name"
        if cls is WorkerSettings:
            assert container.labels["kvmesh/model"] == settings.name_served, name
            role = model_config.role(model_config.read(ROOT / "triton_models" / settings.triton_model))
            assert container.labels["kvmesh/role"] == role_name(role), name
            assert labelled["model"] == "__meta_kubernetes_pod_label_kvmesh_model"
            assert labelled["role"] == "__meta_kubernetes_pod_label_kvmesh_role"
