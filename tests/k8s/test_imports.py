"""The controller ships in a small image of its own: importing it must not pull in torch or the engine.
Each check runs in a fresh interpreter, so what other tests imported cannot hide an import."""

import json
import subprocess
import sys

import pytest

from tests.k8s.kube import REPO

HEAVY = ("torch", "service.engine", "service.memory", "service.server", "service.model")


def modules_after(statement: str) -> set[str]:
    code = f"import sys, json; {statement}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout.splitlines()[-1]))


def test_controller_main_is_torch_free():
    loaded = modules_after("import controller.main, controller.loop, controller.watch, controller.leader, "
                           "controller.http")
    assert not [m for m in loaded if m.split(".")[0] == "torch" or m.startswith(HEAVY[1:])]


@pytest.mark.parametrize("module", ["service.contract.keys", "service.contract.records", "service.contract.merge",
                                    "service.contract.client", "controller.reconcile"])
def test_contract_needs_neither_torch_nor_prometheus(module):
    loaded = modules_after(f"import {module}")
    assert not [m for m in loaded if m.split(".")[0] in ("torch", "prometheus_client") or m.startswith(HEAVY[1:])]
