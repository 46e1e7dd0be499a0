"""`kvmemo controller` as a process, with the controller ServiceAccount's token, on the real apiserver."""

import json
import signal
import threading
import urllib.request

import pytest
from kubernetes import client

from tests.envtest.clients import token_client
from tests.k8s.kube import annotate, events, get_configmap, scrape, wait_for
from tests.k8s.reports import GiB, report

FP = "abcdef012345"


def plan(admin, namespace, fp=FP):
    raw = (get_configmap(admin, namespace).get("data") or {}).get(f"kv-cache-plan.{fp}")
    return json.loads(raw) if raw else None


def metric(port, name, **labels):
    try:
        return scrape(port, name, labels)
    except OSError:
        return None


def test_report_becomes_plan(admin, namespace, controllers):
    _, port = controllers.start("--headroom-percent", "5")
    r = report()
    annotate(admin, namespace, {f"kvmemo.io/report.{FP}": r})
    written = wait_for(lambda: plan(admin, namespace), what="the plan")
    assert written["kv_cache_memory_bytes"] == r["suggestions"]["fit_requested_bytes"] * 95 // 100
    assert written["fingerprint"] == r["fingerprint"] and written["source"] == "report"
    wait_for(lambda: metric(port, "kvmemo_controller_plan_bytes", fingerprint=FP) == written["kv_cache_memory_bytes"],
             what="the plan gauge")
    assert metric(port, "kvmemo_controller_is_leader") == 1
    wait_for(lambda: metric(port, "kvmemo_controller_reconcile_total", result="written") == 1, what="the write counted")
    wait_for(lambda: any(e.reason == "PlanWritten" and FP in e.message for e in events(admin, namespace)),
             what="a PlanWritten Event")
    for path in ("/healthz", "/readyz"):
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5).status == 200


HOSTILE = {
    "0000000000a1": ("{not json", "bad_json"),
    "0000000000a2": (lambda r: {**r, "suggestions": {**r["suggestions"], "full_bytes": -1}}, "not_positive"),
    "0000000000a3": (lambda r: {**r, "suggestions": {**r["suggestions"], "fit_requested_bytes": 10 ** 14}},
                     "above_total"),
    "0000000000a4": (lambda r: {**r, "device": "x" * 200_000}, "too_large"),
}


def rejected_events(admin, namespace) -> list:
    return [e for e in events(admin, namespace) if e.type == "Warning" and e.reason == "ReportRejected"]


def test_hostile_reports_rejected_with_one_counting_warning_and_no_plan(admin, namespace, controllers):
    _, port = controllers.start("--event-interval", "1s")
    values = {}
    for fp, (make, _) in HOSTILE.items():
        values[f"kvmemo.io/report.{fp}"] = make if isinstance(make, str) else make(report(fp=fp))
    annotate(admin, namespace, values)

    # Aggregated as client-go's correlator does: one Event object, its count reaching one per bad value.
    wait_for(lambda: sum(e.count for e in rejected_events(admin, namespace)) == len(HOSTILE),
             what="the Warning counting each hostile report")
    assert len(rejected_events(admin, namespace)) == 1
    for reason in {reason for _, reason in HOSTILE.values()}:
        assert metric(port, "kvmemo_controller_reports_rejected_total", reason=reason) == 1, reason
    data = get_configmap(admin, namespace).get("data") or {}
    assert not [k for k in data if k.startswith("kv-cache-plan.")]
    assert metric(port, "kvmemo_controller_reconcile_total", result="written") == 0


