"""A real Prometheus (Debian's package) scrapes two `kvmemo serve --model tiny` processes (one cold
boot that profiles, one warm boot from the plan file the first wrote) and a `kvmemo controller` on the
envtest control plane. Every dashboard query returns data; the alert rules load and evaluate; our
/metrics pages pass `promtool check metrics`."""

import json
import math
import os
import re
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from kubernetes import client

from tests.deploy.promstack import api, prometheus_config, start_prometheus, start_server, stop, wait_until
from tests.deploy.render import ROOT, run
from tests.ports import free_port

NAMESPACE = "kvmemo-metrics"
PODS = ("kvmemo-0", "kvmemo-1")
DASHBOARD = ROOT / "deploy" / "grafana" / "kvmemo-dashboard.json"
RULES = ROOT / "deploy" / "prometheus" / "kvmemo-rules.yaml"
# Series that may have no sample yet; queries over them are checked to parse only. The test fails once
# one has data, so that it is taken off this list and its panel is held to returning data.
NOT_YET_EXPORTED: set[str] = set()
VARIABLES = {"$namespace": NAMESPACE, "$model": "tiny", "$pod": "|".join(PODS), "$__rate_interval": "30s"}


@pytest.fixture(scope="module")
def ports():
    return {"grpc": [free_port(), free_port()], "metrics": [free_port(), free_port()],
            "controller": free_port(), "prometheus": free_port()}


@pytest.fixture(scope="module")
def servers(ports, tmp_path_factory):
    cache, logs = tmp_path_factory.mktemp("cache"), tmp_path_factory.mktemp("logs")
    procs = []
    try:
        procs.append(start_server(ports["grpc"][0], ports["metrics"][0], cache, logs / "serve-0.log"))
        # The second boots from the plan file the first wrote. On CPU "device" memory is the host's, which
        # the first server and whatever else runs here have just used: widen the free-memory gate.
        procs.append(start_server(ports["grpc"][1], ports["metrics"][1], cache, logs / "serve-1.log",
                                  "--plan-free-tolerance-bytes", str(8 << 30)))
        yield cache
    finally:
        for p in procs:
            stop(p)


@pytest.fixture(scope="module")
def prometheus(ports, servers, prometheus_bin, tmp_path_factory):
    targets = {
        "kvmemo": [(ports["metrics"][i], {"namespace": NAMESPACE, "pod": PODS[i]}) for i in range(2)],
        "kvmemo-controller": [(ports["controller"], {"namespace": NAMESPACE, "pod": "kvmemo-controller-0"})],
    }
    proc = start_prometheus(prometheus_bin, prometheus_config(targets, RULES), tmp_path_factory.mktemp("prom"),
                            ports["prometheus"])
    wait_until(lambda: len(query(ports["prometheus"], 'up{job="kvmemo"} == 1')) == 2, 30, "both servers scraped")
    yield ports["prometheus"]
    stop(proc)


@pytest.fixture(scope="module")
def traffic(ports, prometheus):
    """Concurrent streams on both servers, then a few scrapes; returns when to evaluate queries."""
    from service.proto.kvmemo.v1 import kvmemo_pb2 as pb
    from service.proto.kvmemo.v1 import kvmemo_pb2_grpc as pb_grpc

    def generate(port: int, i: int) -> int:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            request = pb.GenerateRequest(text=f"request {i}: tell me about memory", max_tokens=48)
            return sum(len(m.token_ids) for m in pb_grpc.KvmemoServiceStub(channel).Generate(request, timeout=120))

    def wave():
        with ThreadPoolExecutor(16) as pool:
            assert sum(pool.map(lambda i: generate(ports["grpc"][i % 2], i), range(32))) > 0

    # Histogram and counter series appear with their first request: a rate over them needs a scrape
    # before the second wave as well as one after it.
    wave()
    wait_until(lambda: len(query(prometheus, "kvmemo_time_to_first_token_seconds_count")) == 2, 30,
               "the first wave's histograms scraped")
    wave()
    # Every request of both waves scraped: rate() and increase() then have samples on both sides of the second.
    wait_until(lambda: sum(float(r["value"][1]) for r in query(prometheus, "kvmemo_time_to_first_token_seconds_count"))
               >= 64, 120, "the second wave's histograms scraped")
    return time.time()


@pytest.fixture(scope="module")
def controller(control_plane, ports, servers, prometheus, tmp_path_factory):
    """The controller as its pod runs it (its ServiceAccount's token), with one valid report for the
    servers' fingerprint and one malformed report, so its plan and rejection series exist."""
    from tests.envtest.clients import admin_client, token_kubeconfig
    from tests.k8s.kube import annotate, apply, create_configmap, load_manifest, start_controller
    from tests.k8s.reports import report

    workdir = tmp_path_factory.mktemp("controller")
    with admin_client(control_plane) as admin:
        client.CoreV1Api(admin).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE)))
        apply(admin, load_manifest("rbac.yaml"), namespace=NAMESPACE)
        create_configmap(admin, NAMESPACE)
        fp12 = next((servers / "kvmemo" / "plans").glob("*.json")).stem  # the plan file the cold boot wrote
        annotate(admin, NAMESPACE, {f"kvmemo.io/report.{fp12}": report(fp=fp12, pods=list(PODS)),
                                    "kvmemo.io/report.0123456789ab": "{not json"})
    kubeconfig = token_kubeconfig(control_plane, workdir / "kubeconfig", NAMESPACE, "kvmemo-controller")
    proc = start_controller(kubeconfig, NAMESPACE, ports["controller"], workdir / "controller.log")
    try:
        wait_until(lambda: query(prometheus, "kvmemo_controller_plan_bytes"), 60, "a plan scraped from the controller",
                   proc, workdir / "controller.log")
        wait_until(lambda: query(prometheus, "count_over_time(kvmemo_controller_plan_bytes[5m]) >= 2"), 120,
                   "two scrapes of the controller (rate() and increase() need them)", proc, workdir / "controller.log")
        yield ports["controller"]
    finally:
        stop(proc)


