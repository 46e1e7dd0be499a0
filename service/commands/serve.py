"""`kvmemo serve`: the gRPC inference service. Every flag falls back to KVMEMO_<FLAG>."""

import argparse
import asyncio
import logging
import os
from pathlib import Path

# Before torch loads: OpenMP threads that spin while idle starve the event loop and the gRPC threads on a
# small CPU (on 2 cores, 64 streams ran at a third of the in-process token rate); sleeping ones do not.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from service.commands.engine_args import add_engine_arguments, engine_config_from_args, env_default, env_name, with_default
from service.errors import ConfigError
from service.server.state import Limits

SERVER_FLAGS = [
    # (name, type, default, help)
    ("host", str, "0.0.0.0", "address to listen on"),
    ("port", int, 50051, "gRPC port"),
    ("metrics_port", int, 8000, "Prometheus metrics HTTP port"),
    ("served_model_name", str, None, "the model name clients use (default: the preset or directory name)"),
    ("max_concurrent_requests", int, 256, "requests in flight at once; more get RESOURCE_EXHAUSTED"),
    ("max_waiting_requests", int, 256, "requests waiting for the engine; more get RESOURCE_EXHAUSTED"),
    ("max_message_bytes", int, 4 << 20, "largest gRPC message received or sent"),
    ("drain_grace_seconds", float, 30.0, "on SIGTERM/SIGINT, how long in-flight requests may take to finish"),
    ("max_consecutive_step_failures", int, 3, "after this many failed engine steps in a row, health turns "
     "NOT_SERVING for good (liveness fails and the kubelet restarts the pod)"),
    ("max_connection_age_seconds", float, 0.0, "send GOAWAY on a connection this old, so clients reconnect and "
     "spread over new replicas (0: never)"),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("server", "each flag falls back to the environment variable KVMEMO_<FLAG>")
    for name, kind, default, help_text in SERVER_FLAGS:
        group.add_argument("--" + name.replace("_", "-"), type=kind, default=None, metavar=name.upper(),
                           help=with_default(help_text, default, env_name(name)))
    add_engine_arguments(parser)


def server_value(args: argparse.Namespace, name: str):
    value = getattr(args, name)
    if value is not None:
        return value
    _, kind, default, _ = next(f for f in SERVER_FLAGS if f[0] == name)
    return env_default(name, kind, default)


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from service.server.app import ServeOptions, serve

    try:
        config = engine_config_from_args(args)
        limits = Limits(server_value(args, "max_concurrent_requests"), server_value(args, "max_waiting_requests"),
                        server_value(args, "max_message_bytes"))
        for name in ("max_concurrent_requests", "max_waiting_requests", "max_message_bytes"):
            if getattr(limits, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(limits, name)}")
        grace = server_value(args, "drain_grace_seconds")
        if grace < 0:
            raise ConfigError(f"drain_grace_seconds must be >= 0, got {grace}")
        failures = server_value(args, "max_consecutive_step_failures")
        if failures < 1:
            raise ConfigError(f"max_consecutive_step_failures must be >= 1, got {failures}")
        age = server_value(args, "max_connection_age_seconds")
        if age < 0:
            raise ConfigError(f"max_connection_age_seconds must be >= 0, got {age}")
        options = ServeOptions(model_name=server_value(args, "served_model_name") or Path(config.model).name,
                               host=server_value(args, "host"), port=server_value(args, "port"),
                               metrics_port=server_value(args, "metrics_port"), drain_grace_seconds=grace,
                               limits=limits, max_consecutive_step_failures=failures,
                               max_connection_age_seconds=age)
    except ConfigError as e:
        logging.getLogger("kvmemo.server").error("%s", e)
        return 2
    return asyncio.run(serve(config, options))
