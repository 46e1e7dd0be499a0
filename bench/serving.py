"""Serving under load: seeded Poisson arrivals of prompts with a realistic length spread, sent to a real
`kvmemo serve` over the streaming Generate RPC, and the same request list through the same engine in-process
(AsyncEngine), in the same run. Per arrival rate: output tokens/s, requests/s, and p50/p99 of the time to first
token (TTFT), the inter-token latency (ITL: gaps between later streamed messages) and the end-to-end latency.

    PYTHONPATH=. python3 bench/serving.py --model llama-3-8b --out bench/results/serving.json
    PYTHONPATH=. python3 bench/serving.py --model tiny --requests 8 --out /tmp/serving.json   # CPU, seconds

The rates: the in-process engine first takes every request at once (saturation); the bench then offers
--rate-fractions of that request rate, the last at or above it, to both sides.
"""

import argparse
import asyncio
import json
import math
import random
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import device_slug, environment, write_json  # noqa: E402
from bench.grpc_overhead import bench_env, percentile, served_stub, started_engine  # noqa: E402
from service.proto.kvmemo.v1 import kvmemo_pb2 as pb  # noqa: E402

WARMUP_REQUESTS = 8


@dataclass
class Request:
    prompt: list[int]
    output_tokens: int


@dataclass
class Timing:
    """One request's clock, in seconds from its send: the first token's arrival, every later message's gap."""
    ttft: float
    itls: list[float]
    e2e: float
    output_tokens: int


def workload(args, vocab_size: int) -> list[Request]:
    """Lognormal prompt lengths around --input-median, uniform output lengths; seeded, so both sides get the
    same list."""
    rng = random.Random(args.seed)
    requests = []
    for _ in range(args.requests):
        length = round(rng.lognormvariate(math.log(args.input_median), args.input_sigma))
        length = min(max(length, args.input_min), args.input_max)
        requests.append(Request([rng.randrange(10, vocab_size) for _ in range(length)],
                                rng.randint(args.output_min, args.output_max)))
    return requests


def arrivals(count: int, rate: float, seed: int) -> list[float]:
    """Send times (s from the start) of a Poisson process at `rate` requests/s; inf sends them all at once."""
    if math.isinf(rate):
        return [0.0] * count
    rng, t, times = random.Random(seed), 0.0, []
    for _ in range(count):
        t += rng.expovariate(rate)
        times.append(t)
    return times


async def timed_stream(messages) -> Timing:
    """Times an async iterator of streamed messages, each with a token count (`len(message)`)."""
    start, last, ttft, itls, tokens = time.monotonic(), None, None, [], 0
    async for n in messages:
        if n == 0:
            continue
        now = time.monotonic()
        if ttft is None:
            ttft = now - start
        else:
            itls.append(now - last)
        last, tokens = now, tokens + n
    return Timing(ttft, itls, time.monotonic() - start, tokens)


async def offer(send, requests: list[Request], rate: float, seed: int) -> dict:
    """Sends each request at its Poisson arrival time through `send(i, request) -> async iterator of token
    counts`, and summarises the timings."""
    times = arrivals(len(requests), rate, seed)
    start = time.monotonic()

    async def one(i: int) -> Timing:
        await asyncio.sleep(max(0.0, start + times[i] - time.monotonic()))
        return await timed_stream(send(i, requests[i]))

    timings = await asyncio.gather(*(one(i) for i in range(len(requests))))
    return summary(timings, time.monotonic() - start, rate)


def spread(values: list[float]) -> dict:
    return {"p50_ms": percentile(values, 50) * 1000, "p99_ms": percentile(values, 99) * 1000,
            "mean_ms": sum(values) / len(values) * 1000} if values else {"p50_ms": None, "p99_ms": None, "mean_ms": None}


def summary(timings: list[Timing], seconds: float, rate: float) -> dict:
    tokens = sum(t.output_tokens for t in timings)
    return {"offered_requests_per_s": None if math.isinf(rate) else rate, "requests": len(timings),
            "seconds": seconds, "output_tokens": tokens, "output_tokens_per_s": tokens / seconds,
            "requests_per_s": len(timings) / seconds,
            "ttft": spread([t.ttft for t in timings]), "itl": spread([g for t in timings for g in t.itls]),
            "e2e": spread([t.e2e for t in timings])}


def engine_flags(args) -> list[str]:
    return ["--model", args.model, "--device", args.device, "--max-model-len", str(args.input_max + args.output_max),
            "--max-num-seqs", str(args.max_num_seqs), "--max-num-batched-tokens", str(args.max_num_batched_tokens),
            "--weights-seed", "0", "--plan-store", "none"]


def rates_from(saturation_requests_per_s: float, fractions: list[float]) -> list[float]:
    return [saturation_requests_per_s * f for f in fractions]


