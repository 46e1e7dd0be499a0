"""Every rejected request leaves one INFO line with its reason, and a flood of them a bounded number of lines."""

import logging
import re

import grpc
import pytest

from service.proto.inference import grpc_service_pb2, grpc_service_pb2_grpc
from service.proto.kvmemo.v1 import kvmemo_pb2 as pb
from service.proto.kvmemo.v1 import kvmemo_pb2_grpc as pb_grpc
from service.server.rejections import LINES_PER_INTERVAL, MESSAGE_CHARS, RateLimiter, RejectionLog
from tests.server.conftest import SHARED_FLAGS, start_server


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_limiter_lets_n_lines_per_interval_through_then_summarises(caplog):
    clock = FakeClock()
    rejections = RejectionLog(RateLimiter(limit=3, interval=10.0, clock=clock))
    with caplog.at_level(logging.INFO, logger="kvmemo.server.rejected"):
        for i in range(50):
            rejections.record(grpc.StatusCode.INVALID_ARGUMENT, f"max_tokens: bad {i}", "/m/Complete")
            clock.now += 0.1
        assert [r.getMessage() for r in caplog.records] == [
            f"rejected /m/Complete: INVALID_ARGUMENT: max_tokens: bad {i}" for i in range(3)]
        clock.now += 10.0
        rejections.record(grpc.StatusCode.NOT_FOUND, "model: no such model 'x'", "/m/Complete")
    assert [r.getMessage() for r in caplog.records[3:]] == [
        "… 47 more rejected requests in the last 15 s (at most 3 lines per 10 s)",
        "rejected /m/Complete: NOT_FOUND: model: no such model 'x'"]
    assert all(r.levelno == logging.INFO for r in caplog.records)


def test_a_long_message_is_cut_and_its_control_characters_escaped(caplog):
    rejections = RejectionLog(RateLimiter(clock=FakeClock()))
    with caplog.at_level(logging.INFO, logger="kvmemo.server.rejected"):
        rejections.record(grpc.StatusCode.INVALID_ARGUMENT, "text: \x1b[31mred\nforged line " + "x" * 1000, "/m")
    line = caplog.records[0].getMessage()
    assert "\n" not in line and "\x1b" not in line and line.endswith("x…")
    assert len(line) < MESSAGE_CHARS + 40


def test_the_summary_comes_when_the_window_ends_without_another_rejection(caplog):
    clock = FakeClock()
    rejections = RejectionLog(RateLimiter(limit=1, interval=10.0, clock=clock))
    with caplog.at_level(logging.INFO, logger="kvmemo.server.rejected"):
        for _ in range(5):
            rejections.record(grpc.StatusCode.UNAVAILABLE, "draining", "/m")
        clock.now += 10.0
        rejections.flush()  # what the server's event loop calls when the window ends
    assert caplog.records[-1].getMessage().startswith("… 4 more rejected requests in the last 10 s")


@pytest.fixture(scope="module")
def own_server(tmp_path_factory):
    """Its own server: the shared one's rate-limit window may already be spent by other tests' bad requests."""
    srv = start_server(tmp_path_factory.mktemp("rejections"), *SHARED_FLAGS)
    yield srv
    srv.stop()


def rejected_lines(log: str) -> list[str]:
    return re.findall(r"kvmemo\.server\.rejected: (.*)", log)


def test_a_real_server_logs_a_rejected_request_once_and_a_flood_boundedly(own_server):
    with own_server.channel() as channel:
        stub = pb_grpc.KvmemoServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Complete(pb.GenerateRequest(text="hi", max_tokens=0), timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        lines = rejected_lines(own_server.log())
        assert lines == [f"rejected /kvmemo.v1.KvmemoService/Complete: INVALID_ARGUMENT: {info.value.details()}"]
        # A KServe stream reports a bad request in the stream, which stays open; the log has it the same way.
        kserve = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        replies = list(kserve.ModelStreamInfer(iter([grpc_service_pb2.ModelInferRequest(model_name="tiny")]),
                                               timeout=30))
        assert replies and replies[0].error_message
        assert rejected_lines(own_server.log())[1] == (
            f"rejected /inference.GRPCInferenceService/ModelStreamInfer: INVALID_ARGUMENT: {replies[0].error_message}")
        for _ in range(1000):
            with pytest.raises(grpc.RpcError):
                stub.Complete(pb.GenerateRequest(text="hi", max_tokens=0), timeout=30)
    lines = rejected_lines(own_server.log())
    # The burst's lines: at most LINES_PER_INTERVAL per window (plus a summary each), not 1000.
    assert 2 < len(lines) <= 2 + 3 * (LINES_PER_INTERVAL + 1), len(lines)
