"""The controller's /healthz (controller/liveness.py) through its real HTTP server: 200 while every loop goes
round, 503 naming the loop once one stops beating or its thread dies. The clock is the test's own."""

import threading
import urllib.error
import urllib.request

from controller import http
from controller.liveness import Heartbeats
from tests.ports import free_port


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_healthz_fails_when_a_loop_stops_going_round():
    now = [1000.0]
    done = threading.Event()
    worker = threading.Thread(target=done.wait)
    worker.start()
    beats = Heartbeats({"watch": 180.0, "reconcile": 300.0}, clock=lambda: now[0], threads={"reconcile": worker})
    port = free_port()
    server = http.serve("127.0.0.1", port, lambda: (True, "standby"), beats.health)
    try:
        watch, reconcile = beats.beater("watch"), beats.beater("reconcile")
        assert get(port, "/healthz") == (200, "ok\n")
        now[0] += 170
        watch()
        reconcile()
        now[0] += 170  # both beat 170 s ago: within their bounds
        assert get(port, "/healthz")[0] == 200
        now[0] += 20
        status, body = get(port, "/healthz")
        assert status == 503 and "the watch loop has not gone round for 190 s (bound 180 s)" in body, body
        assert "reconcile" not in body
        watch()
        done.set()
        worker.join()
        status, body = get(port, "/healthz")
        assert status == 503 and body.strip() == "the reconcile thread has stopped", body
        assert get(port, "/readyz") == (200, "standby\n")  # readiness is its own question
    finally:
        done.set()
        server.shutdown()
