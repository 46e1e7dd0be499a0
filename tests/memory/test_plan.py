"""The suggestion formulas, the plan record and the file plan store."""

import json
import os

import pytest

from service.memory.memory_profile import GiB, Components, KVCap, MemoryProfile, log_line, requested_bytes, suggest
from service.plans.file import FilePlans


def gib(x: float) -> int:
    return round(x * GiB)


def test_worked_example_of_vllm_pr_21489():
    # free 177.66 of 178.36 GiB, utilization 0.9, weights 8.58, activation 9.96, non-torch 0.07, graphs 0.65 GiB
    components = Components(weights=gib(8.58), activation_peak=gib(9.96), non_torch=gib(0.07), cudagraph=gib(0.65))
    s = suggest(total=gib(178.36), free_at_start=gib(177.66), utilization=0.9, components=components, safety=0)
    assert components.non_kv == gib(8.58) + gib(9.96) + gib(0.07) + gib(0.65)
    assert s.fit_requested_bytes == requested_bytes(0.9, gib(178.36)) - components.non_kv
    assert s.fit_requested_bytes / GiB == pytest.approx(160.524 - 19.26, abs=1e-6)
    assert s.full_bytes / GiB == pytest.approx(177.66 - 19.26, abs=1e-6)
    with_safety = suggest(gib(178.36), gib(177.66), 0.9, components, safety=gib(0.25))
    assert s.full_bytes - with_safety.full_bytes == gib(0.25)
    assert s.fit_requested_bytes - with_safety.fit_requested_bytes == gib(0.25)


def test_requested_bytes_rounds_up():
    assert requested_bytes(0.9, 10) == 9
    assert requested_bytes(0.5, 3) == 2


def record(fp="ab" * 32, free=gib(70), **overrides) -> MemoryProfile:
    components = Components(gib(16), gib(2), gib(0.5), gib(0.7))
    fields = dict(fingerprint=fp, device="NVIDIA H100 80GB HBM3", total_bytes=gib(79.1), free_at_start_bytes=free,
                  gpu_memory_utilization=0.9, requested_bytes=requested_bytes(0.9, gib(79.1)), components=components,
                  safety_bytes=gib(0.25), suggestions=suggest(gib(79.1), free, 0.9, components, gib(0.25)), seconds=4.2)
    return MemoryProfile(**{**fields, **overrides})


def test_log_line_gives_both_flags_ready_to_paste():
    r = record()
    line = log_line(r, r.suggestions.full_bytes)
    assert f"--kv-cache-memory-bytes={r.suggestions.fit_requested_bytes}" in line
    assert f"--kv-cache-memory-bytes={r.suggestions.full_bytes}" in line
    for word in ("weights 16.00 GiB", "peak activation 2.00 GiB", "non-torch 0.50 GiB", "CUDA graphs 0.70 GiB"):
        assert word in line


