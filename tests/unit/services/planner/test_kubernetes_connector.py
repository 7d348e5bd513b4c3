"""The planner's kubernetes connector against the REST calls the official client makes (a loopback
stand-in for the API server: no cluster is reachable here). The manifests it scales are checked in
tests/unit/deploy/."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from kubernetes import client

from services.planner.connectors.kubernetes import DEPLOYMENTS, KubernetesConnector


class FakeApiServer(BaseHTTPRequestHandler):
    """Deployments' scale subresource, as apps/v1 serves it."""

    replicas = {name: 1 for name in DEPLOYMENTS.values()}
    patches: list[tuple[str, str, dict]] = []

    def _name(self):
        parts = self.path.split("/")  # /apis/apps/v1/namespaces/<ns>/deployments/<name>/scale
        assert parts[1:5] == ["apis", "apps", "v1", "namespaces"] and parts[6] == "deployments" and parts[8] == "scale"
        return parts[5], parts[7]

    def _reply(self, namespace, name):
        if name not in self.replicas:
            body, status = {"kind": "Status", "code": 404, "reason": "NotFound"}, 404
        else:
            body, status = {"kind": "Scale", "apiVersion": "autoscaling/v1",
                            "metadata": {"name": name, "namespace": namespace},
                            "spec": {"replicas": self.replicas[name]}, "status": {"replicas": 1}}, 200  # fmt: skip
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._reply(*self._name())

    def do_PATCH(self):
        namespace, name = self._name()
        patch = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.patches.append((name, self.headers["Content-Type"], patch))
        self.replicas[name] = patch["spec"]["replicas"]
        self._reply(namespace, name)

    def log_message(self, *args):
        pass


@pytest.fixture
def apps():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeApiServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    configuration = client.Configuration(host=f"http://127.0.0.1:{server.server_port}")
    with client.ApiClient(configuration) as api:
        yield client.AppsV1Api(api)
    server.shutdown()


def test_connector_reads_and_patches_the_deployments_scale(apps):
    connector = KubernetesConnector(apps, "kvmesh")
    assert connector.current() == {"prefill": 1, "decode": 1}
    assert connector.scale("decode", 3) == "deployment kvmesh/kvmesh-worker-decode scaled to 3"
    name, content_type, patch = FakeApiServer.patches[-1]
    assert name == "kvmesh-worker-decode" and patch == {"spec": {"replicas": 3}}
    assert content_type in ("application/merge-patch+json", "application/strategic-merge-patch+json")
    assert connector.current() == {"prefill": 1, "decode": 3}


def test_an_api_error_is_a_connection_error_the_planner_holds_on(apps):
    connector = KubernetesConnector(apps, "kvmesh", {"prefill": "missing", "decode": "kvmesh-worker-decode"})
    with pytest.raises(ConnectionError, match="404"):
        connector.current()
