"""grpc.health.v1 through the grpcio-health-checking client; reflection through grpcurl."""

import json
import subprocess
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2

from tests.ports import free_port
from tests.server.conftest import health_status, start_server
from tests.tools import grpcurl

SERVICES = ("", "kvmemo.v1.KvmemoService", "inference.GRPCInferenceService")


@pytest.mark.parametrize("service", SERVICES)
def test_health_is_serving_for_the_server_and_each_service(channel, service):
    assert health_status(channel, service) == health_pb2.HealthCheckResponse.SERVING


def test_health_list_names_every_service(channel):
    """grpcio-health-checking's asyncio servicer left List UNIMPLEMENTED ("Unexpected <class ...>")."""
    from grpc_health.v1 import health_pb2_grpc
    reply = health_pb2_grpc.HealthStub(channel).List(health_pb2.HealthListRequest(), timeout=10)
    assert {name: s.status for name, s in reply.statuses.items()} == {
        name: health_pb2.HealthCheckResponse.SERVING for name in SERVICES}


def test_health_was_not_serving_until_the_engine_was_warm(tmp_path):
    """The server listens before it boots the engine. Its boot waits at a gate (service/faults.py) that opens
    only once health has been seen NOT_SERVING, so the test never races a fast boot."""
    gate, seen = tmp_path / "boot-gate", []

    def open_gate_once_not_serving(address: str):
        with grpc.insecure_channel(address) as channel:
            while not seen:
                try:
                    seen.append(health_status(channel, timeout=30))
                except grpc.RpcError:
                    time.sleep(0.05)  # not listening yet
        gate.touch()

    port = free_port()
    opener = threading.Thread(target=open_gate_once_not_serving, args=(f"127.0.0.1:{port}",), daemon=True)
    opener.start()
    server = start_server(tmp_path, "--max-model-len", "256", port=port, env={"KVMEMO_FAULTS": f"boot_gate={gate}"})
    try:
        assert seen == [health_pb2.HealthCheckResponse.NOT_SERVING]
        assert server.statuses_seen[-1] == health_pb2.HealthCheckResponse.SERVING
    finally:
        assert server.stop() == 0


def test_health_of_an_unknown_service_is_not_found(channel):
    import grpc

    with pytest.raises(grpc.RpcError) as err:
        health_status(channel, "no.such.Service")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def run_grpcurl(server, *args: str) -> str:
    done = subprocess.run([str(grpcurl()), "-plaintext", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"grpcurl {' '.join(args)} exited {done.returncode}: {done.stderr}"
    return done.stdout


def test_grpcurl_lists_our_services_through_reflection(server):
    listed = run_grpcurl(server, server.address, "list").split()
    for name in ("kvmemo.v1.KvmemoService", "inference.GRPCInferenceService", "grpc.health.v1.Health"):
        assert name in listed
    methods = run_grpcurl(server, server.address, "list", "kvmemo.v1.KvmemoService").split()
    assert "kvmemo.v1.KvmemoService.Generate" in methods
    assert "ModelStreamInfer" in run_grpcurl(server, server.address, "describe", "inference.GRPCInferenceService")


def test_grpcurl_calls_generate_without_proto_files(server):
    body = json.dumps({"text": "Hello", "max_tokens": 4, "sampling": {"temperature": 0}})
    out = run_grpcurl(server, "-d", body, server.address, "kvmemo.v1.KvmemoService/Generate")
    messages = [json.loads(m) for m in out.replace("}\n{", "}\x00{").split("\x00")]
    assert messages[-1]["finish_reason"] in ("FINISH_REASON_LENGTH", "FINISH_REASON_STOP")
    assert messages[-1]["usage"]["completion_tokens"] == sum(len(m.get("token_ids", [])) for m in messages)
