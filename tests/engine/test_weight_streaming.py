"""Weights streamed from safetensors files into device tensors (service/model/safetensors_stream.py) equal the
safetensors library's, whatever the chunking, the fused parameters, a dtype to convert or tied embeddings;
random preset weights made on the GPU equal the CPU's bit for bit."""

import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from service.errors import ModelLoadError
from service.model import loader, safetensors_stream
from service.model.config import read_hf_config
from tests.hf_models import save_hf_model

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module", autouse=True)
def release_device_memory():
    """The GPU tests after these measure memory in this process: leave them nothing cached."""
    yield
    if torch.cuda.is_available():
        import gc

        gc.collect()
        torch.cuda.empty_cache()


@pytest.fixture(scope="module", params=["llama", "qwen3"])
def model_dir(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    save_hf_model(request.param, path)
    return path


def reference_state(path, dtype):
    cfg, _ = read_hf_config(path)
    files = loader._weight_files(path)
    return loader._state_dict_from_hf(loader._build(cfg), loader._read_hf_tensors(files, "cpu"), dtype, "cpu")


def streamed_state(path, dtype, device):
    cfg, _ = read_hf_config(path)
    seconds = {}
    state, nbytes = loader._stream_hf_state_dict(loader._build(cfg), loader._weight_files(path), dtype,
                                                 torch.device(device), seconds)
    assert set(seconds) == {"read", "copy"} and nbytes > 0
    return state


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k].cpu(), b[k]), k


@pytest.mark.parametrize("chunk_bytes, readers", [(1000, 3), (1 << 20, 1)])  # pieces split across chunks; whole
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])  # the file's dtype; a conversion
def test_streamed_weights_equal_the_safetensors_librarys(model_dir, dtype, chunk_bytes, readers, monkeypatch):
    monkeypatch.setattr(safetensors_stream, "CHUNK_BYTES", chunk_bytes)
    monkeypatch.setattr(safetensors_stream, "READERS", readers)
    assert_same(streamed_state(model_dir, dtype, "cpu"), reference_state(model_dir, dtype))


def test_tensors_of_mixed_dtypes_in_one_file_land_in_the_model_dtype(model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(safetensors_stream, "CHUNK_BYTES", 4096)
    for f in model_dir.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    weights = tmp_path / "model.safetensors"
    tensors = load_file(weights)
    tensors = {k: v.to(torch.bfloat16) if i % 2 else v for i, (k, v) in enumerate(sorted(tensors.items()))}
    save_file(tensors, weights)
    assert_same(streamed_state(tmp_path, torch.float32, "cpu"), reference_state(tmp_path, torch.float32))


def with_length(header: bytes) -> bytes:
    return struct.pack("<Q", len(header)) + header


@pytest.mark.parametrize("header, fragment", [
    (b"", "shorter than its 8-byte header length"),
    (struct.pack("<Q", 10) + b"{not json}", "cannot read safetensors file"),
    (struct.pack("<Q", 1 << 40), "header length 1099511627776 exceeds"),
    (with_length(b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 64]}}') + bytes(64),
     "data_offsets [0, 64] do not hold (4,) F32"),
    (with_length(b'{"w": {"dtype": "C64", "shape": [4], "data_offsets": [0, 32]}}') + bytes(32),
     "dtype 'C64', which kvmemo does not read"),
])
def test_a_bad_header_names_the_file_and_the_problem(tmp_path, header, fragment):
    path = tmp_path / "model.safetensors"
    path.write_bytes(header)
    with pytest.raises(ModelLoadError, match="model.safetensors: cannot read safetensors file") as e:
        safetensors_stream.read_header(path)
    assert fragment in str(e.value)


def test_a_file_shorter_than_its_header_says_fails_clearly(model_dir, tmp_path):
    for f in model_dir.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ModelLoadError, match="inside the file's"):
        streamed_state(tmp_path, torch.float32, "cpu")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_streamed_weights_on_the_gpu_equal_the_safetensors_librarys(model_dir, dtype, monkeypatch):
    monkeypatch.setattr(safetensors_stream, "CHUNK_BYTES", 4096)
    assert_same(streamed_state(model_dir, dtype, "cuda"), reference_state(model_dir, dtype))


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("numel, start", [(1, 0), (4097, 0), (3 << 20, (1 << 31) - 5)])
def test_random_weights_from_the_kernel_equal_the_cpu_ones_bit_for_bit(dtype, numel, start):
    from service.kernels.random_weights import fill_seeded_uniform_

    salt = loader.salt_of(7, 3)
    out = fill_seeded_uniform_(torch.full((numel,), float("nan"), dtype=dtype, device="cuda"), salt,
                               loader.RANDOM_SCALE, start)
    expected = loader.seeded_uniform((numel,), 7, 3, "cpu", first=start)
    assert torch.equal(out.cpu(), (expected * loader.RANDOM_SCALE).to(dtype))


@pytest.mark.gpu
@gpu
def test_a_preset_loaded_on_the_gpu_has_the_cpu_weights():
    cpu = loader.load_model("tiny-qwen3", torch.float32, torch.device("cpu"), seed=3).model.state_dict()
    cuda = loader.load_model("tiny-qwen3", torch.float32, torch.device("cuda"), seed=3).model.state_dict()
    assert_same(cuda, cpu)
