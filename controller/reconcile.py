"""ConfigMap in, merge patch out. Pure and idempotent: the same object always gives the same patch, and
an object whose plans are already right gives no patch at all."""

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from controller.validate import OomRecord, Rejected, Report, parse_oom, parse_plan, parse_report
from service.publish.contract import (FP12, OOM_PREFIX, PLAN_PREFIX, REPORT_PREFIX, now_rfc3339, oom_key,
                                      parse_rfc3339, plan_key, report_key)

POLICIES = ("fit-requested", "full")
# A pod clock a little ahead is normal; far ahead would keep a report from ever being pruned.
MAX_CLOCK_AHEAD = timedelta(minutes=10)


@dataclass(frozen=True)
class Settings:
    policy: str = "fit-requested"
    headroom_percent: float = 0.0
    oom_step_percent: float = 10.0
    plan_ttl_seconds: float = 7 * 24 * 3600.0

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise ValueError(f"policy {self.policy!r} is not one of {', '.join(POLICIES)}")
        if not 0 <= self.headroom_percent < 100:
            raise ValueError(f"headroom percent {self.headroom_percent} must be in [0, 100)")
        if not 0 < self.oom_step_percent < 100:
            raise ValueError(f"OOM step percent {self.oom_step_percent} must be in (0, 100)")
        if self.plan_ttl_seconds <= 0:
            raise ValueError(f"plan TTL {self.plan_ttl_seconds} s must be positive")


@dataclass(frozen=True)
class Event:
    type: str  # "Normal" or "Warning", as Kubernetes Events have it
    reason: str
    message: str


@dataclass(frozen=True)
class Rejection:
    fp12: str
    key: str
    reason: str
    message: str
    raw: str


@dataclass
class Result:
    patch: dict | None = None
    plans: dict[str, int] = field(default_factory=dict)  # fp12 -> kv_cache_memory_bytes after the patch
    rejections: list[Rejection] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)  # to post once the patch is applied


