"""kvmemo: a gRPC inference service for Llama-family LLMs that measures its GPU memory once and remembers."""

__version__ = "0.1.0"
