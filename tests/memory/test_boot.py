"""The whole memory flow on CPU: profile, remember, skip on the next boot, and every reason to profile again."""

import json
import logging
import re
import subprocess
import sys

import pytest
import torch

from service.boot import build_engine
from service.config import EngineConfig
from service.engine.sampling_params import SamplingParams
from service.errors import ConfigError
from service.memory.memory_profile import format_bytes
from service.plans.file import FilePlans
from service.server.state import Limits, ServerState

SMALL = dict(model="tiny", device="cpu", max_num_seqs=4, max_model_len=256, max_num_batched_tokens=128)


def boot(tmp_path, caplog, **overrides):
    caplog.clear()
    with caplog.at_level(logging.INFO):
        _, report = build_engine(EngineConfig(plan_dir=str(tmp_path), **{**SMALL, **overrides}))
    return report


def test_second_boot_skips_profiling_and_says_so(tmp_path, caplog):
    cold = boot(tmp_path, caplog)
    assert cold.plan_source == "profile" and "profiling memory: no plan file" in caplog.text
    assert cold.record.components.weights > 0 and cold.record.components.activation_peak > 0
    assert "--kv-cache-memory-bytes=" in caplog.text  # the log line a person can act on
    warm = boot(tmp_path, caplog)
    assert warm.plan_source == "file" and "skipped profiling" in caplog.text
    # The line names what this boot allocates (4 sequences of 256 tokens), then the larger size the plan holds.
    allocated = format_bytes(warm.kv_cache_memory_bytes)
    assert f"skipped profiling: KV cache of {allocated} from stored file plan" in caplog.text
    assert "plan holds" in caplog.text and "capped: max_num_seqs=4 sequences of max_model_len=256" in caplog.text
    assert "KV cache capped at" not in caplog.text  # said once, on the skip line
    assert warm.fingerprint == cold.fingerprint
    assert warm.phase_seconds["profile"] < 0.05 < cold.phase_seconds["profile"]
    assert warm.kv_cache_memory_bytes == cold.kv_cache_memory_bytes


def test_memory_relevant_settings_change_the_fingerprint_and_others_do_not(tmp_path, caplog):
    base = boot(tmp_path, caplog)
    assert boot(tmp_path, caplog, gpu_memory_utilization=0.5).fingerprint == base.fingerprint
    assert boot(tmp_path, caplog, kv_cache_memory_bytes=8 << 20).fingerprint == base.fingerprint
    changed = boot(tmp_path, caplog, max_num_batched_tokens=64)
    assert changed.fingerprint != base.fingerprint and changed.plan_source == "profile"


def test_the_flag_skips_profiling_entirely(tmp_path, caplog):
    report = boot(tmp_path, caplog, kv_cache_memory_bytes=8 << 20)
    assert report.plan_source == "flag" and report.record is None
    assert not list(tmp_path.iterdir())  # nothing profiled, nothing stored


def test_failed_free_memory_gate_profiles_again(tmp_path, caplog):
    cold = boot(tmp_path, caplog)
    store = FilePlans(tmp_path)
    cold.record.free_at_start_bytes += 1 << 50  # as if measured on a far emptier machine
    store.save(cold.record)
    again = boot(tmp_path, caplog)
    assert again.plan_source == "profile" and "free at start" in caplog.text


def test_corrupted_plan_file_profiles_again(tmp_path, caplog):
    cold = boot(tmp_path, caplog)
    FilePlans(tmp_path).path(cold.fingerprint).write_text("{")
    assert boot(tmp_path, caplog).plan_source == "profile"
    assert "ignoring plan file" in caplog.text


def test_stored_plan_below_one_sequence_profiles_again(tmp_path, caplog):
    cold = boot(tmp_path, caplog)
    cold.record.suggestions.fit_requested_bytes = 1000
    FilePlans(tmp_path).save(cold.record)
    assert boot(tmp_path, caplog).plan_source == "profile"
    assert "fails its checks: 1000 bytes is below one max_model_len=256 sequence" in caplog.text


def test_an_oom_marks_the_plan_stale_so_the_next_boot_profiles(tmp_path, caplog):
    cold = boot(tmp_path, caplog)
    FilePlans(tmp_path).record_oom(cold)
    stored = FilePlans(tmp_path).load(cold.fingerprint)
    assert stored.stale and stored.ooms == 1
    assert boot(tmp_path, caplog).plan_source == "profile" and "marked stale" in caplog.text


@pytest.mark.parametrize("value, message", [
    (5, "5 bytes is below one max_model_len=256 sequence's worth of 16 blocks plus the reserved one"),
    (1 << 60, "exceeds the"),
])
def test_flag_outside_its_limits_names_the_numbers(tmp_path, caplog, value, message):
    with pytest.raises(ConfigError, match=message):
        boot(tmp_path, caplog, kv_cache_memory_bytes=value)


def kvmemo(*args, **kw):
    return subprocess.run([sys.executable, "-m", "service.cli", *args], capture_output=True, text=True, timeout=300,
                          **kw)


@pytest.mark.parametrize("value, fragment", [
    ("abc", "invalid int value: 'abc'"),
    ("-5", "kv_cache_memory_bytes must be a positive integer, got -5"),
    ("5", "5 bytes is below one max_model_len=256"),
])
def test_bad_flag_exits_2_with_a_clear_error(tmp_path, value, fragment):
    result = kvmemo("run", "hi", "--model", "tiny", "--max-model-len", "256", "--plan-dir", str(tmp_path),
                    "--kv-cache-memory-bytes", value)
    assert result.returncode == 2 and fragment in result.stderr, result.stderr


