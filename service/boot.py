"""One boot: load weights, decide the KV-cache size (flag, stored plan, or profiling), allocate it, capture
CUDA graphs, then measure what non-KV memory really is and check the prediction. Each phase is timed."""

import gc
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from service import faults
from service.config import EngineConfig
from service.engine.engine import LLMEngine
from service.engine.kernel_warm_up import KernelWarmUp, pays_beside_load
from service.engine.model_runner import ModelRunner, resolve_device
from service.kernels.cache import KernelCache, use_kernel_cache
from service.memory import planner, snapshot
from service.memory.fingerprint import fingerprint, fingerprint_fields
from service.memory.memory_profile import format_bytes
from service.memory.profiler import DummyStep, fitted, mixed_step
from service.memory.report import BootReport
from service.plans import Plans, open_plans

log = logging.getLogger(__name__)


@contextmanager
def timed(report: BootReport, phase: str):
    start = time.perf_counter()
    try:
        yield
    finally:
        report.phase_seconds[phase] = time.perf_counter() - start
        log.info("startup phase %s took %.2f s", phase, report.phase_seconds[phase])


@dataclass(slots=True)
class Loaded:
    runner: ModelRunner
    baseline: snapshot.Snapshot  # after device initialisation, before the weights
    weights: int  # bytes the weights took (allocator delta on CUDA, RSS delta on CPU)
    free_after_weights: int
    fingerprint: str
    # load_weights' parts: cuda_init, the loader's (build_model, read, copy | generate), then kernels (the wait for
    # the kernel warm-up that ran beside the loader)
    seconds: dict[str, float]
    bytes_read: int
    kernels: KernelCache | None  # where compiled kernels are kept (CUDA only)


def use_expandable_segments() -> None:
    """Expandable segments let freed memory serve any later size. Without them a full-size KV cache leaves too
    little room for the allocator's fragmentation: on an H200, Llama-3-8B's 376 MiB sampler sort failed with
    1.1 GiB free inside partly used segments, though profiling (with memory to spare) had never needed it.
    Set at runtime, because torch reads PYTORCH_CUDA_ALLOC_CONF when it is imported; a user's setting wins."""
    if "expandable_segments" in os.environ.get("PYTORCH_CUDA_ALLOC_CONF", ""):
        return
    setter = getattr(torch._C, "_accelerator_setAllocatorSettings", None) or torch.cuda.memory._set_allocator_settings
    setter("expandable_segments:True")
    log.info("CUDA allocator: expandable segments on (set PYTORCH_CUDA_ALLOC_CONF to choose otherwise)")


def load_and_fingerprint(config: EngineConfig) -> Loaded:
    device = resolve_device(config.device)
    kernels = use_kernel_cache(config.kernel_cache_dir) if device.type == "cuda" else None  # before any compile
    start = time.perf_counter()
    if device.type == "cuda":
        use_expandable_segments()
        torch.cuda.set_device(device)
        torch.cuda.init()
        # A process that used the device before (tests, a second engine) must not take its garbage or its
        # allocator's cached blocks into the baseline: both are released later, so the boot would measure
        # less non-KV memory than it has (an H200 GPU test that found 126 MiB cached at start: -294 MiB).
        gc.collect()
        torch.cuda.empty_cache()
    baseline = snapshot.take(device)  # the first call that needs the CUDA context creates it
    seconds = {"cuda_init": time.perf_counter() - start} if device.type == "cuda" else {}
    beside_load = pays_beside_load(config, kernels.entries_at_start if kernels is not None else None)
    kernel_warm_up = KernelWarmUp.start(config, device) if beside_load else None
    runner = ModelRunner(config)
    seconds.update(runner.loaded.seconds)
    if kernel_warm_up is not None:
        seconds["kernels"] = kernel_warm_up.wait()  # what compiling took beyond the load
        gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()  # loading's temporaries must not count as used
    after = snapshot.take(device)
    fp = fingerprint(fingerprint_fields(config, runner.loaded.identity, runner.dtype, runner.max_model_len, device,
                                        baseline.total))
    log.info("fingerprint %s (%s, %s, max_model_len=%d)", fp[:12], config.model, runner.dtype, runner.max_model_len)
    weights = max(0, after.allocated - baseline.allocated)
    if device.type != "cuda":
        # RSS grows by less than the weights when they land in heap pages this process freed earlier.
        weights = max(weights, sum(t.nbytes for t in (*runner.model.parameters(), *runner.model.buffers())))
    return Loaded(runner, baseline, weights, after.free + after.reserved - after.allocated, fp, seconds,
                  runner.loaded.bytes_read, kernels)


def load_log_line(loaded: Loaded, total: float) -> str:
    """load_weights in its parts, e.g. 'cuda_init 0.41 s, build_model 0.02 s, read 1.30 s (16.1 GB, 12.4 GB/s),
    copy 0.01 s, other 0.05 s'."""
    parts = []
    for part, seconds in loaded.seconds.items():
        text = f"{part} {seconds:.2f} s"
        if part == "read" and loaded.bytes_read:
            text += f" ({loaded.bytes_read / 1e9:.1f} GB, {loaded.bytes_read / 1e9 / max(seconds, 1e-9):.1f} GB/s)"
        parts.append(text)
    parts.append(f"other {max(0.0, total - sum(loaded.seconds.values())):.2f} s")
    return "load_weights: " + ", ".join(parts)


