"""Merging one pod's report into the report already in the ConfigMap: minimum suggestions, pods union.
An old record the controller would reject is replaced, not merged, so one bad write cannot stick."""

from service.contract.keys import MAX_PODS_PER_REPORT, REPORT_SCHEMA, SUGGESTIONS, now_rfc3339
from service.contract.records import Rejected, load_object, parse_oom, parse_report

REPORT_FIELDS = ("fingerprint", "device", "total_bytes", "free_at_start_bytes", "requested_bytes",
                 "safety_bytes", "components", "suggestions", "engine_version")


def new_report(record: dict, pod: str) -> dict:
    """The contract's report from a profiler record; fields outside the contract stay out of the annotation."""
    report = {key: record[key] for key in REPORT_FIELDS if key in record}
    missing = {"fingerprint", "total_bytes", "free_at_start_bytes", "components", "suggestions"} - set(report)
    if missing:
        raise ValueError(f"report for {record.get('fingerprint')!r} lacks {', '.join(sorted(missing))}")
    report["schema"] = REPORT_SCHEMA
    report["pods"] = [pod]
    report["updated_at"] = now_rfc3339()
    return report


def merge_reports(existing_raw: str | None, new: dict) -> dict:
    """The pod with the smallest `full` suggestion keeps its measurements; each suggestion is the minimum,
    so no pod of the deployment is planned above what it measured. Unreadable old reports are replaced."""
    existing = load_object(existing_raw)
    try:
        if existing is None or existing.get("fingerprint") != new["fingerprint"]:
            return dict(new)
        parse_report(new["fingerprint"][:12], existing_raw)
    except Rejected:
        return dict(new)
    old_s, new_s = existing["suggestions"], new["suggestions"]
    base = existing if old_s["full_bytes"] <= new_s["full_bytes"] else new
    merged = dict(base)
    merged["suggestions"] = {k: min(old_s[k], new_s[k]) for k in SUGGESTIONS}
    merged["pods"] = list(dict.fromkeys(existing["pods"] + list(new["pods"])))[-MAX_PODS_PER_REPORT:]
    merged["updated_at"] = new["updated_at"]
    return merged


def merge_oom(existing_raw: str | None, kv_cache_memory_bytes: int) -> dict:
    """Counts add up; the size is the smallest that ran out of memory, which the controller steps below."""
    count, size = 0, kv_cache_memory_bytes
    if existing_raw:
        try:
            existing = parse_oom("", existing_raw)
            count, size = existing.count, min(size, existing.kv_cache_memory_bytes)
        except Rejected:
            pass
    return {"count": count + 1, "kv_cache_memory_bytes": size, "last_at": now_rfc3339()}
