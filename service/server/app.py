"""The gRPC server's life: listen (health NOT_SERVING), boot the engine, warm it, serve (SERVING), and on
SIGTERM or SIGINT drain: NOT_SERVING, refuse new requests, let in-flight ones finish within the grace
period, then stop."""

import asyncio
import logging
import signal
import threading
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from google.protobuf import descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2

from service import faults, metrics
from service.boot import build_engine
from service.memory.report import BootReport
from service.plans import Plans, open_plans
from service.errors import ConfigError, ModelLoadError
from service.memory.export import export_boot_metrics
from service.config import EngineConfig
from service.engine.async_engine import AsyncEngine
from service.engine.sampling_params import SamplingParams
from service.proto.inference import grpc_service_pb2, grpc_service_pb2_grpc, model_config_pb2
from service.proto.kvmemo.v1 import kvmemo_pb2, kvmemo_pb2_grpc
from service.server.kserve import KServeServicer
from service.server.kvmemo_api import KvmemoServicer
from service.server.health import HealthServicer
from service.server.guard import GuardInterceptor
from service.server.rejections import MethodInterceptor
from service.server.state import Limits, ServerState

log = logging.getLogger("kvmemo.server")

KVMEMO_SERVICE = kvmemo_pb2.DESCRIPTOR.services_by_name["KvmemoService"].full_name
KSERVE_SERVICE = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
HEALTH_NAMES = ("", KVMEMO_SERVICE, KSERVE_SERVICE)
ENGINE_STOP_SECONDS = 5.0


@dataclass(slots=True)
class ServeOptions:
    model_name: str
    host: str = "0.0.0.0"
    port: int = 50051
    metrics_port: int = 8000
    drain_grace_seconds: float = 30.0
    limits: Limits | None = None  # None: Limits()
    max_consecutive_step_failures: int = 3
    max_connection_age_seconds: float = 0.0  # 0: connections live as long as the client keeps them


