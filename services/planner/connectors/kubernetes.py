"""The `kubernetes` connector: a pool is a Deployment (deploy/kubernetes/), sized through its
`scale` subresource. The Deployment's desired replicas count pods still starting, as the planner
wants; Kubernetes itself drains a pod it removes (SIGTERM: the worker deregisters, finishes)."""

from __future__ import annotations

from kubernetes import client

from services.planner.connectors import PoolByPool

DEPLOYMENTS = {"prefill": "kvmesh-worker-prefill", "decode": "kvmesh-worker-decode"}


class KubernetesConnector(PoolByPool):
    name = "kubernetes"

    def __init__(self, apps: client.AppsV1Api, namespace: str, deployments: dict[str, str] = DEPLOYMENTS):
        self.apps = apps
        self.namespace = namespace
        self.deployments = deployments

    def current(self) -> dict[str, int]:
        try:
            return {
                pool: self.apps.read_namespaced_deployment_scale(name, self.namespace).spec.replicas or 0
                for pool, name in self.deployments.items()
            }
        except client.ApiException as e:
            raise ConnectionError(f"Kubernetes API: {e.status} {e.reason}") from None

    def scale(self, pool: str, replicas: int) -> str:
        name = self.deployments[pool]
        self.apps.patch_namespaced_deployment_scale(name, self.namespace, {"spec": {"replicas": replicas}})
        return f"deployment {self.namespace}/{name} scaled to {replicas}"


def connect(namespace: str) -> KubernetesConnector:
    """In a pod: its service account; elsewhere: the kubeconfig."""
    from kubernetes import config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return KubernetesConnector(client.AppsV1Api(), namespace)
