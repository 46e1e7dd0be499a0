"""Parse and check what pods wrote into the ConfigMap. Pods are not trusted: every number is bounded."""

import json
from dataclasses import dataclass

from service.publish.contract import MAX_BYTES, MAX_PODS_PER_REPORT, MAX_REPORT_CHARS, REPORT_SCHEMA, parse_rfc3339

COMPONENTS = ("weights", "activation_peak", "non_torch", "cudagraph")


@dataclass(frozen=True)
class Report:
    fingerprint: str
    total_bytes: int
    free_at_start_bytes: int
    non_kv_bytes: int
    fit_requested_bytes: int
    full_bytes: int
    updated_at: str


@dataclass(frozen=True)
class OomRecord:
    count: int
    kv_cache_memory_bytes: int
    last_at: str


class Rejected(ValueError):
    """`reason` is a short fixed word for the metric label; the message names the value and the limit."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _load(raw: str, what: str) -> dict:
    if len(raw) > MAX_REPORT_CHARS:
        raise Rejected("too_large", f"{what} is {len(raw)} characters; the limit is {MAX_REPORT_CHARS}")
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise Rejected("bad_json", f"{what} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise Rejected("schema", f"{what} must be a JSON object, not {type(value).__name__}")
    return value


def _int(obj: dict, key: str, what: str, minimum: int) -> int:
    value = obj.get(key)
    # bool is an int in Python, and 1e9 parses as a float: both are schema errors, not numbers.
    if not isinstance(value, int) or isinstance(value, bool):
        raise Rejected("schema", f"{what}.{key} must be an integer number of bytes, got {value!r}")
    if value < minimum:
        raise Rejected("not_positive", f"{what}.{key} is {value}; it must be at least {minimum}")
    if value > MAX_BYTES:
        raise Rejected("too_large", f"{what}.{key} is {value}; the limit is {MAX_BYTES}")
    return value


def _timestamp(obj: dict, key: str, what: str) -> str:
    value = obj.get(key)
    try:
        parse_rfc3339(value)
    except (TypeError, ValueError):
        raise Rejected("schema", f"{what}.{key} must be an RFC 3339 timestamp, got {value!r}") from None
    return value


def parse_report(fp12: str, raw: str) -> Report:
    what = f"report {fp12}"
    obj = _load(raw, what)
    if obj.get("schema") != REPORT_SCHEMA:
        raise Rejected("schema", f"{what}.schema is {obj.get('schema')!r}; this controller reads {REPORT_SCHEMA}")
    fingerprint = obj.get("fingerprint")
    if not isinstance(fingerprint, str) or not fingerprint.startswith(fp12) or len(fingerprint) > 128:
        raise Rejected("fingerprint", f"{what}.fingerprint {fingerprint!r} does not start with its key's {fp12}")
    pods = obj.get("pods")
    if not isinstance(pods, list) or not all(isinstance(p, str) and len(p) <= 253 for p in pods):
        raise Rejected("schema", f"{what}.pods must be a list of pod names")
    if len(pods) > MAX_PODS_PER_REPORT:
        raise Rejected("too_large", f"{what}.pods has {len(pods)} names; the limit is {MAX_PODS_PER_REPORT}")
    components = obj.get("components")
    suggestions = obj.get("suggestions")
    if not isinstance(components, dict) or not isinstance(suggestions, dict):
        raise Rejected("schema", f"{what} needs objects `components` and `suggestions`")

    total = _int(obj, "total_bytes", what, 1)
    free = _int(obj, "free_at_start_bytes", what, 1)
    non_kv = sum(_int(components, name, f"{what}.components", 0) for name in COMPONENTS)
    fit = _int(suggestions, "fit_requested_bytes", f"{what}.suggestions", 1)
    full = _int(suggestions, "full_bytes", f"{what}.suggestions", 1)
    safety = _int(obj, "safety_bytes", what, 0) if "safety_bytes" in obj else 0
    if free > total:
        raise Rejected("above_total", f"{what}: free_at_start_bytes {free} exceeds total_bytes {total}")
    for name, suggestion in (("fit_requested_bytes", fit), ("full_bytes", full)):
        if suggestion > total:
            raise Rejected("above_total", f"{what}: {name} {suggestion} exceeds total_bytes {total}")
    # full = free_at_start - non_kv - safety and fit_requested = requested - non_kv - safety, where
    # requested <= total; merged reports keep minimum suggestions, so these hold as upper bounds.
    if non_kv + safety + full > free:
        raise Rejected("components", f"{what}: components {non_kv} + safety {safety} + full_bytes {full} "
                                     f"= {non_kv + safety + full} exceed free_at_start_bytes {free}")
    if non_kv + safety + fit > total:
        raise Rejected("components", f"{what}: components {non_kv} + safety {safety} + fit_requested_bytes "
                                     f"{fit} = {non_kv + safety + fit} exceed total_bytes {total}")
    return Report(fingerprint, total, free, non_kv, fit, full, _timestamp(obj, "updated_at", what))


def parse_oom(fp12: str, raw: str) -> OomRecord:
    what = f"oom record {fp12}"
    obj = _load(raw, what)
    count = obj.get("count")
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 1_000_000:
        raise Rejected("schema", f"{what}.count is {count!r}; it must be an integer from 1 to 1000000")
    kv = _int(obj, "kv_cache_memory_bytes", what, 1)
    return OomRecord(count, kv, _timestamp(obj, "last_at", what))


def parse_plan(raw: str) -> dict | None:
    """The controller's own earlier plan; anything unreadable counts as no plan (it gets rewritten)."""
    try:
        plan = json.loads(raw)
    except ValueError:
        return None
    return plan if isinstance(plan, dict) else None