def test_kvmemo_profile_json_on_this_machine(tmp_path):
    result = kvmemo("profile", "--json", "--save", "--model", "tiny", "--max-model-len", "256", "--max-num-seqs", "4",
                    "--plan-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    for key in ("fingerprint", "device", "total_bytes", "free_at_start_bytes", "requested_bytes", "components",
                "safety_bytes", "suggestions", "seconds"):
        assert key in record
    assert set(record["components"]) == {"weights", "activation_peak", "non_torch", "cudagraph"}
    c, s = record["components"], record["suggestions"]
    assert c["weights"] > 0 and c["activation_peak"] > 0 and c["cudagraph"] == 0 and record["device"] == "cpu"
    non_kv = sum(c.values())
    assert s["full_bytes"] == record["free_at_start_bytes"] - non_kv - record["safety_bytes"]
    assert s["fit_requested_bytes"] == min(record["requested_bytes"], record["free_at_start_bytes"]) - non_kv - \
        record["safety_bytes"]
    assert (tmp_path / f"{record['fingerprint'][:12]}.json").exists()  # --save: remembered for the next serve


def test_kvmemo_profile_writes_no_plan_without_save(tmp_path):
    """A look at the numbers must not overwrite the plan a running server booted from."""
    plans = tmp_path / "plans"
    result = kvmemo("profile", "--model", "tiny", "--max-model-len", "256", "--max-num-seqs", "4", "--plan-dir", str(plans))
    assert result.returncode == 0, result.stderr
    assert "--kv-cache-memory-bytes=" in result.stdout and "written" not in result.stderr
    assert not plans.exists() or not any(plans.iterdir())
    assert "without --save nothing is written" in " ".join(kvmemo("profile", "--help").stdout.split())


def test_the_cpu_boot_line_speaks_of_host_memory_and_advises_no_more_than_the_cap(tmp_path, caplog):
    from service.memory.host import host_memory
    from service.memory.memory_profile import HOST_TOTALS

    report = boot(tmp_path, caplog)
    line = next(r.getMessage() for r in caplog.records if "--kv-cache-memory-bytes=" in r.getMessage())
    assert line.startswith("Free host memory at start:") and HOST_TOTALS[host_memory().source] in line
    assert "of host memory =" in line and "CUDA graphs" not in line and "whole device" not in line
    advised = [int(n) for n in re.findall(r"--kv-cache-memory-bytes=(\d+)", line)]
    # SMALL's 4 sequences of 256 tokens fill far less than the host's free memory: the advice says so.
    assert advised == [report.kv_cache_memory_bytes]  # the cap, which is what was allocated
    assert "capped: max_num_seqs=4 sequences of max_model_len=256 can use no more" in line


def test_a_cpu_warm_up_runs_one_short_step(tmp_path, monkeypatch):
    """A CPU has no caching allocator to bring to its serving peak: the warm-up is one short prefill beside one
    decode, not the token budget's mixed step again (which the profile ran already, seconds of CPU)."""
    import service.boot

    steps = []
    real_warm_up = service.boot.warm_up

    def recorded_warm_up(runner, config):
        real_run = runner.dummy_run
        monkeypatch.setattr(runner, "dummy_run", lambda lens, decodes=0: steps.append((list(lens), decodes)) or
                            real_run(lens, decodes))
        return real_warm_up(runner, config)

    monkeypatch.setattr(service.boot, "warm_up", recorded_warm_up)
    build_engine(EngineConfig(plan_dir=str(tmp_path), **SMALL))
    assert steps == [([service.boot.CPU_WARM_UP_TOKENS], 1)]


def test_a_warm_up_out_of_memory_serves_anyway_and_the_next_profile_doubles_the_margin(tmp_path, caplog, monkeypatch):
    import service.boot

    def out_of_memory(lens, decodes=0):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 376.00 MiB.")

    real_warm_up = service.boot.warm_up

    def warm_up_out_of_memory(runner, config):  # profiling's dummy batches run; the warm-up's runs out
        monkeypatch.setattr(runner, "dummy_run", out_of_memory)
        return real_warm_up(runner, config)

    monkeypatch.setattr(service.boot, "warm_up", warm_up_out_of_memory)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        engine, report = build_engine(EngineConfig(plan_dir=str(tmp_path), **SMALL))
    assert "the warm-up batch ran out of memory" in caplog.text and engine.num_ooms == 1
    stored = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert not stored["stale"], "boot only counts the OOM in the engine; the server records it against the plan"
    monkeypatch.undo()
    config = EngineConfig(plan_dir=str(tmp_path), **SMALL)
    plans = FilePlans(tmp_path)
    state = ServerState("tiny", config, Limits(), on_oom=lambda n: [plans.record_oom(report) for _ in range(n)])  # as serve()
    for _ in range(2):
        state.on_step(engine.stats(), [])
    stored = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert report.plan_stale and stored["stale"] and stored["ooms"] == 1  # recorded once
    engine.add_request("after", [1, 2, 3], SamplingParams(max_tokens=2, temperature=0))
    while engine.has_unfinished():
        engine.step()
    again = boot(tmp_path, caplog)  # the stale plan is profiled again, with twice the margin
    assert again.plan_source == "profile" and "ran out of memory 1 time(s)" in caplog.text
    assert again.record.safety_bytes == 2 * report.record.safety_bytes and again.record.ooms == 1
    assert again.kv_cache_memory_bytes <= report.kv_cache_memory_bytes
