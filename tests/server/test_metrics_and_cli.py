"""Prometheus metrics on their own port, `kvmemo generate`, and the pieces testable without a server."""

import argparse
import os
import re
import socket
import subprocess
import urllib.request

import grpc
import pytest

from service.engine.engine import EngineStats
from service.commands.engine_args import add_engine_arguments, engine_config_from_args
from service.errors import ConfigError
from service.server.state import Limits, RequestError, ServerState
from tests.ports import free_port
from tests.server.conftest import kvmemo_command

SERVING = ["kvmemo_requests_running", "kvmemo_requests_waiting", "kvmemo_time_to_first_token_seconds_count",
           "kvmemo_inter_token_latency_seconds_count", "kvmemo_e2e_request_latency_seconds_count",
           "kvmemo_prompt_tokens_total", "kvmemo_generation_tokens_total", "kvmemo_request_success_total",
           "kvmemo_kv_cache_usage_ratio", "kvmemo_kv_cache_blocks", "kvmemo_startup_phase_seconds",
           "kvmemo_kv_cache_memory_bytes"]


def scrape(server) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as r:
        return r.read().decode()


def test_kvmemo_generate_prints_the_text(server):
    done = subprocess.run([*kvmemo_command(), "generate", "Hello", "--server", server.address, "--max-tokens", "5",
                           "--temperature", "0", "--usage"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "5 completion tokens" in done.stderr or "FINISH_REASON_STOP" in done.stderr
    streamed = subprocess.run([*kvmemo_command(), "generate", "Hello", "--server", server.address, "--max-tokens",
                               "5", "--temperature", "0", "--stream"], capture_output=True, text=True, timeout=120)
    assert streamed.returncode == 0 and streamed.stdout == done.stdout
    bad = subprocess.run([*kvmemo_command(), "generate", "Hello", "--server", server.address, "--max-tokens", "0"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "INVALID_ARGUMENT" in bad.stderr and "max_tokens" in bad.stderr


def test_kvmemo_generate_reads_the_prompt_from_stdin_or_a_file(server, tmp_path):
    def generate(prompt: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run([*kvmemo_command(), "generate", prompt, "--server", server.address, "--max-tokens", "8",
                               "--seed", "3"], capture_output=True, timeout=120, **kw)

    (tmp_path / "prompt.txt").write_text("Hello there", encoding="utf-8")
    given, from_stdin = generate("Hello there"), generate("-", input=b"Hello there")
    from_file = generate(f"@{tmp_path / 'prompt.txt'}")
    assert given.returncode == 0, given.stderr
    assert given.stdout == from_stdin.stdout == from_file.stdout  # exact bytes through a pipe, for each source
    # 5 MB is past the shell's argument limit but not a file's; the server then refuses it and says why.
    (tmp_path / "big.txt").write_text("many words " * ((5 << 20) // 11 + 1), encoding="utf-8")
    big = generate(f"@{tmp_path / 'big.txt'}")
    assert big.returncode == 1 and re.search(rb"RESOURCE_EXHAUSTED|INVALID_ARGUMENT", big.stderr), big.stderr[-2000:]


def test_metrics_are_served_with_the_model_name(server):
    subprocess.run([*kvmemo_command(), "generate", "Hi", "--server", server.address, "--max-tokens", "3"],
                   capture_output=True, timeout=120, check=True)
    text = scrape(server)
    for name in SERVING:
        assert f'{name}{{' in text and 'model_name="tiny"' in text, f"{name} missing from /metrics"
    assert 'kvmemo_request_success_total{finished_reason="length",model_name="tiny"}' in text
    assert 'kvmemo_startup_phase_seconds{model_name="tiny",phase="total"}' in text
    for part in ("build_model", "generate"):  # load_weights in its parts (cuda_init too, on CUDA)
        assert f'kvmemo_startup_load_seconds{{model_name="tiny",part="{part}"}}' in text
    assert 'kvmemo_kv_cache_blocks{model_name="tiny",state="free"}' in text


def test_admission_names_each_limit():
    state = ServerState("tiny", None, Limits(max_concurrent_requests=3, max_waiting_requests=1))
    with pytest.raises(RequestError, match="starting"):
        state.admit()
    state.ready = True
    state.last_stats = EngineStats(num_running=2, num_waiting=0, num_free_blocks=1, num_usable_blocks=2,
                                   num_preemptions=0, num_ooms=0)
    state.admit(), state.admit(), state.admit()  # two running, one waiting
    with pytest.raises(RequestError, match="max_concurrent_requests=3") as err:
        state.admit()
    assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    state.release()
    state.last_stats.num_running = 1
    with pytest.raises(RequestError, match="max_waiting_requests=1"):
        state.admit()
    state.draining = True
    with pytest.raises(RequestError, match="shutting down") as err:
        state.admit()
    assert err.value.code == grpc.StatusCode.UNAVAILABLE


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_engine_arguments(parser)
    return parser.parse_args(argv)


def test_engine_flags_fall_back_to_the_environment(monkeypatch):
    monkeypatch.setenv("KVMEMO_MAX_NUM_SEQS", "7")
    monkeypatch.setenv("KVMEMO_ENFORCE_EAGER", "true")
    config = engine_config_from_args(parse(["--max-model-len", "128"]))
    assert (config.max_num_seqs, config.enforce_eager, config.max_model_len, config.model) == (7, True, 128, "smollm2-135m-instruct")
    assert engine_config_from_args(parse(["--max-num-seqs", "3"])).max_num_seqs == 3  # the flag wins
    monkeypatch.setenv("KVMEMO_BLOCK_SIZE", "sixteen")
    with pytest.raises(ConfigError, match="KVMEMO_BLOCK_SIZE='sixteen'"):
        engine_config_from_args(parse([]))


def test_a_metrics_port_in_use_ends_the_boot_with_a_clear_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = subprocess.run([*kvmemo_command(), "serve", "--model", "tiny", "--host", "127.0.0.1",
                                 "--port", str(free_port()), "--metrics-port", str(port)],
                                capture_output=True, text=True, timeout=300,
                                env={**os.environ, "XDG_CACHE_HOME": str(tmp_path)})
    assert result.returncode == 1, result.stderr[-3000:]
    assert f"cannot serve metrics on 127.0.0.1:{port}" in result.stderr and "Traceback" not in result.stderr
