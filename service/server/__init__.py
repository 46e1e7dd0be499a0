"""The gRPC server: kvmemo.v1, KServe v2 / Triton, health, reflection and metrics."""
