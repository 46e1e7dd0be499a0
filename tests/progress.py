"""Long set-up steps (the Go builds of tests/envtest and tests/tools.py) say what they build and, while they
run, how long they have run so far, on the terminal of whoever runs the tests: a silent first build of
kube-apiserver looks hung for its 20-30 minutes.

pytest captures file descriptors 1 and 2 while fixtures set up, which would hold every line until the test
ends; TERMINAL writes with that capture suspended (tests/conftest.py hands it pytest's capture manager)."""

import subprocess
import sys
import tempfile
import time

PROGRESS_INTERVAL_S = 30.0
_capture = None  # pytest's capture manager while a test session runs


def pytest_configure(config):
    global _capture
    _capture = config.pluginmanager.getplugin("capturemanager")


class Terminal:
    """stderr as a person sees it, also from inside a pytest fixture."""

    def write(self, text: str) -> None:
        if _capture is None:
            self._write(text)
        else:
            with _capture.global_and_fixture_disabled():
                self._write(text)

    @staticmethod
    def _write(text: str) -> None:
        sys.__stderr__.write(text)
        sys.__stderr__.flush()

    def flush(self) -> None:
        pass


TERMINAL = Terminal()


def say(log, text: str) -> None:
    log.write(text + "\n")  # one write: one line, even where each write suspends pytest's capture
    log.flush()


def run_with_progress(cmd: list[str], what: str, log=TERMINAL, interval: float = PROGRESS_INTERVAL_S,
                      timeout: float | None = None, **popen) -> tuple[int, str]:
    """Runs cmd, saying `what` as it starts and every `interval` seconds how long it has run. Returns the exit
    code (None past `timeout`, after killing it) and the last 4000 characters of its output."""
    say(log, f"{what}: started")
    started = time.monotonic()
    with tempfile.TemporaryFile(mode="w+", errors="replace") as output:
        proc = subprocess.Popen(cmd, stdout=output, stderr=subprocess.STDOUT, text=True, **popen)
        while True:
            elapsed = time.monotonic() - started
            wait = interval if timeout is None else max(0.0, min(interval, timeout - elapsed))
            try:
                code = proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                elapsed = time.monotonic() - started
                if timeout is not None and elapsed >= timeout:
                    proc.kill()
                    proc.wait()
                    code = None
                    break
                say(log, f"{what}: still running after {elapsed:.0f} s")
        output.seek(0)
        tail = output.read()[-4000:]
    outcome = "done" if code == 0 else f"timed out after {timeout:.0f} s" if code is None else f"exit {code}"
    say(log, f"{what}: {outcome} in {time.monotonic() - started:.0f} s")
    return code, tail
