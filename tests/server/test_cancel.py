"""A client that cancels, or whose deadline passes, frees its KV blocks at once; others keep going.

These tests need a request that is still generating when its deadline passes, on any machine: their server
sleeps STEP_DELAY_S before every engine step (service/faults.py), so LONG takes minutes whatever the CPU,
while the first tokens come within one or two steps."""

import grpc
import pytest

from service.proto.kvmemo.v1 import kvmemo_pb2 as pb
from service.proto.kvmemo.v1 import kvmemo_pb2_grpc as pb_grpc
from tests.server.conftest import start_server, wait_all_blocks_free

STEP_DELAY_S = 0.2
# 1,000 steps of at least STEP_DELAY_S: over 3 minutes, far beyond DEADLINE_S.
LONG = pb.GenerateRequest(text="Tell me a long story", max_tokens=1000, sampling=pb.SamplingParameters(temperature=0),
                          stop=pb.StopConditions(ignore_eos=True))
# Generous, so that the first token arrives before it on a loaded machine: the stream ends with its deadline
# long before its 1,000 tokens.
DEADLINE_S = 10.0


@pytest.fixture(scope="module")
def slow_stub(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("slow-server"), "--max-model-len", "1024", "--max-num-seqs", "4",
                          env={"KVMEMO_FAULTS": f"step_delay_seconds={STEP_DELAY_S}"})
    with server.channel() as channel:
        yield pb_grpc.KvmemoServiceStub(channel)
    assert server.stop() == 0, server.log()[-4000:]


def blocks_in_use(stub) -> int:
    info = stub.GetModelInfo(pb.GetModelInfoRequest())
    return info.kv_blocks_total - info.kv_blocks_free


def test_cancel_mid_stream_frees_blocks(slow_stub):
    call = slow_stub.Generate(LONG)
    for _, _ in zip(range(3), call):
        pass
    assert blocks_in_use(slow_stub) > 0
    call.cancel()
    info = wait_all_blocks_free(slow_stub)
    assert info.kv_blocks_free == info.kv_blocks_total, f"{blocks_in_use(slow_stub)} blocks still used after cancel"


def test_deadline_mid_stream_frees_blocks_and_others_keep_going(slow_stub):
    survivor = slow_stub.Generate(pb.GenerateRequest(text="Hi", max_tokens=40, stop=pb.StopConditions(ignore_eos=True)))
    next(survivor)
    call = slow_stub.Generate(LONG, timeout=DEADLINE_S)
    got = 0
    with pytest.raises(grpc.RpcError) as ended:
        for _ in call:
            got += 1
    assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert 0 < got < LONG.max_tokens
    rest = list(survivor)
    assert rest[-1].finish_reason == pb.FINISH_REASON_LENGTH
    assert 1 + sum(len(m.token_ids) for m in rest) == 40
    info = wait_all_blocks_free(slow_stub)
    assert info.kv_blocks_free == info.kv_blocks_total
