"""A client that cancels, or whose deadline passes, frees its KV blocks at once; others keep going."""

import time

import grpc

from service.proto.kvmemo.v1 import kvmemo_pb2 as pb
from tests.server.conftest import wait_all_blocks_free

# Long enough (at most max_model_len=1024) that no deadline in these tests can pass it.
LONG = pb.GenerateRequest(text="Tell me a long story", max_tokens=1000, sampling=pb.SamplingParameters(temperature=0),
                          stop=pb.StopConditions(ignore_eos=True))


def blocks_in_use(stub) -> int:
    info = stub.GetModelInfo(pb.GetModelInfoRequest())
    return info.kv_blocks_total - info.kv_blocks_free


def test_cancel_mid_stream_frees_blocks(stub):
    call = stub.Generate(LONG)
    for _, _ in zip(range(3), call):
        pass
    assert blocks_in_use(stub) > 0
    call.cancel()
    start = time.monotonic()
    info = wait_all_blocks_free(stub, timeout=2.0)
    assert info.kv_blocks_free == info.kv_blocks_total, f"{blocks_in_use(stub)} blocks still used after cancel"
    assert time.monotonic() - start < 2.0


def test_deadline_mid_stream_frees_blocks_and_others_keep_going(stub):
    survivor = stub.Generate(pb.GenerateRequest(text="Hi", max_tokens=40, stop=pb.StopConditions(ignore_eos=True)))
    next(survivor)
    call = stub.Generate(LONG, timeout=1.0)
    got = 0
    try:
        for _ in call:
            got += 1
        raise AssertionError("the stream finished before its deadline")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert got > 0
    rest = list(survivor)
    assert rest[-1].finish_reason == pb.FINISH_REASON_LENGTH
    assert 1 + sum(len(m.token_ids) for m in rest) == 40
    info = wait_all_blocks_free(stub, timeout=2.0)
    assert info.kv_blocks_free == info.kv_blocks_total