def build_engine(config: EngineConfig, plans: Plans | None = None) -> tuple[LLMEngine, BootReport]:
    """plans: where this boot looks for its plan and records what it measured (default: open_plans(config))."""
    plans = plans if plans is not None else open_plans(config)
    report = BootReport()
    start = time.perf_counter()
    with timed(report, "load_weights"):
        loaded = load_and_fingerprint(config)
    report.load_seconds = loaded.seconds
    log.info(load_log_line(loaded, report.phase_seconds["load_weights"]))
    runner, baseline, fp = loaded.runner, loaded.baseline, loaded.fingerprint
    report.baseline, report.fingerprint = baseline, fp

    with timed(report, "profile"):
        lookup = plans.lookup(fp, config.kv_cache_policy)
        decision = planner.decide(config, runner, baseline, loaded.free_after_weights, loaded.weights, fp, lookup)
    report.plan_source, report.plan_reason, report.record = decision.source, decision.reason, decision.record
    layout = runner.layout
    kv_bytes, capped_because = planner.kv_allocation(decision, layout, runner.device.type)
    if decision.source != "profile":
        log.info(planner.skipped_profiling_line(decision, kv_bytes, capped_because))
    elif capped_because:
        log.info("KV cache capped at %s: %s", format_bytes(kv_bytes), capped_because)

    with timed(report, "allocate_kv"):
        if runner.device.type == "cuda":
            torch.cuda.empty_cache()  # what profiling cached would otherwise sit beside the KV cache
        num_blocks = layout.num_blocks_for(kv_bytes)
        runner.allocate_kv_cache(num_blocks)
        engine = LLMEngine(config, runner)
    report.num_blocks = num_blocks
    report.kv_cache_memory_bytes = num_blocks * layout.bytes_per_block

    with timed(report, "capture_graphs"):
        if runner.uses_graphs:
            runner.capture_graphs(config.cuda_graph_sizes)
        warmup_oom = warm_up(runner, config)
    report.phase_seconds["total"] = time.perf_counter() - start
    if loaded.kernels is not None:
        report.kernels_compiled = loaded.kernels.compiled()
        log.info("compiled %d kernels during boot (cache %s)", report.kernels_compiled, loaded.kernels.directory)
    check_prediction(report, snapshot.take(runner.device), plans)
    if warmup_oom:
        engine.count_oom()  # only counted: the server records it against the plan, as it does every engine OOM
    if report.record is not None:
        log.info(planner.plan_log_line(report.record, report.kv_cache_memory_bytes, runner))
    return engine, report


CPU_WARM_UP_TOKENS = 16


def warm_up(runner, config: EngineConfig) -> bool:
    """On CUDA, the worst step profiling ran (profiler.mixed_step, as much of it as the KV cache holds) brings
    the caching allocator to its serving peak before requests come; on a CPU, which has no such allocator, a
    short step only initialises the kernels' libraries. Returns whether it ran out of memory (serving goes on:
    an out-of-memory step fails only its own requests)."""
    layout = runner.layout
    if runner.device.type == "cuda":
        torch.cuda.empty_cache()  # the activation was profiled from an empty cache: start from the same state
        step = mixed_step(config.max_num_batched_tokens, layout.max_num_seqs, layout.max_model_len)
    else:
        step = DummyStep((max(1, min(CPU_WARM_UP_TOKENS, layout.max_model_len - 1)),), 1)
    step = fitted(step, layout, runner.num_kv_blocks)
    try:
        if faults.oom_in_warm_up():
            raise torch.OutOfMemoryError("out of memory injected by KVMEMO_FAULTS=oom_in_warm_up=1")
        step.run(runner)
        return False
    except torch.OutOfMemoryError as e:
        reason = str(e).splitlines()[0]
    if runner.device.type == "cuda":
        torch.cuda.empty_cache()  # outside the handler: its traceback would keep the batch's tensors alive
    log.error("the warm-up batch ran out of memory (%s); serving anyway, and the plan is marked stale so that "
              "the next boot profiles again", reason)
    return True


def check_prediction(report: BootReport, now: snapshot.Snapshot, plans: Plans) -> None:
    """Actual non-KV memory after capture against the prediction; a miss beyond the safety margin marks the
    plan stale so that the next boot profiles again."""
    if now.device == "cpu":
        report.actual_non_kv_bytes = now.allocated - report.baseline.allocated - report.kv_cache_memory_bytes
    else:
        report.actual_non_kv_bytes = report.baseline.free - now.free - report.kv_cache_memory_bytes
    record = report.record
    if record is None:
        return
    report.prediction_error_bytes = report.actual_non_kv_bytes - record.components.non_kv
    log.info("non-KV memory: predicted %s, measured %s after capture (error %+d bytes)",
             format_bytes(record.components.non_kv), format_bytes(report.actual_non_kv_bytes),
             report.prediction_error_bytes)
    if report.prediction_error_bytes > record.safety_bytes:
        record.stale = report.plan_stale = True
        log.warning("measured non-KV memory exceeds the prediction by more than the safety margin (%s); the plan "
                    "is marked stale and the next boot profiles again", format_bytes(record.safety_bytes))
    if report.plan_source == "profile" or record.stale:
        plans.record_profile(record)