def test_log_line_never_advises_more_than_the_cap_and_says_it_is_capped():
    r = record()
    s = r.suggestions
    below_both = KVCap(s.fit_requested_bytes // 2, 4, 256)
    line = log_line(r, below_both.bytes, below_both)
    assert f"--kv-cache-memory-bytes={below_both.bytes} (capped: max_num_seqs=4 sequences of max_model_len=256" in line
    assert line.count("--kv-cache-memory-bytes=") == 1
    r = record(free=gib(79))  # an emptier device: the whole of it is more than the requested utilization
    s = r.suggestions
    assert s.fit_requested_bytes < s.full_bytes
    between = KVCap((s.fit_requested_bytes + s.full_bytes) // 2, 64, 8192)
    line = log_line(r, between.bytes, between)
    assert f"--kv-cache-memory-bytes={s.fit_requested_bytes} to fit the requested utilization" in line
    assert (f"--kv-cache-memory-bytes={between.bytes} to use the whole device (capped: max_num_seqs=64 "
            f"sequences of max_model_len=8192 can use no more; uncapped {s.full_bytes})") in line
    assert log_line(r, 1, KVCap(s.full_bytes, 1, 1)) == log_line(r, 1)  # not capped: the line as it was


def test_record_round_trips_and_rejects_foreign_json():
    r = record()
    assert MemoryProfile.from_json(json.loads(json.dumps(r.to_json()))) == r
    for bad in ({}, {"schema": 99}, {**r.to_json(), "components": {"weights": 1}},
                {**r.to_json(), "total_bytes": -1}, [1, 2]):
        with pytest.raises(ValueError):
            MemoryProfile.from_json(bad)


def test_store_writes_atomically_and_reads_back(tmp_path):
    store = FilePlans(tmp_path / "plans")
    r = record()
    path = store.save(r)
    assert path == tmp_path / "plans" / f"{r.fingerprint[:12]}.json"
    assert store.load(r.fingerprint) == r
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind
    r.stale = True
    store.save(r)
    assert store.load(r.fingerprint).stale


def test_store_ignores_corrupted_and_foreign_files(tmp_path, caplog):
    store = FilePlans(tmp_path)
    fp = "cd" * 32
    store.path(fp).write_text("{not json")
    assert store.load(fp) is None
    assert "ignoring plan file" in caplog.text
    # A record of another fingerprint that shares the 12-character prefix is not ours.
    other = record(fp="cd" * 6 + "ef" * 26)
    store.path(fp).write_text(json.dumps(other.to_json()))
    assert store.load(fp) is None
    assert "belongs to fingerprint" in caplog.text
    assert store.load("ee" * 32) is None  # missing: quietly None


def test_store_default_location_is_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert FilePlans().directory == tmp_path / "kvmemo" / "plans"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert str(FilePlans().directory) == os.path.expanduser("~/.cache/kvmemo/plans")


def test_fit_requested_never_counts_memory_that_was_not_free():
    """Other processes hold 40% of the device: 90% of the total is not there to take."""
    components = Components(weights=gib(8), activation_peak=gib(2), non_torch=0, cudagraph=0)
    s = suggest(total=gib(80), free_at_start=gib(48), utilization=0.9, components=components, safety=0)
    assert s.fit_requested_bytes == s.full_bytes == gib(48) - gib(10)


def test_the_cpu_kv_cache_defaults_to_a_ceiling_and_the_advice_says_why():
    """SmolLM2's 8,192-token context times 64 sequences would be 24 GiB of zeroed host memory."""
    import torch

    from service.engine.kv_layout import KVLayout
    from service.memory.planner import CPU_KV_CACHE_BYTES, kv_cap, kv_ceiling

    layout = KVLayout(block_size=16, bytes_per_block=16 * 46080, max_blocks_per_seq=512, max_model_len=8192,
                      max_num_seqs=64, num_layers=30, num_kv_heads=3, head_dim=64, dtype=torch.float32)
    assert layout.useful_bytes > CPU_KV_CACHE_BYTES
    assert kv_ceiling(layout, "cpu") == (CPU_KV_CACHE_BYTES, "the CPU default; set --kv-cache-memory-bytes for more")
    assert kv_ceiling(layout, "cuda")[0] == layout.useful_bytes
    r = record()
    line = log_line(r, CPU_KV_CACHE_BYTES, kv_cap(layout, "cpu"))
    assert f"--kv-cache-memory-bytes={CPU_KV_CACHE_BYTES} (capped: the CPU default" in line


def test_a_boot_allocates_the_capped_size_and_its_skip_line_says_so():
    """A plan or a profile is capped at the CPU default; the flag only at what the sequences can use."""
    import torch

    from service.engine.kv_layout import KVLayout
    from service.memory.planner import CPU_KV_CACHE_BYTES, KVDecision, kv_allocation, skipped_profiling_line

    layout = KVLayout(block_size=16, bytes_per_block=16 * 46080, max_blocks_per_seq=512, max_model_len=8192,
                      max_num_seqs=64, num_layers=30, num_kv_heads=3, head_dim=64, dtype=torch.float32)
    plan = KVDecision(7 << 30, "configmap", None, "stored configmap plan for fingerprint 16cd16460dfc")
    assert kv_allocation(plan, layout, "cuda") == (7 << 30, None)
    kv, why = kv_allocation(plan, layout, "cpu")
    assert (kv, why) == (CPU_KV_CACHE_BYTES, "the CPU default; set --kv-cache-memory-bytes for more")
    assert skipped_profiling_line(plan, kv, why) == (
        "skipped profiling: KV cache of 4.00 GiB from stored configmap plan for fingerprint 16cd16460dfc; the "
        "configmap plan holds 7.00 GiB, capped: the CPU default; set --kv-cache-memory-bytes for more")
    flag = KVDecision(30 << 30, "flag", None, "set by --kv-cache-memory-bytes")
    kv, why = kv_allocation(flag, layout, "cpu")
    assert kv == layout.useful_bytes > CPU_KV_CACHE_BYTES
    assert why == "max_num_seqs=64 sequences of max_model_len=8192 can use no more"
    assert kv_allocation(KVDecision(5 << 30, "flag", None, ""), layout, "cpu") == (5 << 30, None)
