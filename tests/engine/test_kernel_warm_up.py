"""The kernel warm-up that runs beside the loader (from an empty kernel cache, with CUDA graphs on): a one-layer
copy of the configured model, read from the same source the loader reads (preset, config.json or GGUF header),
runs a mixed step and a one-sequence decode through full-width block tables, and leaves no KV cache behind. On
this CPU machine it runs the reference paths; on a GPU tests/memory/test_gpu_boot.py checks that profiling then
compiles nothing."""

import dataclasses

import pytest
import torch

from service.config import EngineConfig
from service.engine import kernel_warm_up
from service.engine.kernel_warm_up import (WARM_UP_VOCAB, KernelWarmUp, one_layer_runner, pays_beside_load,
                                           run_small_steps)
from service.errors import ModelLoadError
from service.model.loader import read_model_config
from service.model.presets import PRESETS
from service.model.config import from_hf_dict
from tests.gguf_models import write_gguf
from tests.hf_models import save_hf_model

CONFIG = dict(device="cpu", max_model_len=256, max_num_seqs=8, max_num_batched_tokens=512)


def test_the_model_config_is_read_from_each_kind_of_source(tmp_path):
    assert read_model_config("llama-3-8b") == from_hf_dict(PRESETS["llama-3-8b"], "preset llama-3-8b")
    save_hf_model("qwen3", tmp_path / "hf")
    hf = read_model_config(str(tmp_path / "hf"))
    assert hf.architecture == "Qwen3ForCausalLM" and hf.qk_norm
    write_gguf(tmp_path / "m.gguf", "llama")
    assert read_model_config(str(tmp_path / "m.gguf")).architecture == "LlamaForCausalLM"


@pytest.mark.parametrize("name, problem", [("missing.gguf", "no such GGUF file"),
                                           ("no-such-model", "neither a preset")])
def test_a_bad_model_name_fails_the_config_read_as_it_fails_the_load(tmp_path, name, problem):
    """read_model_config and load_model resolve a name in one place (model_source), so they fail alike."""
    with pytest.raises(ModelLoadError, match=problem):
        read_model_config(str(tmp_path / name))


def test_the_copy_has_one_layer_of_the_real_shapes_and_a_small_vocabulary():
    runner = one_layer_runner(EngineConfig(model="llama-3-8b", **CONFIG), torch.device("meta"))
    real = read_model_config("llama-3-8b")
    assert runner.model_config == dataclasses.replace(real, num_hidden_layers=1, vocab_size=WARM_UP_VOCAB,
                                                      tie_word_embeddings=False)
    assert runner.layout.max_model_len == 256 and runner.layout.max_num_seqs == 8 and not runner.kv_caches


def test_the_steps_are_a_mixed_step_and_a_single_decode_over_full_width_tables(monkeypatch):
    runner = one_layer_runner(EngineConfig(model="tiny", **CONFIG), torch.device("cpu"))
    steps, widths = [], []
    real_run = runner.run

    def recording_run(batch):
        decodes = [s for s in batch if s.num_new_tokens == 1]
        steps.append((sorted(s.num_new_tokens for s in batch if s.num_new_tokens > 1), len(decodes)))
        widths.extend(len(s.seq.block_table) for s in decodes)
        return real_run(batch)

    monkeypatch.setattr(runner, "run", recording_run)
    run_small_steps(runner)
    assert steps == [([kernel_warm_up.WARM_UP_PREFILL_TOKENS], 7), ([], 1)]
    assert set(widths) == {runner.layout.max_blocks_per_seq}
    assert not runner.kv_caches


def test_the_thread_runs_the_steps_and_reports_a_failure_instead_of_raising(caplog):
    warm_up = KernelWarmUp.start(EngineConfig(model="tiny", **CONFIG), torch.device("cpu"))
    warm_up.wait()
    assert warm_up.error is None and not warm_up.thread.is_alive()
    broken = KernelWarmUp.start(EngineConfig(model="/no/such/model", **CONFIG), torch.device("cpu"))
    with caplog.at_level("WARNING"):
        broken.wait()
    assert broken.error and "profiling compiles them instead" in caplog.text


@pytest.mark.parametrize("max_model_len", [2, 17])
def test_a_short_max_model_len_still_gets_a_prefill(max_model_len):
    runner = one_layer_runner(EngineConfig(model="tiny", **{**CONFIG, "max_model_len": max_model_len}),
                              torch.device("cpu"))
    run_small_steps(runner)
    assert not runner.kv_caches


def test_it_runs_beside_the_load_only_from_an_empty_kernel_cache_with_graphs_on():
    graphs, eager = EngineConfig(model="tiny", **CONFIG), EngineConfig(model="tiny", enforce_eager=True, **CONFIG)
    assert pays_beside_load(graphs, 0)
    assert not pays_beside_load(graphs, 18)  # a filled cache loads each kernel in milliseconds
    assert not pays_beside_load(eager, 0)  # its stream would be the only second one, 70 MiB outside the allocator
    assert not pays_beside_load(graphs, None)  # a CPU: no kernel cache, no Triton
