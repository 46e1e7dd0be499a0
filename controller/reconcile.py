"""ConfigMap in, merge patch out, in three pure steps as controller-runtime shapes a reconcile:
observe (parse what the pods wrote), desire (reports, OOM events, now -> plans) and diff (observed,
desired -> patch). Idempotent: the same object always gives the same patch, and an object whose plans
are already right gives no patch at all."""

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from controller.memo import KNOWN, RejectionMemo
from service.contract.keys import (FP12, POLICIES, OOM_PREFIX, PLAN_PREFIX, REPORT_PREFIX, now_rfc3339, oom_key,
                                   parse_rfc3339, plan_key, report_key)
from service.contract.ownership import CONTROLLER_MANAGER, owned_by
from service.contract.records import OomEvent, Plan, Rejected, Report, load_object, parse_oom, parse_report

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
    first_seen: bool = True  # False when the memo had already rejected this exact value


@dataclass(frozen=True)
class Observed:
    """What the ConfigMap holds, parsed. Plans are the controller's own JSON, compared rather than trusted."""
    annotations: dict
    data: dict
    reported: frozenset[str]  # fingerprints with a report annotation, valid or not
    reports: dict[str, Report]
    ooms: dict[str, OomEvent]
    plans: dict[str, dict]  # fp12 -> the plan object in data ({} when unreadable)
    rejections: tuple[Rejection, ...]
    foreign: frozenset[str] = frozenset()  # plans whose key another field manager owns: pods refuse them


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


def _report(fp12: str, raw: str, now: datetime) -> Report:
    if not FP12.match(fp12):
        raise Rejected("fingerprint", f"annotation {report_key(fp12)!r}: the suffix must be 12 lowercase hex digits")
    report = parse_report(fp12, raw)
    if parse_rfc3339(report.updated_at) > now + MAX_CLOCK_AHEAD:
        raise Rejected("clock", f"report {fp12}.updated_at {report.updated_at} is more than "
                                f"{MAX_CLOCK_AHEAD} ahead of the controller's clock {now_rfc3339(now)}")
    return report


def _rejection(fp12: str, key: str, rejected: Rejected, raw: str) -> Rejection:
    return Rejection(fp12, key, rejected.reason, str(rejected), raw, getattr(rejected, "first_seen", True))


def _parse(memo: RejectionMemo | None, scope: tuple, key: str, raw: str, parse):
    return parse() if memo is None else memo.check(scope, key, raw, parse)


def observe(configmap: dict, now: datetime, memo: RejectionMemo | None = None) -> Observed:
    """With a `memo`, a value it rejected before is neither parsed nor listed again (it stays unused, as
    every rejected value does); without one, every rejection is listed."""
    meta = configmap.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    data = configmap.get("data") or {}
    scope = (meta.get("namespace"), meta.get("name"))
    reported = _suffixes(annotations, REPORT_PREFIX)
    reports, rejections, ooms = {}, [], {}
    for fp12 in sorted(reported):
        key, raw = report_key(fp12), annotations[report_key(fp12)]
        try:
            if (parsed := _parse(memo, scope, key, raw, lambda: _report(fp12, raw, now))) is not KNOWN:
                reports[fp12] = parsed
        except Rejected as rejected:
            rejections.append(_rejection(fp12, key, rejected, raw))
    # An OOM record is only reported beside a valid report; alone it merely ages out.
    for fp12 in sorted(_suffixes(annotations, OOM_PREFIX)):
        key, raw = oom_key(fp12), annotations[oom_key(fp12)]
        try:
            if (parsed := _parse(memo, scope, key, raw, lambda: parse_oom(fp12, raw))) is not KNOWN:
                ooms[fp12] = parsed
        except Rejected as rejected:
            if fp12 in reports:  # planned from the report alone; the bad record is reported
                rejections.append(_rejection(fp12, key, rejected, raw))
    plans = {fp12: load_object(data[plan_key(fp12)]) or {} for fp12 in _suffixes(data, PLAN_PREFIX)}
    # A copy without managedFields (a test's, an old apiserver's) says nothing about owners.
    foreign = frozenset(fp12 for fp12 in plans if "managedFields" in meta
                        and not owned_by(configmap, CONTROLLER_MANAGER, "data", plan_key(fp12)))
    return Observed(annotations, data, frozenset(reported), reports, ooms, plans, tuple(rejections), foreign)


def expired(observed: Observed, now: datetime, ttl: float) -> dict[str, str]:
    """fp12 -> why its report, OOM record and plan go: reports not renewed within the TTL; plans and OOM
    records without a report on their own timestamps."""
    why = {fp12: f"last reported {r.updated_at}, longer ago than the plan TTL {ttl:.0f} s"
           for fp12, r in observed.reports.items() if _stale(r.updated_at, now, ttl)}
    for fp12, plan in observed.plans.items():
        if fp12 not in observed.reported and _stale(plan.get("updated_at"), now, ttl):
            why[fp12] = f"no report, plan updated {plan.get('updated_at')}, older than the plan TTL"
    orphans = _suffixes(observed.annotations, OOM_PREFIX) - observed.reported - set(observed.plans)
    for fp12 in orphans:
        last_at = observed.ooms[fp12].last_at if fp12 in observed.ooms else None
        if _stale(last_at, now, ttl):
            why[fp12] = f"OOM record without report or plan, last at {last_at}"
    return why


