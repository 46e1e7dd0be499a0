"""The reason kvmemo exists, end to end on the real control plane: a pod profiles and reports, the controller
writes the plan, the restarted pod boots from it without profiling; a memory-relevant change profiles again;
and an unreachable apiserver never stops a pod from serving."""

import json
import signal

from tests.k8s.kube import get_configmap, scrape, wait_for
from tests.ports import free_port
from tests.server.conftest import start_server

SERVE = ("--configmap", "kvmemo", "--max-model-len", "256", "--max-num-seqs", "4", "--max-num-batched-tokens", "128",
         "--drain-grace-seconds", "1")


def fingerprint_from(log: str) -> str:
    return log.split("fingerprint ", 1)[1].split()[0]


def test_profile_report_plan_restart_skips_profiling(pod_env, controllers, admin, namespace, tmp_path):
    controllers.start()
    first = start_server(tmp_path, *SERVE)
    fp12 = fingerprint_from(first.log())
    assert "profiling memory: no kv-cache-plan." + fp12 in first.log()
    report = wait_for(lambda: get_configmap(admin, namespace)["metadata"].get("annotations", {}).get(
        f"kvmemo.io/report.{fp12}"), what="the pod's report")
    assert json.loads(report)["pods"] == ["pod-a"]
    plan = json.loads(wait_for(lambda: (get_configmap(admin, namespace).get("data") or {}).get(
        f"kv-cache-plan.{fp12}"), what="the controller's plan"))
    assert first.stop() == 0

    # On CPU "device" memory is the host's, which other processes use too: widen the free-memory gate so that
    # the plan applies however much this machine's load moved since the first boot.
    second = start_server(tmp_path, *SERVE, "--plan-free-tolerance-bytes", str(8 << 30))
    log = second.log()
    assert "skipped profiling" in log and "profiling memory" not in log
    labels = {"fingerprint": fp12, "model_name": "tiny", "source": "configmap"}  # as exposed: sorted
    assert scrape(second.metrics_port, "kvmemo_kv_cache_plan_info", labels) == 1
    assert scrape(second.metrics_port, "kvmemo_kv_cache_memory_bytes", {"model_name": "tiny"}) <= \
        plan["kv_cache_memory_bytes"]
    assert second.stop() == 0

    changed = start_server(tmp_path, *SERVE[:-4], "--max-num-batched-tokens", "64", "--drain-grace-seconds", "1")
    assert fingerprint_from(changed.log()) != fp12 and "profiling memory" in changed.log()
    assert changed.stop() == 0


def test_unreachable_apiserver_never_stops_the_pod_from_serving(pod_env, tmp_path, monkeypatch):
    dead = tmp_path / "dead.kubeconfig"
    config = json.loads(json.dumps(__import__("yaml").safe_load(pod_env.read_text())))
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{free_port()}"
    dead.write_text(json.dumps(config))
    monkeypatch.setenv("KUBECONFIG", str(dead))
    server = start_server(tmp_path, *SERVE)
    assert "profiling memory" in server.log()  # the plan could not be read: it measures for itself
    failures = wait_for(lambda: scrape(server.metrics_port, "kvmemo_publish_failures_total", {"kind": "report"}),
                        what="a counted report failure")
    assert failures >= 1
    assert server.stop(signal.SIGTERM) == 0
