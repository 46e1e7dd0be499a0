"""One typed parser per record of the ConfigMap: a pod's report, an OOM event, the controller's plan.
The controller reads pods' records and the pods read the controller's plans with the same parsers; the
writer is never trusted, so every number is bounded and anything off raises Rejected."""

import json
from dataclasses import asdict, dataclass

from service.contract.keys import (COMPONENTS, MAX_BYTES, MAX_PODS_PER_REPORT, MAX_REPORT_CHARS, REPORT_SCHEMA,
                                   parse_rfc3339)


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
class OomEvent:
    count: int
    kv_cache_memory_bytes: int  # the smallest size that ran out of memory
    last_at: str


@dataclass(frozen=True)
class Plan:
    """The controller's decision for one fingerprint, as `kv-cache-plan.<fp12>` holds it."""
    fingerprint: str
    kv_cache_memory_bytes: int
    free_at_start_bytes: int | None = None
    policy: str | None = None
    source: str | None = None  # "report" or "oom"
    updated_at: str | None = None

    def to_dict(self) -> dict:
        """The JSON object, without the fields an older writer left out."""
        return {key: value for key, value in asdict(self).items() if value is not None}

    def encode(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)


class Rejected(ValueError):
    """`reason` is a short fixed word for the metric label; the message names the value and the limit."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def load_object(raw: str | None) -> dict | None:
    """A JSON object, or None for anything else: for records that are replaced, not rejected, when unreadable."""
    try:
        value = json.loads(raw) if raw else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


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


def _fingerprint(obj: dict, fp12: str, what: str) -> str:
    fingerprint = obj.get("fingerprint")
    if not isinstance(fingerprint, str) or not fingerprint.startswith(fp12) or len(fingerprint) > 128:
        raise Rejected("fingerprint", f"{what}.fingerprint {fingerprint!r} does not start with its key's {fp12}")
    return fingerprint


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
    fingerprint = _fingerprint(obj, fp12, what)
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


def parse_oom(fp12: str, raw: str) -> OomEvent:
    what = f"oom record {fp12}"
    obj = _load(raw, what)
    count = obj.get("count")
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 1_000_000:
        raise Rejected("schema", f"{what}.count is {count!r}; it must be an integer from 1 to 1000000")
    kv = _int(obj, "kv_cache_memory_bytes", what, 1)
    return OomEvent(count, kv, _timestamp(obj, "last_at", what))


def parse_plan(fp12: str, raw: str) -> Plan:
    """What a pod boots on: a positive size for its own fingerprint. The other fields are checked when present."""
    what = f"plan {fp12}"
    obj = _load(raw, what)
    fingerprint = _fingerprint(obj, fp12, what)
    kv = _int(obj, "kv_cache_memory_bytes", what, 1)
    free = _int(obj, "free_at_start_bytes", what, 1) if obj.get("free_at_start_bytes") is not None else None
    for key in ("policy", "source"):
        if not isinstance(obj.get(key), str | None):
            raise Rejected("schema", f"{what}.{key} must be a string, got {obj.get(key)!r}")
    updated_at = _timestamp(obj, "updated_at", what) if obj.get("updated_at") is not None else None
    return Plan(fingerprint, kv, free, obj.get("policy"), obj.get("source"), updated_at)
