"""The committed code under service/proto/ is what the .proto files generate."""

from pathlib import Path

from service.proto import generate


def test_generated_code_matches_the_proto_files(tmp_path):
    fresh = generate.generate(tmp_path)
    committed = generate.OUT_DIR
    stale = [str(p) for p in fresh if (committed / p).read_text() != (tmp_path / p).read_text()]
    fresh_names = {str(p) for p in fresh}
    extra = [str(p.relative_to(committed)) for p in committed.rglob("*_pb2*.py*")
             if "__pycache__" not in p.parts and str(p.relative_to(committed)) not in fresh_names]
    assert not stale and not extra, (
        f"service/proto/ is out of date with proto/ (differs: {stale}, no longer generated: {extra}); "
        "run `python -m service.proto.generate` and commit the result")


def test_generated_code_imports_as_a_package():
    from service.proto.inference import grpc_service_pb2_grpc
    from service.proto.kvmemo.v1 import kvmemo_pb2_grpc

    assert kvmemo_pb2_grpc.KvmemoServiceStub and grpc_service_pb2_grpc.GRPCInferenceServiceStub
    assert Path(generate.PROTO_DIR, "kvmemo/v1/kvmemo.proto").is_file()