def desired_plan(report: Report, oom: OomEvent | None, settings: Settings, now: datetime) -> Plan:
    base = report.fit_requested_bytes if settings.policy == "fit-requested" else report.full_bytes
    planned, source = _scale(base, settings.headroom_percent), "report"
    # The OOM record names the size that ran out of memory; each new OOM names the lowered size, so
    # repeated OOMs keep stepping down while the same record always gives the same plan.
    if oom is not None:
        lowered = _scale(oom.kv_cache_memory_bytes, settings.oom_step_percent)
        if lowered < planned:
            planned, source = lowered, "oom"
    return Plan(report.fingerprint, planned, report.free_at_start_bytes, settings.policy, source, now_rfc3339(now))


def desired(reports: dict[str, Report], ooms: dict[str, OomEvent], settings: Settings,
            now: datetime) -> dict[str, Plan]:
    return {fp12: desired_plan(r, ooms.get(fp12), settings, now) for fp12, r in reports.items()}


def _plan_event(fp12: str, before, plan: Plan, oom: OomEvent | None, settings: Settings) -> Event:
    if plan.source == "oom":
        return Event("Normal", "PlanLowered", (
            f"{fp12}: kv_cache_memory_bytes {before} -> {plan.kv_cache_memory_bytes} after {oom.count} OOM(s) at "
            f"{oom.kv_cache_memory_bytes} bytes (step {settings.oom_step_percent}%)"))
    return Event("Normal", "PlanWritten", (
        f"{fp12}: kv_cache_memory_bytes {before} -> {plan.kv_cache_memory_bytes} ({settings.policy}, "
        f"headroom {settings.headroom_percent}%)"))


def _current(observed: dict | None, plan: Plan) -> bool:
    return observed is not None and all(observed.get(k) == v for k, v in plan.to_dict().items() if k != "updated_at")


def diff(observed: Observed, plans: dict[str, Plan], prune: dict[str, str], settings: Settings,
         resource_version: str | None) -> tuple[dict | None, list[Event]]:
    """The merge patch (None when nothing changes) and the Events to post once it is applied."""
    set_annotations = {key: None for fp12 in prune for key in (report_key(fp12), oom_key(fp12))
                       if key in observed.annotations}
    set_data = {plan_key(fp12): None for fp12 in prune if fp12 in observed.plans}
    events = []
    for fp12 in sorted(set(plans) | set(prune)):
        if fp12 in prune:
            events.append(Event("Normal", "PlanPruned", f"{fp12}: {prune[fp12]}"))
        elif fp12 in observed.foreign or not _current(observed.plans.get(fp12), plans[fp12]):
            set_data[plan_key(fp12)] = plans[fp12].encode()
            before = observed.plans[fp12].get("kv_cache_memory_bytes") if fp12 in observed.plans else None
            events.append(_plan_event(fp12, before, plans[fp12], observed.ooms.get(fp12), settings))
    if not set_data and not set_annotations:
        return None, events
    # Only pruning a report needs the read's resourceVersion: its pod may have renewed it since. A plan
    # written from an older copy is put right by the reconcile of the newer one, so plan writes carry no
    # precondition and a ConfigMap rewritten many times a second (a flood of junk) cannot starve them.
    patch: dict = {}
    if set_annotations:
        patch["metadata"] = {"resourceVersion": resource_version, "annotations": set_annotations}
    if set_data:
        patch["data"] = set_data
    return patch, events


def kept_plans(observed: Observed, plans: dict[str, Plan], prune: dict[str, str]) -> dict[str, int]:
    """fp12 -> kv_cache_memory_bytes once the patch is applied: the desired plans, and the plans of rejected
    or missing reports, which stay as they are."""
    kept = {fp12: plan["kv_cache_memory_bytes"] for fp12, plan in observed.plans.items()
            if isinstance(plan.get("kv_cache_memory_bytes"), int)}
    kept.update({fp12: plan.kv_cache_memory_bytes for fp12, plan in plans.items()})
    return {fp12: kv for fp12, kv in kept.items() if fp12 not in prune}


def reconcile(configmap: dict, settings: Settings, now: datetime, memo: RejectionMemo | None = None) -> Result:
    observed = observe(configmap, now, memo)
    prune = expired(observed, now, settings.plan_ttl_seconds)
    live = {fp12: report for fp12, report in observed.reports.items() if fp12 not in prune}
    plans = desired(live, observed.ooms, settings, now)
    patch, events = diff(observed, plans, prune, settings, (configmap.get("metadata") or {}).get("resourceVersion"))
    return Result(patch, kept_plans(observed, plans, prune), list(observed.rejections), events)
