"""gRPC overhead on CPU: N concurrent streams on `tiny`, tokens/s through a real `kvmemo serve` against the
same engine called in-process (AsyncEngine), in the same run; and the time to first token that gRPC adds.

    python bench/grpc_overhead.py [--streams 64] [--max-tokens 128] [--runs 3]

Writes bench/results/grpc_overhead-<device>-<date>.json. Target: grpc/in-process tokens/s >= 0.8."""

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import device_slug, environment, write_json  # noqa: E402
from service.proto.kvmemo.v1 import kvmemo_pb2 as pb  # noqa: E402
from service.proto.kvmemo.v1 import kvmemo_pb2_grpc as pb_grpc  # noqa: E402
from tests.ports import free_port  # noqa: E402

PROMPT = "The quick brown fox jumps over the lazy dog, request {}"


def engine_flags(args) -> list[str]:
    return ["--model", "tiny", "--device", "cpu", "--max-model-len", str(args.max_model_len),
            "--max-num-seqs", str(args.streams), "--weights-seed", "0"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def summary(runs: list[tuple[int, float, list[float]]]) -> dict:
    """The median run's tokens/s; TTFT percentiles over every request of every run."""
    rates = sorted(tokens / seconds for tokens, seconds, _ in runs)
    ttfts = [t for _, _, run_ttfts in runs for t in run_ttfts]
    return {"runs": len(runs), "tokens_per_run": runs[0][0], "tokens_per_s": rates[len(rates) // 2],
            "tokens_per_s_all_runs": rates, "ttft_p50_s": percentile(ttfts, 50), "ttft_p99_s": percentile(ttfts, 99)}


async def measure(one, args) -> dict:
    """One warm-up, then args.runs runs of args.streams concurrent `one(i, ttfts) -> tokens`."""
    async def run() -> tuple:
        ttfts: list[float] = []
        start = time.monotonic()
        counts = await asyncio.gather(*(one(i, ttfts) for i in range(args.streams)))
        return sum(counts), time.monotonic() - start, ttfts

    await run()
    return summary([await run() for _ in range(args.runs)])


def started_engine(flags: list[str]):
    """The engine `kvmemo serve` would build from these flags, as (LLMEngine, started AsyncEngine)."""
    from service.boot import build_engine
    from service.commands.engine_args import add_engine_arguments, engine_config_from_args
    from service.engine.async_engine import AsyncEngine

    parser = argparse.ArgumentParser()
    add_engine_arguments(parser)
    llm, _ = build_engine(engine_config_from_args(parser.parse_args(flags)))
    engine = AsyncEngine(llm)
    engine.start()
    return llm, engine


async def in_process(args) -> dict:
    from service.engine.sampling_params import SamplingParams

    llm, engine = started_engine(engine_flags(args))

    async def one(i: int, ttfts: list) -> int:
        start, n = time.monotonic(), 0
        params = SamplingParams(max_tokens=args.max_tokens, temperature=1.0, seed=i, ignore_eos=True)
        async for out in engine.generate(f"r{i}-{start}", llm.tokenizer.encode(PROMPT.format(i)), params):
            if n == 0:
                ttfts.append(time.monotonic() - start)
            n += len(out.new_token_ids)
        return n

    result = await measure(one, args)
    engine.stop()
    return result


def bench_env() -> dict:
    """Both sides run with what `kvmemo serve` sets for itself (OMP_WAIT_POLICY=PASSIVE), so that only gRPC differs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVMEMO_")}
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


@contextlib.asynccontextmanager
async def served_stub(flags: list[str], boot_timeout: float = 300, log: Path | None = None):
    """A real `kvmemo serve` with these engine flags on a free loopback port, and a stub once it is SERVING;
    SIGTERM when done. log: a file for the server's stderr (default: dropped)."""
    port = free_port()
    cmd = [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--metrics-port", str(free_port()), *flags]
    stderr = open(log, "w") if log else subprocess.DEVNULL
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=stderr, env=bench_env())
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), timeout=boot_timeout)
            health = health_pb2_grpc.HealthStub(channel)
            while (await health.Check(health_pb2.HealthCheckRequest())).status != health_pb2.HealthCheckResponse.SERVING:
                await asyncio.sleep(0.2)
            yield pb_grpc.KvmemoServiceStub(channel)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        if log:
            stderr.close()


async def through_grpc(args) -> dict:
    async with served_stub(engine_flags(args)) as stub:
        async def one(i: int, ttfts: list) -> int:
            request = pb.GenerateRequest(text=PROMPT.format(i), max_tokens=args.max_tokens,
                                         sampling=pb.SamplingParameters(temperature=1.0, seed=i),
                                         stop=pb.StopConditions(ignore_eos=True))
            start, n = time.monotonic(), 0
            async for message in stub.Generate(request, wait_for_ready=True):
                if n == 0:
                    ttfts.append(time.monotonic() - start)
                n += len(message.token_ids)
            return n

        return await measure(one, args)


def in_process_subprocess(args, env: dict) -> dict:
    cmd = [sys.executable, __file__, "--in-process-only", "--streams", str(args.streams), "--max-tokens",
           str(args.max_tokens), "--runs", str(args.runs), "--max-model-len", str(args.max_model_len)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3, help="measured runs per side, after one warm-up")
    parser.add_argument("--max-model-len", type=int, default=256)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--in-process-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.in_process_only:
        print(json.dumps(asyncio.run(in_process(args))))
        return 0
    # Each side in a process of its own, one after the other: an engine that has run in this process slows
    # a gRPC client here (its torch threads stay warm), which would charge gRPC for it.
    load_before = os.getloadavg()  # the 2-core machines are shared: a busy one makes every number noisy
    local = in_process_subprocess(args, bench_env())
    # For the record: the engine alone with OpenMP's default (spinning) threads, which suits it best.
    spinning = in_process_subprocess(args, {k: v for k, v in bench_env().items() if k != "OMP_WAIT_POLICY"})
    remote = asyncio.run(through_grpc(args))
    env = environment()
    result = {**env, "benchmark": "grpc_overhead", "model": "tiny", "streams": args.streams,
              "max_tokens": args.max_tokens, "cpu_count": os.cpu_count(),
              "load_average_before": load_before, "load_average_after": os.getloadavg(), "in_process": local, "grpc": remote,
              "omp_wait_policy": "PASSIVE (both sides; kvmemo serve sets it)", "in_process_omp_default": spinning,
              "tokens_per_s_ratio_vs_in_process_omp_default": remote["tokens_per_s"] / spinning["tokens_per_s"],
              "tokens_per_s_ratio": remote["tokens_per_s"] / local["tokens_per_s"], "target_ratio": 0.8,
              "added_ttft_p50_s": remote["ttft_p50_s"] - local["ttft_p50_s"],
              "added_ttft_p99_s": remote["ttft_p99_s"] - local["ttft_p99_s"]}
    print(f"in-process {local['tokens_per_s']:.1f} tok/s, gRPC {remote['tokens_per_s']:.1f} tok/s, "
          f"ratio {result['tokens_per_s_ratio']:.3f} (target >= 0.8); added TTFT p50 "
          f"{result['added_ttft_p50_s'] * 1000:.1f} ms, p99 {result['added_ttft_p99_s'] * 1000:.1f} ms")
    out = args.out or Path(__file__).parent / "results" / f"grpc_overhead-{device_slug()}-{env['date']}.json"
    write_json(out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
