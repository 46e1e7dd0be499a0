"""Every Prometheus metric of kvmemo's service (shared/DESIGN.md): prefix `kvmemo_`, base units, label
`model_name`. The serving metrics are updated by the gRPC server; the memory metrics by the memory
profiler and boot. prometheus_client adds `_total` to counter names itself."""

import logging

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger("kvmemo.server")

M = "model_name"

# Latency buckets in seconds, as vLLM's (its dashboards' habits carry over).
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
               40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
               480.0, 960.0, 1920.0, 7680.0)

# --- serving ------------------------------------------------------------------------------------------
requests_running = Gauge("kvmemo_requests_running", "Requests in the engine's running batch", [M])
requests_waiting = Gauge("kvmemo_requests_waiting", "Requests waiting for the engine to schedule them", [M])
time_to_first_token_seconds = Histogram("kvmemo_time_to_first_token_seconds",
                                        "From a request's arrival at the server to its first token", [M],
                                        buckets=TTFT_BUCKETS)
inter_token_latency_seconds = Histogram("kvmemo_inter_token_latency_seconds",
                                        "Between consecutive tokens of one request", [M], buckets=ITL_BUCKETS)
e2e_request_latency_seconds = Histogram("kvmemo_e2e_request_latency_seconds",
                                        "From a request's arrival at the server to its last token", [M],
                                        buckets=E2E_BUCKETS)
prompt_tokens = Counter("kvmemo_prompt_tokens", "Prompt tokens of finished requests", [M])
generation_tokens = Counter("kvmemo_generation_tokens", "Generated tokens", [M])
request_success = Counter("kvmemo_request_success", "Finished requests by finish reason (stop, length, abort, error)",
                          [M, "finished_reason"])
preemptions = Counter("kvmemo_preemptions", "Requests preempted (recomputed later) for lack of KV blocks", [M])
kv_cache_usage_ratio = Gauge("kvmemo_kv_cache_usage_ratio", "Used KV blocks / usable KV blocks", [M])
kv_cache_blocks = Gauge("kvmemo_kv_cache_blocks", "KV-cache blocks by state (free, used, total)", [M, "state"])

# --- memory (set by boot and the memory profiler) -------------------------------------------------------
memory_profile_bytes = Gauge("kvmemo_memory_profile_bytes",
                             "Measured non-KV memory by component (weights, activation_peak, non_torch, cudagraph)",
                             [M, "component"])
kv_cache_suggested_bytes = Gauge("kvmemo_kv_cache_suggested_bytes", "Suggested KV-cache size by policy",
                                 [M, "policy"])
kv_cache_memory_bytes = Gauge("kvmemo_kv_cache_memory_bytes", "Bytes allocated to the KV cache", [M])
kv_cache_plan_info = Gauge("kvmemo_kv_cache_plan_info", "1 for the plan in use: where it came from, its fingerprint",
                           [M, "source", "fingerprint"])
memory_prediction_error_bytes = Gauge("kvmemo_memory_prediction_error_bytes",
                                      "Actual minus predicted non-KV memory after CUDA-graph capture", [M])
device_memory_bytes = Gauge("kvmemo_device_memory_bytes", "Device memory by state (total, free, used)",
                            [M, "state"])
startup_phase_seconds = Gauge("kvmemo_startup_phase_seconds",
                              "Duration of each startup phase (load_weights, profile, allocate_kv, capture_graphs, "
                              "total)", [M, "phase"])
startup_load_seconds = Gauge("kvmemo_startup_load_seconds",
                             "Duration of each part of the load_weights phase (cuda_init, build_model, read, copy, "
                             "generate)", [M, "part"])
startup_kernels_compiled = Gauge("kvmemo_startup_kernels_compiled",
                                 "Kernels compiled during the boot (0 when the kernel cache held them all)", [M])
oom = Counter("kvmemo_oom", "Device out-of-memory errors while serving", [M])


def serve(port: int, host: str = "") -> bool:
    """Serves /metrics on its own HTTP port from a daemon thread; False when it cannot listen there."""
    try:
        start_http_server(port, addr=host or "0.0.0.0")
    except OSError as e:
        log.error("cannot serve metrics on %s:%d: %s (in use, or not an address of this machine)", host, port,
                  e.strerror or e)
        return False
    return True
