"""`kvmemo serve` on its default model, SmolLM2-135M-Instruct, answers as a trained chat model does: through
`kvmemo chat`, `kvmemo generate` and a KServe client, over real gRPC."""

import subprocess

import numpy as np
import pytest

from service.model.presets import preset_file
from tests.server.conftest import kvmemo_command, start_server

try:
    preset_file("smollm2-135m-instruct")
except Exception as e:  # noqa: BLE001 - the Quick start installs it; say what is missing otherwise
    pytest.skip(f"the default model is not installed: {e}", allow_module_level=True)


@pytest.fixture(scope="module")
def default_server(tmp_path_factory):
    # The default model, named; a short context keeps the CPU's KV cache small, and a small token budget its
    # profile short.
    server = start_server(tmp_path_factory.mktemp("default-model"), "--model", "smollm2-135m-instruct",
                          "--max-model-len", "512", "--max-num-seqs", "4", "--max-num-batched-tokens", "256")
    yield server
    assert server.stop() == 0, server.log()[-4000:]


def run_cli(server, *args) -> subprocess.CompletedProcess:
    return subprocess.run([*kvmemo_command(), *args, "--server", server.address], capture_output=True, text=True,
                          timeout=300)


def test_kvmemo_chat_knows_the_capital_of_france(default_server):
    done = run_cli(default_server, "chat", "What is the capital of France?", "--temperature", "0")
    assert done.returncode == 0, done.stderr
    assert "Paris" in done.stdout, done.stdout


def test_kvmemo_generate_continues_in_english(default_server):
    done = run_cli(default_server, "generate", "Once upon a time", "--temperature", "0", "--max-tokens", "24")
    assert done.returncode == 0, done.stderr
    words = done.stdout.split()
    assert len(words) >= 10 and all(w.isascii() for w in words), done.stdout


def test_tritonclient_gets_real_text(default_server):
    import tritonclient.grpc as triton

    client = triton.InferenceServerClient(default_server.address)
    text = triton.InferInput("text_input", [1], "BYTES")
    text.set_data_from_numpy(np.array([b"The capital of France is"], dtype=object))
    params = triton.InferInput("sampling_parameters", [1], "BYTES")
    params.set_data_from_numpy(np.array([b'{"max_tokens": 8, "temperature": 0}'], dtype=object))
    result = client.infer("smollm2-135m-instruct", [text, params])
    assert "Paris" in result.as_numpy("text_output")[0].decode()
