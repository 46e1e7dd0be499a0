"""`kvmemo run "prompt"`: boot the engine in this process and generate, without a server."""

import argparse
import asyncio
import logging
import sys
import time

from service.cli_text import for_terminal, read_prompt
from service.commands.engine_args import add_engine_arguments, engine_config_from_args
from service.errors import ConfigError, InvalidRequest, ModelLoadError
from service.commands.sampling_args import SAMPLING_FIELDS, add_prompt_argument, add_sampling_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_prompt_argument(parser)
    add_sampling_arguments(parser)
    add_engine_arguments(parser)


async def stream(engine, args, prompt_text: str) -> None:
    from service.engine.async_engine import AsyncEngine
    from service.engine.sampling_params import SamplingParams

    runner = AsyncEngine(engine)
    runner.start()
    try:
        prompt = engine.tokenizer.encode(prompt_text)
        params = SamplingParams(**{name: getattr(args, name) for name in SAMPLING_FIELDS})
        start, tokens = time.perf_counter(), 0
        async for out in runner.generate("cli", prompt, params):
            tokens += len(out.new_token_ids)
            print(for_terminal(out.new_text), end="", flush=True)
        print(f"\n[{tokens} tokens in {time.perf_counter() - start:.2f} s, finish: {out.finish_reason}]",
              file=sys.stderr)
    finally:
        runner.stop()


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from service.boot import build_engine

    try:
        prompt = read_prompt(args.prompt)  # before the engine boots: a missing file fails at once
    except ValueError as e:
        print(f"kvmemo run: {e}", file=sys.stderr)
        return 2
    try:
        engine, _ = build_engine(engine_config_from_args(args))
        asyncio.run(stream(engine, args, prompt))
    except (ConfigError, ModelLoadError, InvalidRequest) as e:
        print(f"kvmemo run: {e}", file=sys.stderr)
        return 2
    return 0
