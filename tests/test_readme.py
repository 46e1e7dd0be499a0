"""The README is what users read: its Quick start is the two commands CI runs, and its benchmark tables are
built from the committed results."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def quick_start_commands() -> list[str]:
    section = ROOT.joinpath("README.md").read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_quick_start_is_two_commands_and_ci_runs_the_second():
    commands = quick_start_commands()
    assert len(commands) == 2
    assert commands[1] in ROOT.joinpath(".ci", "run").read_text()
    assert commands[0].endswith("kvmemo serve")


def test_benchmark_tables_match_the_results():
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "report.py"), "--check"], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
