"""Limits and SIGTERM on a server of this module's own (it is stopped by the test)."""

import json
import signal
import threading
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.proto.kvmemo.v1 import kvmemo_pb2 as pb
from service.proto.kvmemo.v1 import kvmemo_pb2_grpc as pb_grpc
from tests.server.conftest import health_status, start_server

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


# The server sleeps this long before each engine step (service/faults.py): a 1,000-token request then runs
# for over 20 s on any machine, so nothing finishes while a test still needs it in flight.
STEP_DELAY_S = 0.02


def long_request(max_tokens: int) -> pb.GenerateRequest:
    # "Once upon a time" is 17 tokens; with max_model_len=1024 up to 1007 can follow.
    return pb.GenerateRequest(text="Once upon a time", max_tokens=max_tokens, stop=pb.StopConditions(ignore_eos=True),
                              sampling=pb.SamplingParameters(temperature=0))


def wait_until_waiting(server, n: int, timeout: float = 120.0) -> None:
    """Until the engine reports n requests waiting (kvmemo_requests_waiting)."""
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    while True:
        page = urllib.request.urlopen(url, timeout=5).read().decode()
        if f'kvmemo_requests_waiting{{model_name="tiny"}} {float(n)}' in page:
            return
        assert time.monotonic() < deadline, f"the engine never had {n} requests waiting"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def own_server(tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("drain"), "--max-model-len", "1024", "--max-num-seqs", "1",
                       "--max-concurrent-requests", "2", "--drain-grace-seconds", "120",
                       env={"KVMEMO_FAULTS": f"step_delay_seconds={STEP_DELAY_S}"})
    yield srv
    srv.stop(signal.SIGKILL)


def test_max_concurrent_requests_gives_resource_exhausted_naming_the_limit(own_server):
    with own_server.channel() as channel:
        stub = pb_grpc.KvmemoServiceStub(channel)
        first = stub.Generate(long_request(1000))
        next(first)  # running; only then the second, which waits (max_num_seqs=1)
        second = stub.Generate(long_request(1000))
        wait_until_waiting(own_server, 1)
        with pytest.raises(grpc.RpcError) as err:
            stub.Complete(long_request(2))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_concurrent_requests=2" in err.value.details()
        first.cancel()
        second.cancel()


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    """A second server: where a client's new RPCs go once the first one says GOAWAY."""
    srv = start_server(tmp_path_factory.mktemp("replica"), "--max-model-len", "256", "--max-num-seqs", "2",
                       "--max-connection-age-seconds", "600")
    yield srv
    srv.stop(signal.SIGKILL)


def round_robin_channel(*servers) -> grpc.Channel:
    """What a client of the chart's headless Service does: every replica's address, round_robin over them."""
    target = "ipv4:" + ",".join(s.address for s in servers)
    config = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})
    return grpc.insecure_channel(target, options=[("grpc.service_config", config)])


def test_sigterm_sends_goaway_at_once_and_drains_in_flight_streams(own_server, replica):
    """After SIGTERM the draining server takes no new RPC (GOAWAY, listener closed: UNAVAILABLE, which a
    client retries elsewhere), a round_robin client's new RPCs all reach the other replica, a health Watch
    sees NOT_SERVING, and the stream in flight still finishes; then the server exits 0."""
    with own_server.channel() as direct, round_robin_channel(own_server, replica) as spread:
        stub = pb_grpc.KvmemoServiceStub(direct)
        spread_stub = pb_grpc.KvmemoServiceStub(spread)
        assert spread_stub.Complete(long_request(2), wait_for_ready=True, timeout=120).finish_reason
        stream = stub.Generate(long_request(1000))
        received = [next(stream)]
        rest = threading.Thread(target=lambda: received.extend(stream))
        rest.start()
        watch = health_pb2_grpc.HealthStub(direct).Watch(health_pb2.HealthCheckRequest(service=""))
        # Its first status says the Watch is open on the server: sent before that, the SIGTERM could shut the
        # server to it first, and the watch would end with nothing seen (a 2-core CI run did).
        watched = [next(watch).status]
        assert watched == [SERVING]
        watcher = threading.Thread(target=lambda: watched.extend(m.status for m in _until_error(watch)))
        watcher.start()
        own_server.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 120  # bounds a failing test only
        while True:
            try:
                stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30)
            except grpc.RpcError as e:
                # An RPC already on the wire as the shutdown began is CANCELLED by grpc-core; once the GOAWAY
                # and the closed listener are in place every new one is UNAVAILABLE, which clients retry.
                assert e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED), e
                if e.code() == grpc.StatusCode.UNAVAILABLE:
                    break
            assert time.monotonic() < deadline, "the server still took new RPCs after SIGTERM"
            time.sleep(0.05)
        assert not received[-1].finish_reason, "the stream in flight ended before the test could check on it"
        for _ in range(4):  # round_robin would pick the draining server every other time if it were still there
            reply = spread_stub.Complete(long_request(2), wait_for_ready=True, timeout=120)
            assert reply.finish_reason == pb.FINISH_REASON_LENGTH
        rest.join(timeout=300)
        watcher.join(timeout=300)
    assert received[-1].finish_reason == pb.FINISH_REASON_LENGTH
    assert sum(len(m.token_ids) for m in received) == 1000
    assert NOT_SERVING in watched, watched
    assert own_server.proc.wait(timeout=60) == 0, own_server.log()[-3000:]


def _until_error(stream):
    try:
        yield from stream
    except grpc.RpcError:
        return
