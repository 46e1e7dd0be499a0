"""The controller's metrics, on the default prometheus-client registry."""

from prometheus_client import Counter, Gauge, Histogram

RECONCILE = Counter("kvmemo_controller_reconcile_total",
                    "ConfigMap reconciles by outcome (written, unchanged, conflict, error)", ["result"])
PLAN_BYTES = Gauge("kvmemo_controller_plan_bytes", "kv_cache_memory_bytes of each current plan", ["fingerprint"])
REJECTED = Counter("kvmemo_controller_reports_rejected_total", "Reports and OOM records rejected, by reason",
                   ["reason"])
RECONCILE_SECONDS = Histogram("kvmemo_controller_reconcile_seconds",
                              "Time to compute one reconcile (parse, plan, diff), without its apiserver writes",
                              buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5))
IS_LEADER = Gauge("kvmemo_controller_is_leader", "1 while this controller holds the lease")

for result in ("written", "unchanged", "conflict", "error"):
    RECONCILE.labels(result)
