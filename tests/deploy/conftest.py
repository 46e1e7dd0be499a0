"""Fixtures for the deploy bundle's tests: the tools, installed on first use (tests/tools.py)."""

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
