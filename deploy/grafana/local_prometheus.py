"""A Prometheus process on loopback: started, waited for and stopped. deploy/grafana/backfill.py serves saved
scrapes with it, and the tests start theirs with it, so both run Prometheus the same way."""

import json
import socket
import subprocess
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    """A loopback TCP port free right now (another process may take it before it is bound again)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(log: Path | None) -> str:
    return log.read_text(errors="replace")[-3000:] if log and log.exists() else ""


def wait_until(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    """Polls `predicate` until it holds; fails early, with the log's tail, if `proc` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process exited with {proc.returncode}:\n{tail(log)}")
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"{what}: not within {timeout:.0f} s\n{tail(log)}")


def start_prometheus(binary: str, config: dict, workdir: Path, port: int, *flags: str) -> subprocess.Popen:
    """Its TSDB in workdir/data (which may hold blocks already); returns once it is ready."""
    (workdir / "prometheus.yml").write_text(json.dumps(config, indent=2))
    log = workdir / "prometheus.log"
    proc = subprocess.Popen([binary, f"--config.file={workdir / 'prometheus.yml'}",
                             f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                             *flags],
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT)
    wait_until(lambda: _ok(f"http://127.0.0.1:{port}/-/ready"), 60, "prometheus ready", proc, log)
    return proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False
