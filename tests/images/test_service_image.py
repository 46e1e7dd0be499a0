"""The service image runs as the chart runs it: as uid 10001, read-only root filesystem, caches on tmpfs."""

from pathlib import Path

from tests.images.conftest import CHART_MOUNTS
from tests.images.containerd import Bind

PROBE = Path(__file__).with_name("c_extension_probe.py")


def test_help_names_the_commands(containerd, service_ref):
    result = containerd.run(service_ref, "kvmemo", "--help", read_only=True, mounts=CHART_MOUNTS)
    assert result.returncode == 0, result.stderr
    assert "kvmemo serves Llama-family language models" in result.stdout
    assert "controller" in result.stdout


def test_generates_with_the_default_model_on_cpu_from_a_read_only_root(containerd, service_ref):
    result = containerd.run(service_ref, "kvmemo", "run", "--device=cpu", "--max-tokens=8", "--temperature=0",
                            "The capital of France is", read_only=True, mounts=CHART_MOUNTS)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Paris" in result.stdout
    assert "[8 tokens in" in result.stderr


def test_triton_compiles_and_imports_a_c_extension_against_the_images_python_h(containerd, service_ref):
    """Triton builds its launcher with the compiler and Python.h it finds here, into TRITON_CACHE_DIR (the
    ~/.cache emptyDir), the first time a kernel runs on a GPU node (issue 13 item 3)."""
    result = containerd.run(service_ref, "python", "/probe/c_extension_probe.py", read_only=True,
                            mounts=(*CHART_MOUNTS, Bind(PROBE, "/probe/c_extension_probe.py")))
    assert result.returncode == 0, result.stderr[-3000:]
    found = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    assert found["compiler"] == "/usr/bin/gcc"
    assert found["python_h"] == "/usr/include/python3.11/Python.h"
    assert found["module"].startswith("/home/kvmemo/.cache/triton/")
    assert found["answer"] == "42"
