"""The engine on its own thread, streaming to asyncio callers."""

import asyncio
import time

import pytest

from service.engine.async_engine import AsyncEngine
from service.engine.sampling_params import SamplingParams
from service.errors import InvalidRequest
from tests.engine.conftest import make_engine

PARAMS = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)


@pytest.fixture
def engine(tiny_runner):
    async_engine = AsyncEngine(make_engine(tiny_runner))
    async_engine.start()
    yield async_engine
    async_engine.stop()


async def collect(engine, rid, fall_behind=False):
    """All of a request's messages. With fall_behind, the reader stops after its first message until at least
    two more outputs wait for it, as a reader slower than the engine would."""
    messages = []
    async for out in engine.generate(rid, [256, 5, 6, 7], PARAMS):
        messages.append(out)
        if fall_behind and len(messages) == 1:
            while engine._streams[rid][1].qsize() < 2:
                await asyncio.sleep(0.01)
    return messages


def test_streams_every_token_and_a_slow_reader_gets_them_merged(engine):
    async def main():
        return await asyncio.gather(collect(engine, "fast"), collect(engine, "slow", fall_behind=True))

    fast, slow = asyncio.run(main())
    tokens = lambda msgs: [t for m in msgs for t in m.new_token_ids]
    assert len(tokens(fast)) == 24 and tokens(fast) == tokens(slow)
    assert max(len(m.new_token_ids) for m in slow) >= 2  # several steps' tokens in one message
    assert "".join(m.new_text for m in slow) == "".join(m.new_text for m in fast)
    assert slow[-1].finished and slow[-1].num_output_tokens == 24


def test_leaving_early_aborts_and_frees_blocks(engine):
    async def main():
        async for out in engine.generate("early", [256, 1, 2], SamplingParams(max_tokens=500, ignore_eos=True)):
            break

    asyncio.run(main())
    blocks = engine.engine.block_manager
    deadline = time.monotonic() + 60  # bounds a failing test only
    while blocks.num_free_blocks != blocks.num_usable_blocks and time.monotonic() < deadline:
        time.sleep(0.01)
    assert blocks.num_free_blocks == blocks.num_usable_blocks and not engine.engine.sequences


def test_bad_request_raises_before_any_output(engine):
    async def main():
        async for _ in engine.generate("bad", [256, 1], SamplingParams(top_p=0)):
            pass

    with pytest.raises(InvalidRequest, match="top_p"):
        asyncio.run(main())