def query(prom_port: int, expr: str, at: float | None = None) -> list:
    answer = api(prom_port, "query", query=expr, **({"time": at} if at else {}))
    assert answer["status"] == "success", f"{expr}\n{answer.get('error')}"
    return answer["data"]["result"]


def metrics_page(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


def substitute(expr: str) -> str:
    for name in sorted(VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, VARIABLES[name])
    return expr


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expr) for every target, and each variable's label_values() as its series query."""
    dashboard = json.loads(DASHBOARD.read_text())
    out = [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]
    for v in dashboard["templating"]["list"]:
        if v["type"] == "query":
            selector, label = re.fullmatch(r"label_values\((.*), (\w+)\)", v["query"]["query"]).groups()
            out.append((f"variable {v['name']}", f"count by ({label}) ({selector})"))
    return out


def assert_return_data(prom_port: int, queries: list[tuple[str, str]], at: float) -> None:
    empty = []
    for title, expr in queries:
        values = [float(r["value"][1]) for r in query(prom_port, substitute(expr), at)]
        if not any(not math.isnan(v) for v in values):
            empty.append(f"{title}: {'only NaN' if values else 'no data'} for {substitute(expr)}")
    assert not empty, "\n".join(empty)


def test_promtool_check_metrics(ports, servers, promtool):
    for port in ports["metrics"]:
        p = run([promtool, "check", "metrics"], input=metrics_page(port))
        assert p.returncode == 0 and not (p.stdout + p.stderr).strip(), p.stdout + p.stderr


def test_cold_and_warm_boot_are_told_apart(prometheus):
    sources = {r["metric"]["pod"]: r["metric"]["source"] for r in query(prometheus, "kvmemo_kv_cache_plan_info")}
    assert sources["kvmemo-0"] == "profile", sources
    assert sources["kvmemo-1"] != "profile", sources


def test_dashboard_server_queries_return_data(prometheus, traffic):
    arrived = sorted(n for n in NOT_YET_EXPORTED if query(prometheus, n, traffic))
    assert not arrived, f"{arrived} now have data: take them off NOT_YET_EXPORTED"
    queries = [(t, e) for t, e in dashboard_queries() if "kvmemo_controller_" not in e]
    pending = [(t, e) for t, e in queries if set(re.findall(r"\bkvmemo_[a-z_]+", e)) & NOT_YET_EXPORTED]
    for title, expr in pending:
        query(prometheus, substitute(expr), traffic)  # parses
    assert_return_data(prometheus, [q for q in queries if q not in pending], traffic)


def test_dashboard_controller_queries_return_data(prometheus, controller, promtool):
    queries = [(t, e) for t, e in dashboard_queries() if "kvmemo_controller_" in e]
    assert_return_data(prometheus, queries, time.time())
    p = run([promtool, "check", "metrics"], input=metrics_page(controller))
    assert p.returncode == 0 and not (p.stdout + p.stderr).strip(), p.stdout + p.stderr


def test_alert_rules_evaluate_on_scraped_series(prometheus, traffic, controller):
    """The alerts fire on conditions this test cannot make (an OOM, a cache 95% full for 10 minutes);
    promtool's unit tests cover when they fire. Here: Prometheus loads them and evaluates each without
    error on the real series, and every metric they name is one the scraped processes export (a series,
    or, for a counter with no sample yet such as kvmemo_oom_total, its metadata)."""
    # At least one evaluation of every group after the controller's series appeared.
    evaluated = {g["name"]: g["lastEvaluation"] for g in api(prometheus, "rules")["data"]["groups"]}
    wait_until(lambda: all(g["lastEvaluation"] != evaluated[g["name"]] for g in api(prometheus, "rules")["data"]["groups"]),
               120, "a rule evaluation after the controller's first scrapes")
    groups = api(prometheus, "rules")["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) == 6
    for r in rules:
        assert r["health"] == "ok" and not r.get("lastError"), r
        query(prometheus, r["query"])  # parses through the query API too
    series = set(api(prometheus, "label/__name__/values")["data"])
    families = set(api(prometheus, "metadata")["data"])  # named without _total, _bucket, ...
    for r in rules:
        for name in set(re.findall(r"\bkvmemo_[a-z_]+", r["query"])):
            family = re.sub(r"_(total|bucket|count|sum)$", "", name)
            assert name in series or family in families, f"{r['name']} uses {name}, which nothing exports"


def test_render_memory_panels(prometheus, traffic, tmp_path):
    """deploy/grafana/render_panels.py draws the Memory row; KVMEMO_RENDER_DOCS=1 refreshes the README's picture."""
    out = ROOT / "docs" / "dashboard-memory.png" if os.environ.get("KVMEMO_RENDER_DOCS") else tmp_path / "memory.png"
    p = run([sys.executable, str(ROOT / "deploy" / "grafana" / "render_panels.py"),
             "--prometheus", f"http://127.0.0.1:{prometheus}", "--out", str(out), "--namespace", NAMESPACE,
             "--model", "tiny", "--pod", "|".join(PODS), "--minutes", "1.5"])
    assert p.returncode == 0, p.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
