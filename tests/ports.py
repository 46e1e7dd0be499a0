"""The one free_port for tests and benchmarks."""

import socket


def free_port() -> int:
    """A loopback TCP port free right now (another process may take it before it is bound again)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
