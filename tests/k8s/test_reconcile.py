"""The pure reconcile function: ConfigMap in, merge patch out."""

import json
from datetime import datetime, timedelta, timezone

import pytest

from controller.reconcile import Settings, reconcile
from service.contract.records import Rejected, parse_report
from service.contract.keys import now_rfc3339
from tests.k8s import reports
from tests.k8s.reports import GiB, configmap, record

FP = "abcdef012345"
RKEY, OKEY, PKEY = f"kvmemo.io/report.{FP}", f"kvmemo.io/oom.{FP}", f"kv-cache-plan.{FP}"
NOW = datetime.now(timezone.utc)


def report(**kwargs) -> dict:
    """Written by the module's one clock, NOW: reconcile() judges each report's age against the `now` it is
    given, and a suite may run for longer than the 10 minutes of clock skew allowed."""
    return reports.report(at=NOW, **kwargs)


def applied(cm: dict, patch: dict | None) -> dict:
    """What the apiserver would store after the merge patch (null deletes)."""
    if patch is None:
        return cm
    out = json.loads(json.dumps(cm))
    for section, target in ((patch.get("data") or {}, out["data"]),
                            ((patch.get("metadata") or {}).get("annotations") or {}, out["metadata"]["annotations"])):
        for key, value in section.items():
            if value is None:
                target.pop(key, None)
            else:
                target[key] = value
    out["metadata"]["resourceVersion"] = str(int(out["metadata"]["resourceVersion"]) + 1)
    return out


def plan_of(cm: dict, patch: dict) -> dict:
    return json.loads(patch["data"][PKEY])


def test_report_becomes_plan_with_policy_and_headroom():
    r = report()
    cm = configmap({RKEY: r})
    fit = r["suggestions"]["fit_requested_bytes"]
    full = r["suggestions"]["full_bytes"]

    result = reconcile(cm, Settings(), NOW)
    plan = plan_of(cm, result.patch)
    assert plan["kv_cache_memory_bytes"] == fit
    assert plan["fingerprint"] == r["fingerprint"]
    assert plan["free_at_start_bytes"] == r["free_at_start_bytes"]
    assert (plan["policy"], plan["source"]) == ("fit-requested", "report")
    assert "metadata" not in result.patch  # a plan write needs no precondition: a newer copy's reconcile fixes it
    assert [e.reason for e in result.events] == ["PlanWritten"]

    full_plan = plan_of(cm, reconcile(cm, Settings(policy="full", headroom_percent=10), NOW).patch)
    assert full_plan["kv_cache_memory_bytes"] == full * 90 // 100
    assert full_plan["policy"] == "full"


def test_idempotent_no_patch_when_plan_is_current():
    cm = configmap({RKEY: report()})
    first = reconcile(cm, Settings(), NOW)
    after = applied(cm, first.patch)
    later = reconcile(after, Settings(), NOW + timedelta(minutes=3))
    assert later.patch is None and later.events == []
    assert later.plans == first.plans


def test_changed_report_rewrites_plan():
    cm = applied(configmap({RKEY: report()}), reconcile(configmap({RKEY: report()}), Settings(), NOW).patch)
    cm["metadata"]["annotations"][RKEY] = json.dumps(report(weights=20 * GiB))
    result = reconcile(cm, Settings(), NOW)
    assert plan_of(cm, result.patch)["kv_cache_memory_bytes"] == report(weights=20 * GiB)["suggestions"][
        "fit_requested_bytes"]


@pytest.mark.parametrize("mutate,reason", [
    (lambda r: "{not json", "bad_json"),
    (lambda r: "[1, 2]", "schema"),
    (lambda r: {**r, "schema": 99}, "schema"),
    (lambda r: {**r, "fingerprint": "0123456789ab" + "0" * 52}, "fingerprint"),
    (lambda r: {**r, "suggestions": {**r["suggestions"], "full_bytes": -5}}, "not_positive"),
    (lambda r: {**r, "suggestions": {**r["suggestions"], "fit_requested_bytes": 0}}, "not_positive"),
    (lambda r: {**r, "components": {**r["components"], "weights": -1}}, "not_positive"),
    (lambda r: {**r, "suggestions": {**r["suggestions"], "full_bytes": 81 * GiB}}, "above_total"),
    (lambda r: {**r, "free_at_start_bytes": 81 * GiB}, "above_total"),
    (lambda r: {**r, "suggestions": {**r["suggestions"], "full_bytes": 70 * GiB}}, "components"),
    (lambda r: {**r, "total_bytes": 10 ** 30}, "too_large"),
    (lambda r: {**r, "total_bytes": 8e10}, "schema"),
    (lambda r: {**r, "total_bytes": True}, "schema"),
    (lambda r: {**r, "pods": ["p"] * 1000}, "too_large"),
    (lambda r: {**r, "device": "x" * 100_000}, "too_large"),
    (lambda r: {**r, "updated_at": "yesterday"}, "schema"),
    (lambda r: {**r, "updated_at": now_rfc3339(NOW + timedelta(days=365))}, "clock"),
    (lambda r: {k: v for k, v in r.items() if k != "components"}, "schema"),
])
def test_invalid_report_is_rejected_and_nothing_written(mutate, reason):
    bad = mutate(report())
    cm = configmap({RKEY: bad if isinstance(bad, str) else json.dumps(bad)})
    result = reconcile(cm, Settings(), NOW)
    assert result.patch is None
    assert [(r.fp12, r.reason) for r in result.rejections] == [(FP, reason)]
    assert FP in result.rejections[0].message


