import pytest

from service.config import EngineConfig
from service.engine.engine import LLMEngine
from service.engine.model_runner import ModelRunner


@pytest.fixture(scope="session")
def tiny_runner():
    """One loaded tiny model for the session; each engine gets its own runner and KV cache around it."""
    return ModelRunner(EngineConfig(model="tiny", device="cpu"))


def engine_over(runner, num_blocks: int) -> LLMEngine:
    """An engine over runner with a KV cache of num_blocks, allocated through the runner as boot does."""
    runner.allocate_kv_cache(num_blocks)
    return LLMEngine(runner.config, runner)


def make_engine(runner, num_blocks=256, **overrides) -> LLMEngine:
    config = EngineConfig(model="tiny", device="cpu", **overrides)
    return engine_over(ModelRunner(config, loaded=runner.loaded), num_blocks)


def run_to_completion(engine, max_steps=10_000):
    tokens, texts, reasons = {}, {}, {}
    for _ in range(max_steps):
        if not engine.has_unfinished():
            break
        for out in engine.step():
            tokens.setdefault(out.request_id, []).extend(out.new_token_ids)
            texts[out.request_id] = texts.get(out.request_id, "") + out.new_text
            if out.finished:
                reasons[out.request_id] = out.finish_reason
    assert not engine.has_unfinished(), "engine did not finish within max_steps"
    return tokens, texts, reasons
