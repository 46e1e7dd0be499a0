"""The pod's side: plans read, reports merged under conflict, OOMs recorded, an absent apiserver survived."""

import json
import socket
import threading

import pytest
from kubernetes import client
from prometheus_client import REGISTRY

from service.publish import ConfigMapStore, Publisher
from tests.envtest.clients import token_client
from tests.k8s.kube import annotate, get_configmap, wait_for
from tests.k8s.reports import GiB, record

FP = "abcdef012345"


def store(pod="pod-a", **kwargs) -> ConfigMapStore:
    s = ConfigMapStore.from_environment("kvmemo", **kwargs)
    s.pod_name = pod
    return s


def report_annotation(admin, namespace, fp=FP) -> dict | None:
    raw = (get_configmap(admin, namespace)["metadata"].get("annotations") or {}).get(f"kvmemo.io/report.{fp}")
    return json.loads(raw) if raw else None


def write_plans(control_plane, namespace, data: dict, field_manager="kvmemo-controller") -> None:
    """As the controller writes them: its ServiceAccount's token, its field manager."""
    with token_client(control_plane, namespace, "kvmemo-controller") as ctl:
        client.CoreV1Api(ctl).patch_namespaced_config_map(
            "kvmemo", namespace, {"data": data}, field_manager=field_manager,
            _content_type="application/merge-patch+json")


PLAN = {"fingerprint": FP + "0" * 52, "kv_cache_memory_bytes": 5 * GiB, "free_at_start_bytes": 70 * GiB,
        "policy": "full", "source": "report", "updated_at": "2026-01-01T00:00:00Z"}


def test_read_plan(admin, control_plane, namespace, pod_env):
    s = store()
    assert s.read_plan(FP) is None
    write_plans(control_plane, namespace, {
        f"kv-cache-plan.{FP}": json.dumps(PLAN), "kv-cache-plan.0123456789ab": "{oops",
        "kv-cache-plan.00000000000b": json.dumps({**PLAN, "kv_cache_memory_bytes": -1})})
    assert s.read_plan(FP) == PLAN
    assert s.read_plan("0123456789ab") is None
    assert s.read_plan("00000000000b") is None


def test_read_plan_refuses_a_plan_the_controller_did_not_write(control_plane, namespace, pod_env, caplog):
    """Issue 14 item 10: read_plan read by name and never checked. It now serves a plan only when the field
    manager kvmemo-controller owns it, which the admission policy lets only the controller's ServiceAccount
    be; here even that account's token, used through another client (kubectl's manager), is refused."""
    write_plans(control_plane, namespace, {f"kv-cache-plan.{FP}": json.dumps(PLAN)}, field_manager="kubectl-patch")
    assert store().read_plan(FP) is None
    assert "was not written by the controller" in caplog.text
    rewritten = {**PLAN, "updated_at": "2026-01-02T00:00:00Z"}  # an unchanged value moves no ownership
    write_plans(control_plane, namespace, {f"kv-cache-plan.{FP}": json.dumps(rewritten)})
    assert store().read_plan(FP) == rewritten


def test_merge_keeps_minimum_and_pods(admin, namespace, pod_env):
    a, b = store("pod-a"), store("pod-b")
    a.merge_report(record(weights=16 * GiB))
    b.merge_report(record(weights=18 * GiB))
    a.merge_report(record(weights=17 * GiB))
    merged = report_annotation(admin, namespace)
    smallest = record(weights=18 * GiB)
    assert merged["suggestions"] == smallest["suggestions"]
    assert merged["components"] == smallest["components"]
    assert merged["pods"] == ["pod-b", "pod-a"] or merged["pods"] == ["pod-a", "pod-b"]
    assert merged["schema"] == 1


def test_conflicting_pods_lose_no_report(admin, namespace, pod_env):
    writers = [store(f"pod-{i}") for i in range(4)]
    weights = {f"pod-{i}": [(10 + 4 * i + j) * GiB // 4 for j in range(4)] for i in range(4)}
    barrier = threading.Barrier(len(writers))
    errors = []

    def run(s: ConfigMapStore):
        barrier.wait()
        try:
            for w in weights[s.pod_name]:
                s.merge_report(record(weights=w))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sum(s.conflicts for s in writers) > 0, "the writers never collided: the test proves nothing"
    merged = report_annotation(admin, namespace)
    heaviest = max(w for ws in weights.values() for w in ws)
    assert merged["suggestions"] == record(weights=heaviest)["suggestions"]
    assert sorted(merged["pods"]) == sorted(weights)


def test_record_oom_counts_and_keeps_smallest(admin, namespace, pod_env):
    s = store()
    s.record_oom(FP, 10 * GiB)
    s.record_oom(FP, 8 * GiB)
    s.record_oom(FP, 9 * GiB)
    raw = get_configmap(admin, namespace)["metadata"]["annotations"][f"kvmemo.io/oom.{FP}"]
    oom = json.loads(raw)
    assert (oom["count"], oom["kv_cache_memory_bytes"]) == (3, 8 * GiB)
    with pytest.raises(ValueError, match="positive"):
        s.record_oom(FP, 0)


def failures(kind="report") -> float:
    return REGISTRY.get_sample_value("kvmemo_publish_failures_total", {"kind": kind}) or 0.0


def test_apiserver_down_never_blocks_and_publishes_later(admin, control_plane, namespace, pod_env):
    publisher = Publisher(store(request_timeout=1.0), max_backoff=1.0).start()
    before = failures()
    control_plane.stop_apiserver()
    try:
        publisher.publish_report(record())  # only queued: test_silent_apiserver_costs_one_timeout proves it
        reads = failures("read_plan")
        assert publisher.store.read_plan(FP) is None
        assert failures("read_plan") == reads + 1
        wait_for(lambda: failures() >= before + 2, timeout=60, what="failures counted")
        assert not publisher.flush(0.1)
    finally:
        control_plane.start_apiserver()
    assert publisher.flush(60), "the report was not written after the apiserver came back"
    publisher.stop()
    assert report_annotation(admin, namespace)["pods"] == ["pod-a"]


def accept_all(listener: socket.socket) -> int:
    """The connections clients have made to `listener` so far. The kernel completes each TCP handshake before
    accept(), so every connect() of a call that has returned is already queued here."""
    listener.setblocking(False)
    count = 0
    while True:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


def test_silent_apiserver_costs_one_timeout(control_plane, pod_env, tmp_path, monkeypatch):
    """An apiserver that accepts connections and never answers (overloaded, or a black-holed route)."""
    from tests.envtest.controlplane import write_kubeconfig

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        host = f"https://127.0.0.1:{silent.getsockname()[1]}"
        kubeconfig = write_kubeconfig(tmp_path / "silent.kubeconfig", host, control_plane.files.ca_cert,
                                      user={"token": "x"})
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        reads = failures("read_plan")
        assert store(request_timeout=1.0).read_plan(FP) is None
        assert failures("read_plan") == reads + 1
        assert accept_all(silent) == 1, "one read must cost one connection and one timeout, not urllib3's retries"

        # With a timeout far beyond the test, a write that publish_report waited for would have failed by the
        # time it returned; a queued one is still pending.
        publisher = Publisher(store(request_timeout=600.0), max_backoff=0.5).start()
        before = failures()
        publisher.publish_report(record())
        assert failures() == before and not publisher.flush(0), "publishing must not wait for the apiserver"
        publisher.stop(timeout=0)

