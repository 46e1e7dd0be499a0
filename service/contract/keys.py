"""Key names, the label, the schema version and the size limits of the ConfigMap contract; timestamps."""

import re
from datetime import datetime, timezone

REPORT_PREFIX = "kvmemo.io/report."
OOM_PREFIX = "kvmemo.io/oom."
PLAN_PREFIX = "kv-cache-plan."
PART_OF_LABEL = "app.kubernetes.io/part-of=kvmemo"
REPORT_SCHEMA = 1

FP12 = re.compile(r"^[0-9a-f]{12}$")
# Annotations share 256 KiB per object and a report is under 1 KiB plus its pod names, so the merged
# report names only the latest pods: 100 fingerprints then stay near 100 KiB even with long names.
MAX_PODS_PER_REPORT = 16
MAX_REPORT_CHARS = 8 * 1024
# 1 PiB: far above any device or host today, far below what breaks float or JSON arithmetic.
MAX_BYTES = 1 << 50

COMPONENTS = ("weights", "activation_peak", "non_torch", "cudagraph")
SUGGESTIONS = ("fit_requested_bytes", "full_bytes")


def report_key(fp12: str) -> str:
    return REPORT_PREFIX + fp12


def oom_key(fp12: str) -> str:
    return OOM_PREFIX + fp12


def plan_key(fp12: str) -> str:
    return PLAN_PREFIX + fp12


def check_fp12(fp12: str) -> str:
    if not FP12.match(fp12):
        raise ValueError(f"fingerprint short form {fp12!r} must be 12 lowercase hex digits")
    return fp12


def now_rfc3339(now: datetime | None = None) -> str:
    now = now or datetime.now(timezone.utc)
    return now.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_rfc3339(text: str) -> datetime:
    """Raises ValueError for anything but an RFC 3339 timestamp with a zone."""
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError(f"timestamp {text!r} has no time zone")
    return parsed


# The two KV-cache sizes a memory profile suggests; a pod boots with one, the controller plans with one.
POLICIES = ("fit-requested", "full")
