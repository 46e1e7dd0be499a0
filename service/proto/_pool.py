"""Triton's tritonclient registers its own `inference.*` messages in protobuf's default descriptor pool, so
ours live in a pool of their own: a process can import both tritonclient and service.proto.inference."""

from google.protobuf import descriptor_pool

INFERENCE = descriptor_pool.DescriptorPool()