def _scale(value: int, percent_off: float) -> int:
    return int(value * (100 - percent_off) // 100)


def _suffixes(mapping: dict, prefix: str) -> set[str]:
    return {key[len(prefix):] for key in mapping if key.startswith(prefix)}


def _stale(timestamp: str | None, now: datetime, ttl: float) -> bool:
    try:
        return (now - parse_rfc3339(timestamp)).total_seconds() > ttl
    except (TypeError, ValueError):
        return True


def desired_plan(report: Report, oom: OomRecord | None, settings: Settings) -> tuple[int, str]:
    base = report.fit_requested_bytes if settings.policy == "fit-requested" else report.full_bytes
    planned, source = _scale(base, settings.headroom_percent), "report"
    # The OOM record names the size that ran out of memory; each new OOM names the lowered size, so
    # repeated OOMs keep stepping down while the same record always gives the same plan.
    if oom is not None:
        lowered = _scale(oom.kv_cache_memory_bytes, settings.oom_step_percent)
        if lowered < planned:
            planned, source = lowered, "oom"
    return planned, source


def reconcile(configmap: dict, settings: Settings, now: datetime) -> Result:
    meta = configmap.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    data = configmap.get("data") or {}
    result = Result()
    set_data: dict = {}
    set_annotations: dict = {}

    def prune(fp12: str, why: str) -> None:
        for key in (report_key(fp12), oom_key(fp12)):
            if key in annotations:
                set_annotations[key] = None
        if plan_key(fp12) in data:
            set_data[plan_key(fp12)] = None
        result.events.append(Event("Normal", "PlanPruned", f"{fp12}: {why}"))

    reported = _suffixes(annotations, REPORT_PREFIX)
    for fp12 in sorted(reported):
        key = report_key(fp12)
        raw = annotations[key]
        existing = parse_plan(data[plan_key(fp12)]) if plan_key(fp12) in data else None
        try:
            if not FP12.match(fp12):
                raise Rejected("fingerprint", f"annotation {key!r}: the suffix must be 12 lowercase hex digits")
            report = parse_report(fp12, raw)
            if parse_rfc3339(report.updated_at) > now + MAX_CLOCK_AHEAD:
                raise Rejected("clock", f"report {fp12}.updated_at {report.updated_at} is more than "
                                        f"{MAX_CLOCK_AHEAD} ahead of the controller's clock {now_rfc3339(now)}")
        except Rejected as rejected:
            result.rejections.append(Rejection(fp12, key, rejected.reason, str(rejected), raw))
            if existing and isinstance(existing.get("kv_cache_memory_bytes"), int):
                result.plans[fp12] = existing["kv_cache_memory_bytes"]
            continue
        oom = None
        if oom_key(fp12) in annotations:
            try:
                oom = parse_oom(fp12, annotations[oom_key(fp12)])
            except Rejected as rejected:  # planned from the report alone; the bad record is reported
                result.rejections.append(Rejection(fp12, oom_key(fp12), rejected.reason, str(rejected),
                                                   annotations[oom_key(fp12)]))
        if _stale(report.updated_at, now, settings.plan_ttl_seconds):
            prune(fp12, f"last reported {report.updated_at}, longer ago than the plan TTL "
                        f"{settings.plan_ttl_seconds:.0f} s")
            continue

        kv_bytes, source = desired_plan(report, oom, settings)
        plan = {"fingerprint": report.fingerprint, "kv_cache_memory_bytes": kv_bytes,
                "free_at_start_bytes": report.free_at_start_bytes, "policy": settings.policy,
                "source": source, "updated_at": now_rfc3339(now)}
        result.plans[fp12] = kv_bytes
        unchanged = existing is not None and all(existing.get(k) == v for k, v in plan.items() if k != "updated_at")
        if unchanged:
            continue
        set_data[plan_key(fp12)] = json.dumps(plan, separators=(",", ":"), sort_keys=True)
        before = existing.get("kv_cache_memory_bytes") if existing else None
        if source == "oom":
            result.events.append(Event("Normal", "PlanLowered", (
                f"{fp12}: kv_cache_memory_bytes {before} -> {kv_bytes} after {oom.count} OOM(s) at "
                f"{oom.kv_cache_memory_bytes} bytes (step {settings.oom_step_percent}%)")))
        else:
            result.events.append(Event("Normal", "PlanWritten", (
                f"{fp12}: kv_cache_memory_bytes {before} -> {kv_bytes} ({settings.policy}, "
                f"headroom {settings.headroom_percent}%)")))

    # Plans and OOM records whose report is gone age out on their own timestamps.
    for fp12 in sorted(_suffixes(data, PLAN_PREFIX) - reported):
        plan = parse_plan(data[plan_key(fp12)]) or {}
        if _stale(plan.get("updated_at"), now, settings.plan_ttl_seconds):
            prune(fp12, f"no report, plan updated {plan.get('updated_at')}, older than the plan TTL")
        elif isinstance(plan.get("kv_cache_memory_bytes"), int):
            result.plans[fp12] = plan["kv_cache_memory_bytes"]
    for fp12 in sorted(_suffixes(annotations, OOM_PREFIX) - reported - _suffixes(data, PLAN_PREFIX)):
        try:
            last_at = parse_oom(fp12, annotations[oom_key(fp12)]).last_at
        except Rejected:
            last_at = None
        if _stale(last_at, now, settings.plan_ttl_seconds):
            prune(fp12, f"OOM record without report or plan, last at {last_at}")

    if set_data or set_annotations:
        patch: dict = {"metadata": {"resourceVersion": meta.get("resourceVersion")}}
        if set_annotations:
            patch["metadata"]["annotations"] = set_annotations
        if set_data:
            patch["data"] = set_data
        result.patch = patch
    for fp12 in list(result.plans):
        if set_data.get(plan_key(fp12), "") is None:
            del result.plans[fp12]
    return result
