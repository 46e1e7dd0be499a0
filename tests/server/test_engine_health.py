"""A persistent engine failure (service/faults.py: every step raises once a gate file exists) turns health
NOT_SERVING for good after --max-consecutive-step-failures steps, which fails the chart's gRPC liveness
probe so that the kubelet restarts the pod. Also: --device=cuda without CUDA ends the boot with exit 2."""

import os
import signal
import subprocess
import time

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2

from service.proto.kvmemo.v1 import kvmemo_pb2 as pb
from service.proto.kvmemo.v1 import kvmemo_pb2_grpc as pb_grpc
from tests.server.conftest import health_status, kvmemo_command, start_server
from tests.ports import free_port

FAILURES = 2


def request() -> pb.GenerateRequest:
    return pb.GenerateRequest(text="Once upon a time", max_tokens=4, sampling=pb.SamplingParameters(temperature=0))


def test_failed_steps_in_a_row_turn_health_not_serving(tmp_path):
    gate = tmp_path / "fail-steps"
    srv = start_server(tmp_path, "--max-model-len", "256", "--max-consecutive-step-failures", str(FAILURES),
                       env={"KVMEMO_FAULTS": f"step_failure_gate={gate}"})
    try:
        with srv.channel() as channel:
            stub = pb_grpc.KvmemoServiceStub(channel)
            assert stub.Complete(request(), timeout=60).finish_reason == pb.FINISH_REASON_LENGTH
            gate.touch()
            for _ in range(FAILURES):  # one request, one failed step
                with pytest.raises(grpc.RpcError) as err:
                    stub.Complete(request(), timeout=60)
                assert err.value.code() == grpc.StatusCode.INTERNAL, err.value
            deadline = time.monotonic() + 60  # bounds a failing test only
            while health_status(channel, timeout=30) != health_pb2.HealthCheckResponse.NOT_SERVING:
                assert time.monotonic() < deadline, "health stayed SERVING after the engine broke"
                time.sleep(0.05)
            for service in ("kvmemo.v1.KvmemoService", "inference.GRPCInferenceService"):
                assert health_status(channel, service, timeout=30) == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.RpcError) as err:
                stub.Complete(request(), timeout=60)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert f"{FAILURES} engine steps failed in a row" in err.value.details()
        assert "not serving any more" in srv.log()
    finally:
        srv.stop(signal.SIGKILL)


@pytest.mark.skipif(torch.cuda.is_available(), reason="proves the failure where there is no CUDA")
def test_device_cuda_without_cuda_fails_the_boot_with_exit_2(tmp_path):
    cmd = [*kvmemo_command(), "serve", "--host", "127.0.0.1", "--port", str(free_port()), "--metrics-port",
           str(free_port()), "--model", "tiny", "--device", "cuda"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={"PATH": "/usr/bin:/bin",
                       "XDG_CACHE_HOME": str(tmp_path), "PYTHONPATH": os.environ.get("PYTHONPATH", "")})
    assert p.returncode == 2, p.stderr[-3000:]
    assert "device=cuda (--device / KVMEMO_DEVICE) needs CUDA, but" in p.stderr, p.stderr[-3000:]
    assert "Traceback" not in p.stderr
