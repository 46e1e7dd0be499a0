"""A real `kvmemo serve` whose warm-up batch runs out of memory (injected: service/faults.py) serves anyway and
records that one OOM exactly once: in its metric and in its plan file, so the next profile doubles the safety
margin once, not twice."""

import json
import urllib.request

from service.proto.kvmemo.v1 import kvmemo_pb2 as pb
from service.proto.kvmemo.v1 import kvmemo_pb2_grpc as pb_grpc
from tests.server.conftest import start_server


def test_a_warm_up_oom_is_recorded_once(tmp_path):
    server = start_server(tmp_path, "--max-model-len", "256", "--max-num-seqs", "4",
                          env={"KVMEMO_FAULTS": "oom_in_warm_up=1"})
    try:
        with server.channel() as channel:
            reply = pb_grpc.KvmemoServiceStub(channel).Complete(pb.GenerateRequest(
                text="Hi", max_tokens=4, stop=pb.StopConditions(ignore_eos=True)))
        assert len(reply.token_ids) == 4  # it serves
        page = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=30).read().decode()
        assert 'kvmemo_oom_total{model_name="tiny"} 1.0' in page
    finally:
        assert server.stop() == 0, server.log()[-4000:]
    plan = json.loads(next((tmp_path / "cache" / "kvmemo" / "plans").glob("*.json")).read_text())
    assert plan["ooms"] == 1 and plan["stale"], plan
    assert server.log().count("the warm-up batch ran out of memory") == 1