def build_server(state: ServerState, health_servicer, options: ServeOptions) -> grpc.aio.Server:
    size = state.limits.max_message_bytes
    channel_options = [("grpc.max_receive_message_length", size), ("grpc.max_send_message_length", size)]
    if options.max_connection_age_seconds > 0:
        # A GOAWAY after this long makes long-lived clients reconnect (and re-resolve DNS), so replicas added
        # since they connected get traffic. No max_connection_age_grace: streams in flight on the old
        # connection finish however long they take (gRPC's default), only new RPCs move.
        channel_options.append(("grpc.max_connection_age_ms", int(options.max_connection_age_seconds * 1000)))
    server = grpc.aio.server(interceptors=[MethodInterceptor(), GuardInterceptor()], options=channel_options)
    kvmemo_pb2_grpc.add_KvmemoServiceServicer_to_server(KvmemoServicer(state), server)
    grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(KServeServicer(state), server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (KVMEMO_SERVICE, KSERVE_SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server, pool=reflection_pool())
    return server


def reflection_pool() -> descriptor_pool.DescriptorPool:
    """Every served file in one pool (the inference files live outside protobuf's default pool)."""
    pool = descriptor_pool.DescriptorPool()
    for module in (kvmemo_pb2, model_config_pb2, grpc_service_pb2, health_pb2, reflection_pb2):
        pool.AddSerializedFile(module.DESCRIPTOR.serialized_pb)
    return pool


async def boot_in_background(config: EngineConfig, plans: Plans, stop: asyncio.Event):
    """build_engine on a daemon thread, so that a signal during boot can still end the process at once."""
    loop = asyncio.get_running_loop()
    booted = loop.create_future()

    def run():
        try:
            faults.before_boot()
            result = build_engine(config, plans)
        except BaseException as e:  # handed to the event loop, which reports it
            loop.call_soon_threadsafe(lambda e=e: booted.done() or booted.set_exception(e))
        else:
            loop.call_soon_threadsafe(lambda result=result: booted.done() or booted.set_result(result))

    threading.Thread(target=run, name="kvmemo-boot", daemon=True).start()
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait([booted, stopped], return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    return booted.result() if booted.done() else None


def publish_boot(state: ServerState, report: BootReport) -> None:
    m = state.model_name
    export_boot_metrics(m, report, state.engine.runner.device)
    metrics.preemptions.labels(m)  # counters exist at 0 from the start, so rates and alerts have a series
    metrics.oom.labels(m)
    metrics.kv_cache_blocks.labels(m, "total").set(state.engine.block_manager.num_usable_blocks)
    metrics.kv_cache_blocks.labels(m, "free").set(state.engine.block_manager.num_free_blocks)
    metrics.kv_cache_blocks.labels(m, "used").set(0)
    metrics.kv_cache_usage_ratio.labels(m).set(0)


async def warm_up_request(engine: AsyncEngine) -> None:
    """One short request through the whole serving path before health says SERVING (boot.warm_up ran the
    profiled batch shape; this one warms the async engine and the sampler)."""
    prompt = engine.engine.tokenizer.encode("warm up")
    async for _ in engine.generate("kvmemo-warmup", prompt, SamplingParams(max_tokens=2, temperature=0)):
        pass


async def drain(state: ServerState, server: grpc.aio.Server, health_servicer, grace: float) -> None:
    """stop(grace) sends GOAWAY on every connection at once and closes the listener: clients send their next
    RPC to another replica (or reconnect) while the streams in flight get up to `grace` to finish. Once no
    generation is in flight, a second stop(None) ends what is left (health Watch streams, which would
    otherwise hold the drain for the whole grace period)."""
    state.draining = True
    await health_servicer.enter_graceful_shutdown()
    stopping = asyncio.ensure_future(server.stop(grace=grace))
    log.info("draining: GOAWAY to every client, %d requests in flight, grace %.1f s", state.in_flight, grace)
    while state.in_flight > 0 and not stopping.done():
        await asyncio.sleep(0.05)
    if state.in_flight:
        log.warning("grace period over; cancelled %d requests still in flight", state.in_flight)
    await server.stop(grace=None)
    await stopping


async def stop_serving(state: ServerState, health_servicer, why: str) -> None:
    """Health NOT_SERVING for good: readiness takes the pod out of the Service and liveness fails, so the
    kubelet restarts it (a restart is what clears a persistent device error)."""
    state.broken = why
    log.error("not serving any more: %s; health is NOT_SERVING until this process is restarted", why)
    for name in HEALTH_NAMES:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)


async def serve(config: EngineConfig, options: ServeOptions) -> int:
    state = ServerState(options.model_name, config, options.limits or Limits())
    health_servicer = HealthServicer(HEALTH_NAMES)
    for name in HEALTH_NAMES:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    server = build_server(state, health_servicer, options)
    address = f"{options.host}:{options.port}"
    if server.add_insecure_port(address) == 0:
        log.error("cannot listen on %s (in use, or not an address of this machine)", address)
        return 1
    await server.start()
    if not metrics.serve(options.metrics_port, options.host):
        await server.stop(grace=None)
        return 1

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    plans = await asyncio.to_thread(open_plans, config)  # the ConfigMap's clients may take a moment to load
    try:
        booted = await boot_in_background(config, plans, stop)
    except (ConfigError, ModelLoadError) as e:  # bad settings or model: exit 2, as for a bad flag
        log.error("%s", e)
        await server.stop(grace=None)
        return 2
    except Exception as e:
        log.error("the engine failed to start: %s", e)
        await server.stop(grace=None)
        return 1
    if booted is None:
        log.info("stopped during boot")
        await server.stop(grace=None)
        return 0
    state.engine, state.report = booted
    publish_boot(state, state.report)

    def on_oom(count: int, report=state.report):  # the one place where engine OOMs reach the plans
        for _ in range(count):
            plans.record_oom(report)

    state.on_oom = on_oom
    state.async_engine = AsyncEngine(state.engine, options.max_consecutive_step_failures)
    state.async_engine.on_step = state.on_step
    state.async_engine.on_broken = lambda why: loop.call_soon_threadsafe(
        lambda: asyncio.ensure_future(stop_serving(state, health_servicer, why)))
    state.async_engine.start()
    await warm_up_request(state.async_engine)
    state.ready = True
    for name in HEALTH_NAMES:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    blocks = state.engine.block_manager
    log.info("serving %s and %s on %s: model %s (max_model_len %d), %d KV blocks of %d tokens (%d bytes, plan %s), "
             "metrics on port %d", KVMEMO_SERVICE, KSERVE_SERVICE, address, state.model_name,
             state.engine.max_model_len, blocks.num_usable_blocks, blocks.block_size,
             state.report.kv_cache_memory_bytes, state.report.plan_source, options.metrics_port)

    await stop.wait()
    await drain(state, server, health_servicer, options.drain_grace_seconds)
    # After the drain: at most ENGINE_STOP_SECONDS here and 5 s of plan writes in close(); the chart's
    # terminationGraceMarginSeconds covers both.
    state.async_engine.stop(timeout=ENGINE_STOP_SECONDS)
    plans.close()
    log.info("stopped")
    return 0
