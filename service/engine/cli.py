"""`kvmemo run "prompt"`: boot the engine in this process and generate, without a server."""

import argparse
import asyncio
import logging
import sys
import time

from service.engine_args import add_engine_arguments, engine_config_from_args
from service.errors import ConfigError, InvalidRequest, ModelLoadError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", help="the prompt text")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--sampling-seed", type=int, default=None, help="seed for reproducible sampling")
    add_engine_arguments(parser)


async def stream(engine, args) -> None:
    from service.engine.async_engine import AsyncEngine
    from service.engine.sampling import SamplingParams

    runner = AsyncEngine(engine)
    runner.start()
    try:
        prompt = engine.tokenizer.encode(args.prompt)
        params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, seed=args.sampling_seed)
        start, tokens = time.perf_counter(), 0
        async for out in runner.generate("cli", prompt, params):
            tokens += len(out.new_token_ids)
            print(out.new_text, end="", flush=True)
        print(f"\n[{tokens} tokens in {time.perf_counter() - start:.2f} s, finish: {out.finish_reason}]",
              file=sys.stderr)
    finally:
        runner.stop()


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from service.boot import build_engine

    try:
        engine, _ = build_engine(engine_config_from_args(args))
        asyncio.run(stream(engine, args))
    except (ConfigError, ModelLoadError, InvalidRequest) as e:
        print(f"kvmemo run: {e}", file=sys.stderr)
        return 2
    return 0
