"""docs/limits.md lists every limit a request is held to; its values are the code's, so the two cannot drift."""

import dataclasses
import importlib
import inspect
import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "limits.md"
# Modules whose limit constants (MAX_*, *_EPSILON, the rejection log's) the doc must list, each one.
MODULES = ["service.engine.sampling_params", "service.engine.engine", "service.chat", "service.server.tensors",
           "service.server.triton_llm", "service.server.requests", "service.errors", "service.server.rejections"]
LIMIT_NAME = re.compile(r"^(MAX_\w+|\w+_EPSILON|QUOTE_CHARS|MESSAGE_CHARS|LINES_PER_INTERVAL|INTERVAL_S)$")


def documented() -> dict[str, str]:
    """constant path -> the value cell, from the doc's tables."""
    rows = re.findall(r"^\| `(service\.[\w.]+)` \| ([^|]+) \|", DOC.read_text(), re.M)
    return {path: value.strip() for path, value in rows}


def resolve(path: str):
    module_name, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), name)
    except ModuleNotFoundError:  # a dataclass field's default: module.Class.field
        module_name, _, cls = module_name.rpartition(".")
        owner = getattr(importlib.import_module(module_name), cls)
        return getattr(owner(), name) if dataclasses.is_dataclass(owner) else getattr(owner, name)


@pytest.mark.parametrize("path, value", sorted(documented().items()))
def test_each_documented_value_is_the_code_s(path, value):
    number = re.match(r"[-0-9.e+]+", value).group(0)
    assert resolve(path) == (float(number) if re.search(r"[.e]", number) else int(number)), path


def test_every_limit_constant_is_documented():
    listed = set(documented())
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        defined = re.findall(r"^(\w+) = ", inspect.getsource(module), re.M)  # not the ones it imports
        for name in defined:
            if LIMIT_NAME.match(name) and isinstance(getattr(module, name), (int, float)):
                assert f"{module_name}.{name}" in listed, f"{module_name}.{name} is missing from docs/limits.md"
    for field in dataclasses.fields(importlib.import_module("service.server.state").Limits):
        assert f"service.server.state.Limits.{field.name}" in listed


def test_the_readme_links_the_limits():
    assert "docs/limits.md" in (DOC.parents[1] / "README.md").read_text()
