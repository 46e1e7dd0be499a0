"""Processes for the observability tests: `kvmemo serve` and a Prometheus that scrapes it."""

import json
import os
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

from deploy.grafana.local_prometheus import start_prometheus, stop, wait_until  # noqa: F401  re-exported for the tests
from tests.deploy.render import ROOT
from tests.health import serving


def start_server(grpc_port: int, metrics_port: int, cache: Path, log: Path, *extra: str) -> subprocess.Popen:
    """`kvmemo serve --model tiny` on CPU, with its plan file store under `cache`."""
    argv = [sys.executable, "-m", "service.cli", "serve", "--model", "tiny", "--host", "127.0.0.1",
            "--port", str(grpc_port), "--metrics-port", str(metrics_port), "--drain-grace-seconds", "2", *extra]
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT)
    wait_until(lambda: serving(grpc_port), 180, f"kvmemo serve on port {grpc_port}", proc, log)
    return proc


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


def api(port: int, path: str, **params) -> dict:
    """Prometheus' HTTP API; a PromQL parse error comes back as status error with its message."""
    url = f"http://127.0.0.1:{port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        return json.load(e)
