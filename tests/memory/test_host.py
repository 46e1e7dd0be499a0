"""Host memory as a pod sees it, from fixture cgroup and /proc files."""

from pathlib import Path

from service.memory.host import host_memory, process_rss, reset_peak_rss

MEMINFO = "MemTotal:       32000000 kB\nMemFree:        1000000 kB\nMemAvailable:   20000000 kB\n"


def make(tmp_path: Path, files: dict[str, str]) -> tuple[Path, Path]:
    for name, text in {**files, "proc/meminfo": MEMINFO}.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path / "cgroup", tmp_path / "proc"


def test_cgroup_v2_limit(tmp_path):
    cgroup, proc = make(tmp_path, {"cgroup/memory.max": "8589934592\n", "cgroup/memory.current": "1073741824\n"})
    m = host_memory(cgroup, proc)
    assert (m.total_bytes, m.free_bytes, m.source) == (8 << 30, 7 << 30, "cgroup-v2")


def test_cgroup_v2_unlimited_falls_back_to_meminfo(tmp_path):
    cgroup, proc = make(tmp_path, {"cgroup/memory.max": "max\n", "cgroup/memory.current": "1073741824\n"})
    m = host_memory(cgroup, proc)
    assert (m.total_bytes, m.free_bytes, m.source) == (32000000 * 1024, 20000000 * 1024, "meminfo")


def test_cgroup_v1_limit(tmp_path):
    cgroup, proc = make(tmp_path, {"cgroup/memory/memory.limit_in_bytes": "4294967296\n",
                                   "cgroup/memory/memory.usage_in_bytes": "1073741824\n"})
    m = host_memory(cgroup, proc)
    assert (m.total_bytes, m.free_bytes, m.source) == (4 << 30, 3 << 30, "cgroup-v1")


def test_cgroup_v1_unlimited_is_a_huge_number(tmp_path):
    cgroup, proc = make(tmp_path, {"cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n",
                                   "cgroup/memory/memory.usage_in_bytes": "1073741824\n"})
    assert host_memory(cgroup, proc).source == "meminfo"


def test_usage_above_limit_means_nothing_free(tmp_path):
    cgroup, proc = make(tmp_path, {"cgroup/memory.max": "1000\n", "cgroup/memory.current": "2000\n"})
    assert host_memory(cgroup, proc).free_bytes == 0


def test_this_machine_and_this_process():
    m = host_memory()
    assert 0 < m.free_bytes <= m.total_bytes
    reset_peak_rss()
    rss, peak = process_rss()
    assert 0 < rss <= peak
