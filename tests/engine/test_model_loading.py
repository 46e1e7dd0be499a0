"""Loading Hugging Face directories: sharded weights, tokenizer.json, Qwen2's biases, and one clear error
for every kind of bad model input."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from service.config import EngineConfig
from service.engine.model_runner import ModelRunner
from service.engine.sampling_params import SamplingParams
from service.errors import ModelLoadError
from service.model.loader import load_model
from tests.engine.conftest import engine_over, run_to_completion
from tests.hf_models import save_hf_model, save_qwen2_model


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama")
    save_hf_model("llama", path)
    return path


def load(path):
    return load_model(str(path), torch.float32, torch.device("cpu"))


def broken_copy(src, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(src, dst)
    return dst


def test_sharded_weights_with_an_index_load_the_same(llama_dir, tmp_path):
    import transformers

    sharded = tmp_path / "sharded"
    transformers.AutoModelForCausalLM.from_pretrained(llama_dir).save_pretrained(sharded, max_shard_size="100KB")
    assert (sharded / "model.safetensors.index.json").exists() and len(list(sharded.glob("*.safetensors"))) > 1
    a, b = load(llama_dir).model.state_dict(), load(sharded).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_qwen2_with_attention_bias_matches_transformers(tmp_path):
    hf = save_qwen2_model(tmp_path)
    runner = ModelRunner(EngineConfig(model=str(tmp_path), device="cpu", dtype="float32"))
    prompt = list(range(3, 40))
    engine = engine_over(runner, 64)
    engine.add_request("q", prompt, SamplingParams(max_tokens=16, temperature=0, ignore_eos=True))
    tokens, _, _ = run_to_completion(engine)
    with torch.no_grad():
        expected = hf.generate(torch.tensor([prompt]), max_new_tokens=16, min_new_tokens=16, do_sample=False,
                               pad_token_id=0)[0, len(prompt):].tolist()
    assert tokens["q"] == expected


def test_tokenizer_json_is_used(llama_dir, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    model_dir = broken_copy(llama_dir, tmp_path)
    vocab = {w: i for i, w in enumerate(["[UNK]", "<s>", "</s>", "hello", "world", "kv", "memo"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(model_dir / "tokenizer.json"))
    tokenizer = load(model_dir).tokenizer
    assert tokenizer.encode("hello kv memo world") == [3, 5, 6, 4]
    assert tokenizer.decode([3, 4]) == "hello world"
    # Without tokenizer_config.json: no template; bos and eos are the texts of config.json's ids 1 and 2.
    assert (tokenizer.chat_template, tokenizer.bos_token, tokenizer.eos_token) == (None, "<s>", "</s>")
    config = {"chat_template": "{{ messages }}", "bos_token": "<s>", "eos_token": {"content": "memo"}}
    (model_dir / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer = load(model_dir).tokenizer
    assert (tokenizer.chat_template, tokenizer.bos_token, tokenizer.eos_token) == ("{{ messages }}", "<s>", "memo")
    (model_dir / "chat_template.jinja").write_text("{{ newer }}")  # what transformers >= 4.43 saves
    assert load(model_dir).tokenizer.chat_template == "{{ newer }}"
    tiny = load_model("tiny", torch.float32, torch.device("cpu")).tokenizer
    assert (tiny.chat_template, tiny.bos_token, tiny.eos_token) == (None, None, None)


def test_missing_path_names_the_presets():
    with pytest.raises(ModelLoadError, match="neither a preset .*tiny.* nor an existing directory"):
        load("/nonexistent/model")


def test_missing_and_malformed_config(llama_dir, tmp_path):
    model_dir = broken_copy(llama_dir, tmp_path)
    (model_dir / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"config.json: cannot read config.json"):
        load(model_dir)
    (model_dir / "config.json").unlink()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load(model_dir)


def test_unsupported_architecture_lists_the_supported_ones(llama_dir, tmp_path):
    model_dir = broken_copy(llama_dir, tmp_path)
    config = json.loads((model_dir / "config.json").read_text())
    config["architectures"] = ["MistralForCausalLM"]
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="unsupported architecture 'MistralForCausalLM'; supported: LlamaForCausalLM"):
        load(model_dir)


def test_missing_field_in_config(llama_dir, tmp_path):
    model_dir = broken_copy(llama_dir, tmp_path)
    config = json.loads((model_dir / "config.json").read_text())
    del config["hidden_size"]
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="missing required field 'hidden_size'"):
        load(model_dir)


def test_missing_tensor_names_it(llama_dir, tmp_path):
    model_dir = broken_copy(llama_dir, tmp_path)
    weights = model_dir / "model.safetensors"
    tensors = load_file(weights)
    del tensors["model.layers.1.self_attn.k_proj.weight"]
    save_file(tensors, weights)
    with pytest.raises(ModelLoadError, match="missing tensor 'model.layers.1.self_attn.k_proj.weight'"):
        load(model_dir)


def test_shape_mismatch_names_tensor_file_and_shapes(llama_dir, tmp_path):
    model_dir = broken_copy(llama_dir, tmp_path)
    config = json.loads((model_dir / "config.json").read_text())
    config["intermediate_size"] = 128
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"shape mismatch for model.layers.0.mlp.gate_up_proj.weight: expected "
                                             r"\(256, 64\) from config.json, got model.layers.0.mlp.gate_proj.weight "
                                             r"\(160, 64\) in model.safetensors"):
        load(model_dir)


def test_no_weight_files(llama_dir, tmp_path):
    model_dir = broken_copy(llama_dir, tmp_path)
    (model_dir / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="no \\*.safetensors files"):
        load(model_dir)


def test_cli_reports_a_bad_model_without_a_traceback(tmp_path):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "service.cli", "run", "hi", "--model", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "no config.json" in result.stderr and "Traceback" not in result.stderr