async def in_process(args) -> dict:
    """Saturation first (every request at once), then each rate; prints the rates the gRPC side must use."""
    from service.engine.sampling_params import SamplingParams

    llm, engine = started_engine(engine_flags(args))
    requests = workload(args, llm.model_config.vocab_size)
    run = 0

    def send(i: int, request: Request):
        async def counts():
            params = SamplingParams(max_tokens=request.output_tokens, temperature=0, ignore_eos=True)
            async for out in engine.generate(f"r{run}-{i}", request.prompt, params):
                yield len(out.new_token_ids)
        return counts()

    await offer(send, requests[:WARMUP_REQUESTS], math.inf, args.seed)
    run += 1
    saturation = await offer(send, requests, math.inf, args.seed)
    rows = []
    for rate in rates_from(saturation["requests_per_s"], args.rate_fractions):
        run += 1
        rows.append(await offer(send, requests, rate, args.seed))
    engine.stop()
    return {"vocab_size": llm.model_config.vocab_size, "saturation": saturation, "rates": rows}


async def through_grpc(args, vocab_size: int, rates: list[float]) -> dict:
    requests = workload(args, vocab_size)
    async with served_stub(engine_flags(args), boot_timeout=args.boot_timeout, log=args.server_log) as stub:
        def send(i: int, request: Request):
            async def counts():
                message = pb.GenerateRequest(token_ids=pb.TokenIds(ids=request.prompt), max_tokens=request.output_tokens,
                                             sampling=pb.SamplingParameters(temperature=0),
                                             stop=pb.StopConditions(ignore_eos=True))
                async for reply in stub.Generate(message, wait_for_ready=True):
                    yield len(reply.token_ids)
            return counts()

        await offer(send, requests[:WARMUP_REQUESTS], math.inf, args.seed)
        saturation = await offer(send, requests, math.inf, args.seed)
        return {"saturation": saturation, "rates": [await offer(send, requests, rate, args.seed) for rate in rates]}


def in_process_subprocess(argv: list[str]) -> dict:
    """In a process of its own, so that its GPU memory is free before the server boots."""
    done = subprocess.run([sys.executable, __file__, *argv, "--in-process-only"], stdout=subprocess.PIPE,
                          text=True, check=True, env=bench_env())
    return json.loads(done.stdout.strip().splitlines()[-1])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama-3-8b")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--requests", type=int, default=200, help="requests per rate (the same list at every rate)")
    ap.add_argument("--rate-fractions", type=lambda s: [float(x) for x in s.split(",")], default=[0.25, 0.5, 1.0, 1.5],
                    help="offered request rates as fractions of the in-process saturation rate")
    ap.add_argument("--input-median", type=int, default=300)
    ap.add_argument("--input-sigma", type=float, default=0.6)
    ap.add_argument("--input-min", type=int, default=16)
    ap.add_argument("--input-max", type=int, default=1536)
    ap.add_argument("--output-min", type=int, default=50)
    ap.add_argument("--output-max", type=int, default=500)
    ap.add_argument("--max-num-seqs", type=int, default=256)
    ap.add_argument("--max-num-batched-tokens", type=int, default=8192)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--boot-timeout", type=float, default=300)
    ap.add_argument("--server-log", type=Path, default=None, help="file for the server's stderr")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--in-process-only", action="store_true", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.in_process_only:
        print(json.dumps(asyncio.run(in_process(args))))
        return 0
    local = in_process_subprocess([a for a in argv if a != "--in-process-only"])
    rates = [row["offered_requests_per_s"] for row in local["rates"]]
    remote = asyncio.run(through_grpc(args, local["vocab_size"], rates))
    lengths = workload(args, local["vocab_size"])
    prompt_lengths = [len(r.prompt) for r in lengths]
    env = environment()
    result = {**env, "benchmark": "serving", "model": args.model, "requests_per_rate": args.requests,
              "seed": args.seed, "engine_flags": engine_flags(args), "sampling": "greedy, ignore_eos",
              "prompt_lengths": {"distribution": f"lognormal, median {args.input_median}, sigma {args.input_sigma}, "
                                                 f"clamped to [{args.input_min}, {args.input_max}]",
                                 "mean": sum(prompt_lengths) / len(prompt_lengths), "p50": percentile(prompt_lengths, 50),
                                 "p99": percentile(prompt_lengths, 99)},
              "output_lengths": {"distribution": f"uniform integers in [{args.output_min}, {args.output_max}]",
                                 "total": sum(r.output_tokens for r in lengths)},
              "arrivals": "Poisson (seeded exponential gaps); saturation: every request at once",
              "rate_fractions_of_saturation": args.rate_fractions,
              "itl_note": "gaps between streamed messages after the first; a message holds one or more tokens",
              "in_process": {"saturation": local["saturation"], "rates": local["rates"]}, "grpc": remote}
    for side in ("in_process", "grpc"):
        for row in result[side]["rates"]:
            print(f'{side:10} {row["offered_requests_per_s"]:7.2f} req/s offered: {row["output_tokens_per_s"]:8.0f} '
                  f'tok/s, TTFT p50 {row["ttft"]["p50_ms"]:.0f} ms, ITL p50 {row["itl"]["p50_ms"]:.1f} ms, '
                  f'E2E p50 {row["e2e"]["p50_ms"]:.0f} ms', flush=True)
    write_json(args.out or Path(__file__).parent / "results" / f"serving-{device_slug()}-{env['date']}.json", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