def test_flood_of_junk_reports_leaves_few_events_and_the_plan_arrives(control_plane, admin, namespace, controllers):
    """A pod with report-write rights rewrites the junk it may keep (its own token, as fast as 4 threads go)
    while another pod reports for real: the plan arrives, and the Warnings stay one Event per reason.
    (The latency under that flood is measured in bench/controller.py.)"""
    _, port = controllers.start()
    junk_keys = [f"kvmemo.io/report.{i:012x}" for i in range(1, 13)]
    stop, writes = threading.Event(), []

    def flood(worker: int):
        with token_client(control_plane, namespace, "kvmemo") as pod:
            n = 0
            while not stop.is_set():
                annotate(pod, namespace, {k: f'{{"junk": {worker}, "n": {n}}}' for k in junk_keys})
                n += 1
            writes.append(n)

    threads = [threading.Thread(target=flood, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: (metric(port, "kvmemo_controller_reports_rejected_total", reason="schema") or 0) >= 500,
                 what="hundreds of junk values rejected")
        with token_client(control_plane, namespace, "kvmemo") as pod:
            annotate(pod, namespace, {f"kvmemo.io/report.{FP}": report()})
        wait_for(lambda: plan(admin, namespace), what="the plan under the flood")
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert len(writes) == 4 and all(writes)  # each writer took part in the flood
    assert len(rejected_events(admin, namespace)) <= 2  # one per reason (all are `schema` here), never one per value


def test_oom_lowers_plan_with_event(admin, namespace, controllers):
    controllers.start("--oom-step-percent", "20")
    annotate(admin, namespace, {f"kvmemo.io/report.{FP}": report()})
    first = wait_for(lambda: plan(admin, namespace), what="the plan")["kv_cache_memory_bytes"]
    oom = {"count": 1, "kv_cache_memory_bytes": first, "last_at": report()["updated_at"]}
    annotate(admin, namespace, {f"kvmemo.io/oom.{FP}": oom})
    lowered = wait_for(lambda: (p := plan(admin, namespace)) and p["source"] == "oom" and p, what="the lowered plan")
    assert lowered["kv_cache_memory_bytes"] == first * 80 // 100
    wait_for(lambda: any(e.reason == "PlanLowered" and str(first) in e.message for e in events(admin, namespace)),
             what="a PlanLowered Event")


def test_plans_pruned_after_ttl(admin, namespace, controllers):
    controllers.start("--plan-ttl", "4s", "--resync-period", "1s")
    annotate(admin, namespace, {f"kvmemo.io/report.{FP}": report()})
    wait_for(lambda: plan(admin, namespace), what="the plan")

    def gone():
        cm = get_configmap(admin, namespace)
        keys = set(cm.get("data") or {}) | set(cm["metadata"].get("annotations") or {})
        return not any(FP in k for k in keys)
    wait_for(gone, what="plan and report pruned")
    wait_for(lambda: any(e.reason == "PlanPruned" for e in events(admin, namespace)), what="a PlanPruned Event")


def test_killed_between_read_and_write_converges_without_duplicate_write(admin, namespace, controllers):
    doomed, _ = controllers.start(env={"KVMEMO_FAILPOINT": "controller-before-write"})
    annotate(admin, namespace, {f"kvmemo.io/report.{FP}": report()})
    assert doomed.wait(30) == 3, controllers.log(0)
    assert plan(admin, namespace) is None

    _, port = controllers.start()
    written = wait_for(lambda: plan(admin, namespace), what="the plan after restart")
    version = get_configmap(admin, namespace)["metadata"]["resourceVersion"]
    # Its own write comes back as a watch event; reconciling it must change nothing.
    wait_for(lambda: (metric(port, "kvmemo_controller_reconcile_total", result="unchanged") or 0) >= 1,
             what="the restarted controller seeing its own write")
    assert metric(port, "kvmemo_controller_reconcile_total", result="written") == 1
    assert get_configmap(admin, namespace)["metadata"]["resourceVersion"] == version
    assert plan(admin, namespace) == written


def test_two_controllers_one_leader_standby_takes_over(admin, namespace, controllers):
    (a, port_a), (b, port_b) = controllers.start("--identity", "ctl-a"), controllers.start("--identity", "ctl-b")
    leaders = lambda: [p for p in (port_a, port_b) if metric(p, "kvmemo_controller_is_leader") == 1]  # noqa: E731
    wait_for(lambda: len(leaders()) == 1, what="one leader")
    leader_port = leaders()[0]
    leader, standby_port = (a, port_b) if leader_port == port_a else (b, port_a)
    lease = client.CoordinationV1Api(admin).read_namespaced_lease("kvmemo-controller", namespace)
    assert lease.spec.holder_identity == ("ctl-a" if leader is a else "ctl-b")

    annotate(admin, namespace, {f"kvmemo.io/report.{FP}": report()})
    wait_for(lambda: plan(admin, namespace), what="the plan")
    # The metric counts the write once its PATCH has returned, which may be after the plan is visible.
    wait_for(lambda: metric(leader_port, "kvmemo_controller_reconcile_total", result="written") == 1,
             what="the leader counting its write")
    assert metric(standby_port, "kvmemo_controller_reconcile_total", result="written") == 0
    assert metric(standby_port, "kvmemo_controller_is_leader") == 0

    leader.send_signal(signal.SIGKILL)  # no release: the standby must wait the lease out
    leader.wait()
    wait_for(lambda: metric(standby_port, "kvmemo_controller_is_leader") == 1, what="takeover")
    other = "0123456789ab"
    annotate(admin, namespace, {f"kvmemo.io/report.{other}": report(fp=other, weights=20 * GiB)})
    wait_for(lambda: plan(admin, namespace, other), what="a plan from the new leader")
    lease = client.CoordinationV1Api(admin).read_namespaced_lease("kvmemo-controller", namespace)
    assert lease.spec.holder_identity == ("ctl-b" if leader is a else "ctl-a")
    assert lease.spec.lease_transitions >= 1


def test_controller_takes_back_a_plan_another_field_manager_wrote(control_plane, admin, namespace, controllers):
    """read_plan refuses a plan that the field manager kvmemo-controller does not own; the controller then
    writes it again, even when its numbers are right, so the pods are not left profiling."""
    controllers.start()
    annotate(admin, namespace, {f"kvmemo.io/report.{FP}": report()})
    written = wait_for(lambda: plan(admin, namespace), what="the plan")
    with token_client(control_plane, namespace, "kvmemo-controller") as other_client:
        client.CoreV1Api(other_client).patch_namespaced_config_map("kvmemo", namespace, {"data": {
            f"kv-cache-plan.{FP}": json.dumps({**written, "updated_at": "2026-01-01T00:00:00.000000Z"})}},
            field_manager="kubectl-patch", _content_type="application/merge-patch+json")

    def owner() -> set:
        fields = get_configmap(admin, namespace)["metadata"]["managedFields"]
        return {m["manager"] for m in fields if f"f:kv-cache-plan.{FP}" in (m.get("fieldsV1") or {}).get("f:data", {})}
    wait_for(lambda: owner() == {"kvmemo-controller"}, what="the controller owning the plan again")
    assert plan(admin, namespace)["kv_cache_memory_bytes"] == written["kv_cache_memory_bytes"]
