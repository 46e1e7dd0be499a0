"""Hooks for the whole suite."""

from tests.progress import pytest_configure  # noqa: F401 - progress lines reach the terminal during fixtures
