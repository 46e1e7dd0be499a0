"""Processes for the observability tests: `kvmemo serve` and a Prometheus that scrapes it."""

import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

from tests.deploy.render import ROOT
from tests.health import serving


def wait_until(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process exited with {proc.returncode}:\n{tail(log)}")
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"{what}: not within {timeout:.0f} s\n{tail(log)}")


def tail(log: Path | None) -> str:
    return log.read_text(errors="replace")[-3000:] if log and log.exists() else ""


def start_server(grpc_port: int, metrics_port: int, cache: Path, log: Path, *extra: str) -> subprocess.Popen:
    """`kvmemo serve --model tiny` on CPU, with its plan file store under `cache`."""
    argv = [sys.executable, "-m", "service.cli", "serve", "--model", "tiny", "--host", "127.0.0.1",
            "--port", str(grpc_port), "--metrics-port", str(metrics_port), "--drain-grace-seconds", "2", *extra]
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT)
    wait_until(lambda: serving(grpc_port), 180, f"kvmemo serve on port {grpc_port}", proc, log)
    return proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def prometheus_config(targets: dict[str, list[tuple[int, dict]]], rule_file: Path) -> dict:
    """One job per name; each target is (port, labels). Labels stand in for what a ServiceMonitor adds."""
    return {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rule_file)],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{port}"], "labels": labels}
                                                 for port, labels in ts]}
            for job, ts in targets.items()],
    }


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


def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def api(port: int, path: str, **params) -> dict:
    """Prometheus' HTTP API; a PromQL parse error comes back as status error with its message."""
    url = f"http://127.0.0.1:{port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        return json.load(e)
