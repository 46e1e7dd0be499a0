"""Long set-up steps say what they do and, while they run, for how long (tests/progress.py)."""

import io
import os
import subprocess
import sys
from pathlib import Path

from tests.progress import run_with_progress

ROOT = Path(__file__).resolve().parents[1]


def test_a_long_command_reports_what_it_runs_and_for_how_long():
    log = io.StringIO()
    code, _ = run_with_progress(["sleep", "0.5"], "building helm v3.22.0", log, interval=0.05)
    lines = log.getvalue().splitlines()
    assert code == 0
    assert lines[0] == "building helm v3.22.0: started"
    assert any(line.startswith("building helm v3.22.0: still running after ") for line in lines[1:-1])
    assert lines[-1].startswith("building helm v3.22.0: done in ")


def test_a_failing_or_overlong_command_says_so_with_its_output():
    log = io.StringIO()
    code, output = run_with_progress(["sh", "-c", "echo no such package >&2; exit 3"], "building x", log)
    assert (code, output.strip()) == (3, "no such package") and log.getvalue().endswith("exit 3 in 0 s\n")
    code, _ = run_with_progress(["sleep", "30"], "building y", io.StringIO(), interval=0.05, timeout=0.2)
    assert code is None


def test_progress_reaches_the_terminal_from_a_session_fixture(tmp_path):
    """pytest captures stderr while fixtures set up; the progress lines must not wait for the test's end."""
    (tmp_path / "test_build.py").write_text(
        "import pytest\n"
        "from tests.progress import run_with_progress\n\n"
        "@pytest.fixture(scope='session')\n"
        "def built():\n"
        "    assert run_with_progress(['sleep', '0.3'], 'building z v1', interval=0.05)[0] == 0\n\n"
        "def test_it(built):\n"
        "    pass\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "tests.progress", "-p", "no:cacheprovider",
                           "test_build.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "building z v1: still running after" in done.stderr, done.stdout + done.stderr
