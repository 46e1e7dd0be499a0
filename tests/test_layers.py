"""Data flows down the layers (shared/DESIGN.md): kernels <- model <- engine <- memory/boot <- server and CLI.
Every import in service/ and controller/, module level or inside a function, is read with `ast`; none may
reach a layer above its own module's."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Lowest first. A module's layer is that of the longest prefix that names it; it may import its own layer
# and the ones below.
LAYERS = [
    ("base", ["service", "service.errors", "service.config", "service.cli_text",
              "service.metrics", "service.proto", "service.contract"]),  # the contract: torch-free, shared
    ("kernels", ["service.kernels"]),
    ("model", ["service.model", "service.tokenizer"]),
    ("engine", ["service.engine"]),
    ("memory", ["service.memory", "service.publish", "service.plans"]),  # where plans live: the plan file, or the ConfigMap
    ("boot", ["service.boot"]),
    ("server", ["service.server", "controller"]),
    ("commands", ["service.cli", "service.commands"]),  # one module per kvmemo subcommand
]

# Known upward imports, each with the work that removes it; nothing else may join this list.
EXCEPTIONS: set[tuple[str, str]] = set()


def layer_of(module: str) -> int | None:
    best, found = -1, None
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, found = len(prefix), rank
    return found


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    base = ROOT.joinpath(*name.split("."))
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def imported_modules(path: Path, module: str):
    """(line, imported module) for every import of our own code in path."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:  # `from service import metrics` imports the module service.metrics
                yield node.lineno, f"{base}.{alias.name}" if is_module(f"{base}.{alias.name}") else base


def our_modules():
    for top in ("service", "controller"):
        for path in sorted((ROOT / top).rglob("*.py")):
            yield path, module_name(path)


def test_every_module_has_a_layer():
    assert [m for _, m in our_modules() if layer_of(m) is None] == []


def test_no_module_imports_a_layer_above_its_own():
    upward, used_exceptions = [], set()
    for path, module in our_modules():
        own = layer_of(module)
        for line, target in sorted(set(imported_modules(path, module))):
            theirs = layer_of(target)
            if theirs is None or theirs <= own:
                continue  # not our code, or not above
            if (module, target) in EXCEPTIONS:
                used_exceptions.add((module, target))
                continue
            upward.append(f"{path.relative_to(ROOT)}:{line}: {module} ({LAYERS[own][0]}) imports {target} "
                          f"({LAYERS[theirs][0]})")
    assert not upward, "imports that reach a layer above:\n" + "\n".join(upward)
    assert used_exceptions == EXCEPTIONS, f"exceptions no longer needed, remove them: {EXCEPTIONS - used_exceptions}"


def test_the_boot_report_and_the_contract_load_without_torch():
    """Metrics and server code read the boot report, the controller the contract; neither may cost torch."""
    code = ("import sys; import service.memory.report, service.contract, service.plans.store; "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
