"""The controller's work queue, warning memory and failpoint, without an apiserver."""

import os
import subprocess
import sys
import threading
import time

from controller.memo import RecentSet
from controller.workqueue import WorkQueue
from tests.k8s.kube import REPO


def test_burst_for_one_key_while_processing_becomes_one_more():
    q = WorkQueue()
    q.add("a")
    assert q.get(0) == "a"
    for _ in range(100):  # events while "a" is being reconciled
        q.add("a")
    assert q.get(0) is None  # not handed to a second worker meanwhile
    q.done("a")
    assert q.get(0) == "a"
    q.done("a")
    assert q.get(0) is None


def test_waiting_keys_are_not_queued_twice_and_keep_order():
    q = WorkQueue()
    for key in ("a", "b", "a", "c", "b"):
        q.add(key)
    assert len(q) == 3
    assert [q.get(0) for _ in range(3)] == ["a", "b", "c"]


def test_close_wakes_a_waiting_worker():
    q = WorkQueue()
    got = []
    worker = threading.Thread(target=lambda: got.append(q.get()))
    worker.start()
    q.close()
    worker.join(5)
    assert got == [None]


def test_warnings_remembered_are_bounded():
    seen = RecentSet(3)
    assert [seen.add(k) for k in "abca"] == [True, True, True, False]
    seen.add("d")  # forgets b, the least recently seen
    assert len(seen) == 3 and seen.add("b") and not seen.add("a")


def test_failpoint_exits_only_when_armed():
    code = "from controller import faults; faults.point(faults.BEFORE_WRITE); print('alive')"
    def run(env: dict) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                              env={**os.environ, **env}, timeout=60)
    assert run({}).stdout.strip() == "alive"
    armed = run({"KVMEMO_FAILPOINT": "controller-before-write"})
    assert armed.returncode == 3 and "alive" not in armed.stdout


def test_worker_survives_a_conflict_whose_reread_fails():
    """A 409, then the apiserver gone: counted as an error, and the worker thread lives on."""
    from kubernetes.client.rest import ApiException
    from prometheus_client import REGISTRY

    from controller.loop import Reconciler
    from controller.reconcile import Settings
    from tests.k8s.reports import configmap, report

    class Core:
        def patch_namespaced_config_map(self, *args, **kwargs):
            raise ApiException(status=409)

        def read_namespaced_config_map(self, *args, **kwargs):
            raise OSError("connection refused")

    errors = lambda: REGISTRY.get_sample_value("kvmemo_controller_reconcile_total", {"result": "error"})  # noqa: E731
    before = errors()
    reconciler = Reconciler(Core(), Settings(), "test", lambda: True)
    stop = threading.Event()
    worker = threading.Thread(target=reconciler.run, args=(stop,), daemon=True)
    worker.start()
    reconciler.enqueue(configmap({"kvmemo.io/report.abcdef012345": report()}))
    deadline = time.monotonic() + 10
    while errors() == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert errors() == before + 1 and worker.is_alive()
    stop.set()
    worker.join(5)


def test_rejected_values_are_parsed_once_and_remembered_bounded():
    import pytest

    from controller.memo import KNOWN, RejectionMemo
    from service.contract.records import Rejected

    memo, calls = RejectionMemo(limit=2), []

    def reject(reason):
        def parse():
            calls.append(reason)
            raise Rejected(reason, "bad")
        return parse

    with pytest.raises(Rejected) as first:
        memo.check(("ns", "cm"), "k", "junk", reject("schema"))
    assert first.value.first_seen
    assert memo.check(("ns", "cm"), "k", "junk", reject("schema")) is KNOWN and calls == ["schema"]
    # A report dated ahead may become good as time passes: parsed again, but not warned about again.
    for expected_first in (True, False):
        with pytest.raises(Rejected) as ahead:
            memo.check(("ns", "cm"), "k", "ahead", reject("clock"))
        assert ahead.value.first_seen is expected_first
    with pytest.raises(Rejected):
        memo.check(("ns", "cm"), "other", "junk", reject("schema"))
    assert len(memo) == 2
