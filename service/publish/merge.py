"""Merging one pod's report into the report already in the ConfigMap: minimum suggestions, pods union."""

import json

from service.publish.contract import MAX_PODS_PER_REPORT, REPORT_SCHEMA, now_rfc3339

REPORT_FIELDS = ("fingerprint", "device", "total_bytes", "free_at_start_bytes", "requested_bytes",
                 "safety_bytes", "components", "suggestions", "engine_version")
SUGGESTIONS = ("fit_requested_bytes", "full_bytes")


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


def _suggestions(report: dict) -> dict | None:
    suggestions = report.get("suggestions")
    if not isinstance(suggestions, dict):
        return None
    if not all(isinstance(suggestions.get(k), int) and not isinstance(suggestions.get(k), bool) for k in SUGGESTIONS):
        return None
    return suggestions


def merge_reports(existing_raw: str | None, new: dict) -> dict:
    """The pod with the smallest `full` suggestion keeps its measurements; each suggestion is the minimum,
    so no pod of the deployment is planned above what it measured. Unreadable old reports are replaced."""
    try:
        existing = json.loads(existing_raw) if existing_raw else None
    except ValueError:
        existing = None
    if (not isinstance(existing, dict) or existing.get("schema") != REPORT_SCHEMA
            or existing.get("fingerprint") != new["fingerprint"] or _suggestions(existing) is None):
        return dict(new)
    old_s, new_s = _suggestions(existing), new["suggestions"]
    base = existing if old_s["full_bytes"] <= new_s["full_bytes"] else new
    merged = {key: value for key, value in base.items()}
    merged["suggestions"] = {k: min(old_s[k], new_s[k]) for k in SUGGESTIONS}
    old_pods = [p for p in existing.get("pods") or [] if isinstance(p, str)]
    merged["pods"] = list(dict.fromkeys(old_pods + list(new["pods"])))[-MAX_PODS_PER_REPORT:]
    merged["updated_at"] = new["updated_at"]
    return merged


def merge_oom(existing_raw: str | None, kv_cache_memory_bytes: int) -> dict:
    """Counts add up; the size is the smallest that ran out of memory, which the controller steps below."""
    try:
        existing = json.loads(existing_raw) if existing_raw else None
    except ValueError:
        existing = None
    count, size = 0, kv_cache_memory_bytes
    if isinstance(existing, dict) and isinstance(existing.get("count"), int) and existing["count"] > 0:
        count = existing["count"]
        if isinstance(existing.get("kv_cache_memory_bytes"), int) and existing["kv_cache_memory_bytes"] > 0:
            size = min(size, existing["kv_cache_memory_bytes"])
    return {"count": count + 1, "kv_cache_memory_bytes": size, "last_at": now_rfc3339()}
