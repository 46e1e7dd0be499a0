"""A real `kvmemo serve` process on free loopback ports, shared by the whole session (the drain tests
start their own, since they stop it)."""

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.proto.kvmemo.v1 import kvmemo_pb2 as pb
from service.proto.kvmemo.v1 import kvmemo_pb2_grpc as pb_grpc
from tests.ports import free_port

BOOT_TIMEOUT_S = 180


def kvmemo_command() -> list[str]:
    script = Path(sys.executable).parent / "kvmemo"
    return [str(script)] if script.exists() else [sys.executable, "-m", "service.cli"]


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    metrics_port: int
    log_path: Path
    statuses_seen: list  # health statuses of "" seen while waiting for SERVING, in order

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.address)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig=signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)


def health_status(channel: grpc.Channel, service: str = "", timeout: float = 2.0):
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout).status


def start_server(log_dir: Path, *extra: str, env: dict | None = None, port: int | None = None) -> Server:
    port, metrics_port = port or free_port(), free_port()
    log_path = log_dir / f"kvmemo-serve-{port}.log"
    cmd = [*kvmemo_command(), "serve", "--host", "127.0.0.1", "--port", str(port), "--metrics-port",
           str(metrics_port), "--model", "tiny", *extra]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("KVMEMO_")}, **(env or {})}
    env["XDG_CACHE_HOME"] = str(log_dir / "cache")  # plan files stay out of the user's cache
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    server = Server(proc, port, metrics_port, log_path, [])
    deadline = time.monotonic() + BOOT_TIMEOUT_S
    with server.channel() as channel:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"kvmemo serve exited {proc.returncode} while booting:\n{server.log()[-4000:]}")
            if time.monotonic() > deadline:
                server.stop(signal.SIGKILL)
                raise RuntimeError(f"kvmemo serve not SERVING after {BOOT_TIMEOUT_S} s:\n{server.log()[-4000:]}")
            try:
                status = health_status(channel, timeout=1.0)
                server.statuses_seen.append(status)
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return server
            except grpc.RpcError:
                pass  # not listening yet
            time.sleep(0.1)


SHARED_FLAGS = ("--max-model-len", "256", "--max-num-seqs", "8", "--max-concurrent-requests", "32",
                "--max-waiting-requests", "32")


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("server"), *SHARED_FLAGS)
    yield srv
    code = srv.stop()
    assert code == 0, f"kvmemo serve exited {code}:\n{srv.log()[-4000:]}"


@pytest.fixture(scope="session")
def channel(server):
    with server.channel() as ch:
        yield ch


@pytest.fixture(scope="session")
def stub(channel):
    return pb_grpc.KvmemoServiceStub(channel)


def wait_all_blocks_free(stub, timeout: float = 60.0) -> pb.ModelInfo:
    """Aborts reach the engine thread asynchronously; blocks are back within a step or two. The timeout only
    bounds a failing test: a loaded machine may take long, and the caller asserts on what it returns."""
    deadline = time.monotonic() + timeout
    while True:
        info = stub.GetModelInfo(pb.GetModelInfoRequest())
        if info.kv_blocks_free == info.kv_blocks_total or time.monotonic() > deadline:
            return info
        time.sleep(0.02)
