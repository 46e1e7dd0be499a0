"""The memory metrics of a boot (shared/DESIGN.md), set once the engine is up."""

from service import metrics
from service.memory import snapshot
from service.memory.report import BootReport


def export_boot_metrics(model_name: str, report: BootReport, device=None) -> None:
    m = model_name
    for phase, seconds in report.phase_seconds.items():
        metrics.startup_phase_seconds.labels(m, phase).set(seconds)
    for part, seconds in report.load_seconds.items():
        metrics.startup_load_seconds.labels(m, part).set(seconds)
    if report.kernels_compiled is not None:
        metrics.startup_kernels_compiled.labels(m).set(report.kernels_compiled)
    metrics.kv_cache_memory_bytes.labels(m).set(report.kv_cache_memory_bytes)
    metrics.kv_cache_plan_info.labels(m, report.plan_source, report.fingerprint[:12]).set(1)
    if report.record is not None:
        for component, value in report.record.to_json()["components"].items():
            if component == "cudagraph" and report.record.device == "cpu":
                continue  # no CUDA graphs on CPU: a series at 0 would read as measured
            metrics.memory_profile_bytes.labels(m, component).set(value)
        s = report.record.suggestions
        metrics.kv_cache_suggested_bytes.labels(m, "fit-requested").set(s.fit_requested_bytes)
        metrics.kv_cache_suggested_bytes.labels(m, "full").set(s.full_bytes)
    if report.prediction_error_bytes is not None:
        metrics.memory_prediction_error_bytes.labels(m).set(report.prediction_error_bytes)
    if report.baseline is not None:
        metrics.device_memory_bytes.labels(m, "total").set(report.baseline.total)
        metrics.device_memory_bytes.labels(m, "free_at_start").set(report.baseline.free)
        if report.baseline.nvml_used is not None:  # NVML's view: every process on the device, not just ours
            metrics.device_memory_bytes.labels(m, "nvml_used_at_start").set(report.baseline.nvml_used)
    if device is not None:
        now = snapshot.take(device)
        metrics.device_memory_bytes.labels(m, "used").set(now.used)
        metrics.device_memory_bytes.labels(m, "free").set(now.free)
