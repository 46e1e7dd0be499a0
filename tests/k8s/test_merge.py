"""Merging reports and OOM records (pure): the order of pods' writes must not matter."""

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from service.contract.merge import merge_oom, merge_reports, new_report
from tests.k8s.reports import GiB, record


@settings(max_examples=50, deadline=None)
@given(st.permutations([(f"pod-{i}", w) for i, w in enumerate([12, 16, 14, 20, 11])]))
def test_any_order_gives_minimum_and_all_pods(writes):
    stored = None
    for pod, weights_gib in writes:
        stored = json.dumps(merge_reports(stored, new_report(record(weights=weights_gib * GiB), pod)))
    merged = json.loads(stored)
    assert merged["suggestions"] == record(weights=20 * GiB)["suggestions"]
    assert merged["components"]["weights"] == 20 * GiB
    assert sorted(merged["pods"]) == sorted(pod for pod, _ in writes)


def test_unreadable_or_foreign_report_is_replaced():
    new = new_report(record(), "pod-a")
    assert merge_reports("{garbage", new) == new
    other = new_report(record(suffix="0" * 52), "pod-b")
    assert merge_reports(json.dumps(other), new) == new


def test_new_report_keeps_contract_fields_only():
    r = new_report({**record(), "seconds": 12.5, "secret": "x"}, "pod-a")
    assert set(r) == {"schema", "fingerprint", "device", "total_bytes", "free_at_start_bytes", "requested_bytes",
                      "safety_bytes", "components", "suggestions", "engine_version", "pods", "updated_at"}


def test_oom_counts_up_and_keeps_smallest():
    first = merge_oom(None, 10 * GiB)
    second = merge_oom(json.dumps(first), 12 * GiB)
    assert (second["count"], second["kv_cache_memory_bytes"]) == (2, 10 * GiB)
    assert merge_oom("[]", GiB)["count"] == 1


def test_profiler_record_passes_the_controller():
    """The contract end to end in pure code: what the profiler records, the controller accepts."""
    from service.contract.records import parse_report
    from service.memory.memory_profile import Components, MemoryProfile, requested_bytes, suggest

    components = Components(weights=16 * GiB, activation_peak=3 * GiB, non_torch=GiB // 3, cudagraph=GiB // 5)
    total, free, safety = 80 * GiB, 79 * GiB, GiB // 4
    rec = MemoryProfile(fingerprint="ab" * 32, device="NVIDIA H100 80GB HBM3", total_bytes=total,
                     free_at_start_bytes=free, gpu_memory_utilization=0.9,
                     requested_bytes=requested_bytes(0.9, total), components=components, safety_bytes=safety,
                     suggestions=suggest(total, free, 0.9, components, safety), seconds=3.5)
    report = new_report(rec.to_json(), "pod-a")
    parsed = parse_report("ab" * 6, json.dumps(report))
    assert parsed.full_bytes == rec.suggestions.full_bytes
    assert parsed.fit_requested_bytes == rec.suggestions.fit_requested_bytes


def test_pods_keep_the_latest_names_within_the_limit():
    from service.contract.keys import MAX_PODS_PER_REPORT

    stored = None
    for i in range(MAX_PODS_PER_REPORT + 5):
        stored = json.dumps(merge_reports(stored, new_report(record(), f"pod-{i}")))
    pods = json.loads(stored)["pods"]
    assert len(pods) == MAX_PODS_PER_REPORT and pods[-1] == f"pod-{MAX_PODS_PER_REPORT + 4}"
