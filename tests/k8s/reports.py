"""Reports as the profiler would write them, for the tests."""

import json
from datetime import datetime, timedelta, timezone

from service.contract.keys import REPORT_SCHEMA, now_rfc3339

GiB = 1 << 30


def record(fp="abcdef012345", total=80 * GiB, free=79 * GiB, utilization=0.9, weights=16 * GiB,
           activation=4 * GiB, non_torch=GiB // 2, cudagraph=GiB // 4, safety=GiB // 4, suffix="f" * 52):
    """A profiler record whose numbers add up the way the profiler computes them."""
    non_kv = weights + activation + non_torch + cudagraph
    requested = int(utilization * total)
    return {
        "fingerprint": fp + suffix, "device": "NVIDIA H100 80GB HBM3", "total_bytes": total,
        "free_at_start_bytes": free, "requested_bytes": requested, "safety_bytes": safety,
        "components": {"weights": weights, "activation_peak": activation, "non_torch": non_torch,
                       "cudagraph": cudagraph},
        "suggestions": {"fit_requested_bytes": requested - non_kv - safety, "full_bytes": free - non_kv - safety},
        "engine_version": "0.1.0",
    }


def report(pods=("pod-a",), age: timedelta = timedelta(0), at: datetime | None = None, **kwargs) -> dict:
    """at: the clock the report was written by (default: now)."""
    r = record(**kwargs)
    r.update(schema=REPORT_SCHEMA, pods=list(pods),
             updated_at=now_rfc3339((at or datetime.now(timezone.utc)) - age))
    return r


def configmap(annotations=None, data=None, name="kvmemo", namespace="test", rv="1") -> dict:
    return {"metadata": {"name": name, "namespace": namespace, "resourceVersion": rv,
                         "annotations": {k: v if isinstance(v, str) else json.dumps(v)
                                         for k, v in (annotations or {}).items()}},
            "data": dict(data or {})}
