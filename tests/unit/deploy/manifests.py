"""deploy/kubernetes/ as a cluster would see it: the overlays rendered by Debian's kubectl (the
oldest kustomize they support), containers' environments and arguments expanded as the kubelet
expands them, and NetworkPolicy ingress evaluated as the API defines it."""

from __future__ import annotations

import functools
import re
import subprocess
from dataclasses import dataclass, field

import pytest
import yaml

from tests import ROOT

KUBECTL = ROOT / "build" / "kubernetes-client" / "usr" / "bin" / "kubectl"
OVERLAYS = ("cpu", "gpu")
# Stand-ins for what the kubelet fills in.
POD_IP = "10.244.1.7"
REDIS_PASSWORD = "not-the-real-password"
# The Secrets the operator creates (docs/deploy.md), as these tests stand them in.
SECRETS = {
    ("kvmesh-redis", "password"): REDIS_PASSWORD,
    ("kvmesh-auth", "mesh-token"): "not-the-real-mesh-token",
    ("kvmesh-auth", "admin-key"): "kvm-not-the-real-admin-key",
}
COMPONENT = "app.kubernetes.io/component"


@functools.cache
def render(overlay: str) -> tuple[dict, ...]:
    if not KUBECTL.is_file():
        pytest.fail(f"{KUBECTL.relative_to(ROOT)} is missing: run scripts/setup.sh (it unpacks Debian's kubectl there)")
    path = ROOT / "deploy" / "kubernetes" / "overlays" / overlay
    done = subprocess.run([str(KUBECTL), "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    if done.returncode:
        pytest.fail(f"kubectl kustomize {path.relative_to(ROOT)} failed: {done.stderr}")
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def of_kind(docs, *kinds: str) -> list[dict]:
    return [d for d in docs if d["kind"] in kinds]


def named(docs, kind: str, name: str) -> dict:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def workloads(docs) -> list[dict]:
    return of_kind(docs, "Deployment", "StatefulSet")


@dataclass
class Container:
    workload: dict
    spec: dict
    env: dict[str, str] = field(default_factory=dict)  # as the process sees it
    args: list[str] = field(default_factory=list)

    @property
    def labels(self) -> dict[str, str]:
        return self.workload["spec"]["template"]["metadata"]["labels"]

    @property
    def component(self) -> str:
        return self.labels[COMPONENT]

    @property
    def container_ports(self) -> set[int]:
        return {p["containerPort"] for p in self.spec.get("ports", [])}


def containers(docs) -> list[Container]:
    found = []
    for workload in workloads(docs):
        for spec in workload["spec"]["template"]["spec"]["containers"]:
            env = resolved_env(spec.get("env", []), workload["metadata"]["namespace"])
            found.append(Container(workload, spec, env, [expand(a, env) for a in spec.get("args", [])]))
    return found


def resolved_env(entries: list[dict], namespace: str) -> dict[str, str]:
    """In order: $(NAME) refers to the entries above it, as in the kubelet."""
    env: dict[str, str] = {}
    for entry in entries:
        source = entry.get("valueFrom")
        if source is None:
            env[entry["name"]] = expand(entry.get("value", ""), env)
        elif "fieldRef" in source:
            fields = {"status.podIP": POD_IP, "metadata.namespace": namespace}
            env[entry["name"]] = fields[source["fieldRef"]["fieldPath"]]
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            assert (ref["name"], ref["key"]) in SECRETS, entry
            env[entry["name"]] = SECRETS[ref["name"], ref["key"]]
        else:
            raise AssertionError(f"an env source these tests do not model: {entry}")
    return env


def expand(text: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), text)


# NetworkPolicy: a pod is reachable on a port when no policy selects it, or one of the policies
# that select it has an ingress rule admitting the source on that port.


@dataclass(frozen=True)
class Pod:
    name: str
    namespace: str
    labels: tuple[tuple[str, str], ...]
    namespace_labels: tuple[tuple[str, str], ...] = ()


def selects(selector: dict, labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        present = key in labels
        if not {"In": present and labels[key] in values, "NotIn": not present or labels[key] not in values,
                "Exists": present, "DoesNotExist": not present}[operator]:  # fmt: skip
            return False
    return True


def peer_admits(peer: dict, source: Pod, namespace: str) -> bool:
    assert "ipBlock" not in peer, "these tests do not model ipBlock peers"
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], dict(source.namespace_labels)):
            return False
    elif source.namespace != namespace:
        return False
    return selects(peer.get("podSelector", {}), dict(source.labels))


def admits(policies: list[dict], source: Pod, target: Pod, port: int) -> bool:
    applying = [
        p for p in policies
        if p["metadata"]["namespace"] == target.namespace and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
        and selects(p["spec"]["podSelector"], dict(target.labels))
    ]  # fmt: skip
    if not applying:
        return True
    for policy in applying:
        for rule in policy["spec"].get("ingress", []):
            ports = rule.get("ports")
            if ports and not any(p.get("port") == port and p.get("protocol", "TCP") == "TCP" for p in ports):
                continue
            if not rule.get("from") or any(peer_admits(peer, source, target.namespace) for peer in rule["from"]):
                return True
    return False
