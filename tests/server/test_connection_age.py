"""--max-connection-age-seconds: the server sends GOAWAY on a connection that old, so a long-lived client
reconnects (and, through a headless Service, re-resolves and reaches new replicas); its RPCs go on."""

import signal
import threading
import time

import grpc

from service.proto.kvmemo.v1 import kvmemo_pb2 as pb
from service.proto.kvmemo.v1 import kvmemo_pb2_grpc as pb_grpc
from tests.server.conftest import start_server


def test_an_aged_connection_gets_goaway_and_the_client_reconnects(tmp_path):
    srv = start_server(tmp_path, "--max-model-len", "256", "--max-connection-age-seconds", "1")
    try:
        with srv.channel() as channel:
            states, changed = [], threading.Condition()

            def seen(state):
                with changed:
                    states.append(state)
                    changed.notify_all()
            channel.subscribe(seen, try_to_connect=True)
            stub = pb_grpc.KvmemoServiceStub(channel)
            stub.GetModelInfo(pb.GetModelInfoRequest(), wait_for_ready=True, timeout=60)
            # After READY, the GOAWAY sends the channel back to IDLE (or CONNECTING): a new connection.
            with changed:
                assert changed.wait_for(lambda: grpc.ChannelConnectivity.READY in states and
                                        states[-1] != grpc.ChannelConnectivity.READY
                                        and states.index(grpc.ChannelConnectivity.READY) < len(states) - 1,
                                        timeout=120), states
            assert stub.GetModelInfo(pb.GetModelInfoRequest(), wait_for_ready=True, timeout=60).name == "tiny"
            channel.unsubscribe(seen)
    finally:
        srv.stop(signal.SIGKILL)
