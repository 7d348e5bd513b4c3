"""What a worker tells the mesh is at its advertised address, whatever it binds: the registry
record (Triton, its metrics, the relayed KV events), NIXL's side channel; UCX is held to the
interface of the address it binds."""

from kvmesh.settings import load
from kvmesh.v1 import worker_pb2
from services.worker import model_config
from services.worker.config import WorkerSettings
from services.worker.kv_events_relay import Endpoints
from services.worker.main import _engine_env
from services.worker.registration import describe
from services.worker.triton_server import TritonPorts

PORTS = TritonPorts(grpc=8001, http=8000, metrics=8002)


def settings(*flags: str) -> WorkerSettings:
    return load(WorkerSettings, list(flags))


def record(worker: WorkerSettings, relayed: Endpoints | None) -> worker_pb2.WorkerRecord:
    config = model_config.read(worker.model_repository / worker.triton_model)
    return describe(worker, "w-1", worker.triton_model, config, worker.engine_overrides("w-1"), PORTS, relayed)


def test_on_loopback_the_events_stay_on_ipc():
    worker = settings("--triton-model", "sim")
    assert not worker.relays_kv_events
    described = record(worker, None)
    assert described.kv_events_endpoint.startswith("ipc://") and described.triton_grpc_address == "127.0.0.1:8001"


def test_bound_to_every_interface_it_registers_its_advertised_address_and_relayed_events():
    worker = settings("--triton-model", "sim", "--host", "0.0.0.0", "--advertise-host", "10.213.47.11")
    assert worker.relays_kv_events
    relayed = Endpoints("tcp://10.213.47.11:5557", "tcp://10.213.47.11:5558")
    described = record(worker, relayed)
    assert described.triton_grpc_address == "10.213.47.11:8001"
    assert described.triton_metrics_address == "10.213.47.11:8002"
    assert (described.kv_events_endpoint, described.kv_events_replay_endpoint) == (relayed.events, relayed.replay)


def test_without_kv_events_nothing_is_relayed_or_registered():
    worker = settings("--triton-model", "sim", "--host", "10.213.47.11", "--no-kv-events")
    assert not worker.relays_kv_events
    assert record(worker, None).kv_events_endpoint == ""


def test_a_prefill_engine_takes_nixl_and_ucx_to_its_address(monkeypatch):
    monkeypatch.delenv("UCX_NET_DEVICES", raising=False)
    env = _engine_env(settings("--triton-model", "sim_prefill", "--nixl-port", "5600"), iter([]))
    assert (env["VLLM_NIXL_SIDE_CHANNEL_HOST"], env["VLLM_HOST_IP"]) == ("127.0.0.1", "127.0.0.1")
    assert (env["VLLM_NIXL_SIDE_CHANNEL_PORT"], env["UCX_NET_DEVICES"]) == ("5600", "lo")
    # An address on none of this host's interfaces: UCX's devices are left to the operator.
    elsewhere = _engine_env(settings("--triton-model", "sim_decode", "--host", "10.213.47.254"), iter([5601]))
    assert elsewhere["VLLM_NIXL_SIDE_CHANNEL_HOST"] == "10.213.47.254" and "UCX_NET_DEVICES" not in elsewhere


def test_the_operators_ucx_devices_win(monkeypatch):
    monkeypatch.setenv("UCX_NET_DEVICES", "eth1")
    assert "UCX_NET_DEVICES" not in _engine_env(settings("--triton-model", "sim_prefill"), iter([5600]))


def test_an_aggregated_engine_gets_no_kv_transfer_settings():
    assert "VLLM_NIXL_SIDE_CHANNEL_HOST" not in _engine_env(settings("--triton-model", "sim"), iter([]))
