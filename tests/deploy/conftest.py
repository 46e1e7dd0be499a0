"""Fixtures for the deploy bundle's tests: the tools, installed on first use (tests/tools.py)."""

import sys

import pytest

from tests import tools


def _tool(get):
    try:
        return str(get())
    except tools.ToolError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="session")
def helm():
    return _tool(tools.helm)


@pytest.fixture(scope="session")
def promtool():
    return _tool(tools.promtool)


@pytest.fixture(scope="session")
def prometheus_bin():
    return _tool(tools.prometheus)


@pytest.fixture(scope="session")
def kubectl():
    return _tool(tools.kubectl)


@pytest.fixture(scope="session")
def control_plane():
    """A control plane of its own (tests/envtest), not tests/k8s's: the chart installs cluster-scoped
    objects (the admission policy, CRD-gated monitors) that the Kubernetes tests install their own way."""
    import tests.envtest as envtest

    try:
        plane = envtest.start(log=sys.stderr)
    except (envtest.BuildError, envtest.ControlPlaneError) as exc:
        pytest.fail(f"the deploy tests need etcd and kube-apiserver from tests/envtest, and {exc}", pytrace=False)
    yield plane
    envtest.remove(plane)
