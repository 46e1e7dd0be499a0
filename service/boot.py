"""One boot: load weights, decide the KV-cache size, allocate it, capture CUDA graphs. Each phase is timed."""

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

from service.config import EngineConfig
from service.engine.engine import LLMEngine
from service.engine.model_runner import ModelRunner

log = logging.getLogger(__name__)


@dataclass(slots=True)
class BootReport:
    phase_seconds: dict[str, float] = field(default_factory=dict)
    kv_cache_memory_bytes: int = 0
    num_blocks: int = 0
    plan_source: str = "flag"  # flag | env | file | configmap | profile


@contextmanager
def timed(report: BootReport, phase: str):
    start = time.perf_counter()
    try:
        yield
    finally:
        report.phase_seconds[phase] = time.perf_counter() - start
        log.info("startup phase %s took %.2f s", phase, report.phase_seconds[phase])


def build_engine(config: EngineConfig) -> tuple[LLMEngine, BootReport]:
    report = BootReport()
    start = time.perf_counter()
    with timed(report, "load_weights"):
        runner = ModelRunner(config)
    with timed(report, "profile"):
        kv_bytes = config.kv_cache_memory_bytes or default_kv_bytes(runner)
    with timed(report, "allocate_kv"):
        engine = LLMEngine(config, runner, num_blocks=runner.num_blocks_for(kv_bytes))
    with timed(report, "capture_graphs"):
        capture_graphs(runner, config)
    report.phase_seconds["total"] = time.perf_counter() - start
    report.kv_cache_memory_bytes = kv_bytes
    report.num_blocks = engine.block_manager.num_blocks
    return engine, report


def default_kv_bytes(runner: ModelRunner) -> int:
    # Until the memory profiler decides: room for every sequence at full length.
    blocks = runner.config.max_num_seqs * runner.max_blocks_per_seq + 1
    return blocks * runner.bytes_per_block


def capture_graphs(runner: ModelRunner, config: EngineConfig) -> None:
    if runner.device.type != "cuda" or config.enforce_eager:
        return
    from service.engine.cuda_graphs import DecodeGraphs

    runner.graphs = DecodeGraphs(runner, config.cuda_graph_sizes)
    runner.graphs.capture()