def test_rejected_report_keeps_existing_plan():
    good = applied(configmap({RKEY: report()}), reconcile(configmap({RKEY: report()}), Settings(), NOW).patch)
    good["metadata"]["annotations"][RKEY] = "{broken"
    result = reconcile(good, Settings(), NOW)
    assert result.patch is None and PKEY in good["data"]
    assert result.plans[FP] == report()["suggestions"]["fit_requested_bytes"]


def test_bad_annotation_suffix_is_rejected():
    result = reconcile(configmap({"kvmemo.io/report.NOT-HEX": report()}), Settings(), NOW)
    assert result.patch is None and result.rejections[0].reason == "fingerprint"


def test_rejection_message_names_value_and_limit():
    with pytest.raises(Rejected, match=str(81 * GiB)) as info:
        parse_report(FP, json.dumps({**report(), "free_at_start_bytes": 81 * GiB}))
    assert str(80 * GiB) in str(info.value)


def test_oom_lowers_plan_by_step_and_is_stable():
    r = report()
    fit = r["suggestions"]["fit_requested_bytes"]
    oom = {"count": 1, "kv_cache_memory_bytes": fit, "last_at": now_rfc3339(NOW)}
    cm = configmap({RKEY: r, OKEY: oom})
    result = reconcile(cm, Settings(oom_step_percent=10), NOW)
    plan = plan_of(cm, result.patch)
    assert plan["kv_cache_memory_bytes"] == fit * 90 // 100 and plan["source"] == "oom"
    assert [e.reason for e in result.events] == ["PlanLowered"]
    assert reconcile(applied(cm, result.patch), Settings(oom_step_percent=10), NOW).patch is None

    # A second OOM at the lowered size steps down again.
    cm2 = applied(cm, result.patch)
    cm2["metadata"]["annotations"][OKEY] = json.dumps(
        {"count": 2, "kv_cache_memory_bytes": plan["kv_cache_memory_bytes"], "last_at": now_rfc3339(NOW)})
    again = plan_of(cm2, reconcile(cm2, Settings(oom_step_percent=10), NOW).patch)
    assert again["kv_cache_memory_bytes"] == plan["kv_cache_memory_bytes"] * 90 // 100


def test_oom_above_plan_does_not_raise_it():
    r = report()
    oom = {"count": 1, "kv_cache_memory_bytes": 79 * GiB, "last_at": now_rfc3339(NOW)}
    plan = plan_of(None, reconcile(configmap({RKEY: r, OKEY: oom}), Settings(), NOW).patch)
    assert plan["kv_cache_memory_bytes"] == r["suggestions"]["fit_requested_bytes"]


def test_invalid_oom_record_is_rejected_and_report_still_planned():
    cm = configmap({RKEY: report(), OKEY: {"count": -1, "kv_cache_memory_bytes": 5, "last_at": "x"}})
    result = reconcile(cm, Settings(), NOW)
    assert [(r.key, r.reason) for r in result.rejections] == [(OKEY, "schema")]
    assert plan_of(cm, result.patch)["kv_cache_memory_bytes"] == report()["suggestions"]["fit_requested_bytes"]


def test_prune_stale_report_oom_and_plan():
    fresh = configmap({RKEY: report()})
    cm = applied(fresh, reconcile(fresh, Settings(), NOW).patch)
    cm["metadata"]["annotations"][OKEY] = json.dumps(
        {"count": 1, "kv_cache_memory_bytes": GiB, "last_at": now_rfc3339(NOW)})
    later = NOW + timedelta(hours=2)
    result = reconcile(cm, Settings(plan_ttl_seconds=3600), later)
    assert result.patch["data"] == {PKEY: None}
    assert result.patch["metadata"]["annotations"] == {RKEY: None, OKEY: None}
    assert result.patch["metadata"]["resourceVersion"] == cm["metadata"]["resourceVersion"]  # its pod may renew it
    assert result.plans == {}
    assert reconcile(applied(cm, result.patch), Settings(plan_ttl_seconds=3600), later).patch is None


def test_orphan_plan_pruned_on_its_own_timestamp():
    old_plan = {"fingerprint": FP, "kv_cache_memory_bytes": GiB, "updated_at": now_rfc3339(NOW - timedelta(days=9))}
    young_plan = dict(old_plan, updated_at=now_rfc3339(NOW))
    other = "0123456789ab"
    cm = configmap(data={PKEY: json.dumps(old_plan), f"kv-cache-plan.{other}": json.dumps(young_plan)})
    result = reconcile(cm, Settings(), NOW)
    assert result.patch["data"] == {PKEY: None}
    assert result.plans == {other: GiB}


def test_many_fingerprints_one_patch():
    fps = [f"{i:012x}" for i in range(100)]
    cm = configmap({f"kvmemo.io/report.{fp}": report(fp=fp) for fp in fps})
    result = reconcile(cm, Settings(), NOW)
    assert len(result.patch["data"]) == 100 and len(result.plans) == 100


def test_settings_are_checked():
    for bad in (dict(policy="max"), dict(headroom_percent=100), dict(oom_step_percent=0), dict(plan_ttl_seconds=0)):
        with pytest.raises(ValueError):
            Settings(**bad)


def test_record_helper_adds_up():
    r = record()
    parse_report(FP, json.dumps({**report(), **r}))
