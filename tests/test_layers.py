"""The package's shape: imports point down the layers only, no import cycles, no private name imported from another
module, and the command line starts without torch (docs/architecture.md, "Layers")."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "tutorlm"

# Lowest first. A module may import from its own layer (without cycles) and from the layers below.
LAYERS = [
    ("base", ["errors", "options", "train_config", "config", "_symbolic", "verify", "metrics", "progress", "run", "recipe_io", "tasks", "serve_config"]),
    ("runtime", ["models", "backends", "cache", "throughput", "tools"]),
    ("methods", ["train", "serve", "fit", "corrections"]),
    ("stages", ["generate", "curate", "evaluate", "report"]),
    ("orchestration", ["pipeline", "generate_plan", "rounds", "serve.calibrate"]),
    ("cli", ["cli", "__main__", "__init__"]),
]


def layer_of(module: str) -> int:
    """The layer of `tutorlm.a.b`: the longest prefix named in LAYERS."""
    name = module.removeprefix("tutorlm.")
    best, level = "", None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > len(best):
                best, level = prefix, index
    if level is None:
        raise AssertionError(f"tutorlm.{name} is in no layer of tests/test_layers.py: add it")
    return level


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports(module: str, path: Path, known: dict[str, Path]) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for each import of the package's own modules."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, None, node.lineno) for alias in node.names if alias.name.startswith("tutorlm")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if not source.startswith("tutorlm"):
                continue
            for alias in node.names:
                full = f"{source}.{alias.name}"
                found.append((full, None, node.lineno) if full in known else (source, alias.name, node.lineno))
    return [(target, name, line) for target, name, line in found if target != module]


def owner(name: str, known: dict[str, Path]) -> str:
    while name not in known:
        name = name.rpartition(".")[0]
    return name


def graph() -> dict[str, set[str]]:
    known = modules()
    edges = {module: set() for module in known}
    for module, path in known.items():
        for target, _, _ in imports(module, path, known):
            edges[module].add(owner(target, known))
    return edges


def test_imports_point_down_the_layers():
    known = modules()
    upward = []
    for module, path in known.items():
        for target, _, line in imports(module, path, known):
            target = owner(target, known)
            if target == "tutorlm" or module == "tutorlm":
                continue  # the package itself holds only __version__
            if layer_of(target) > layer_of(module):
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {module} ({LAYERS[layer_of(module)][0]}) imports "
                              f"{target} ({LAYERS[layer_of(target)][0]})")
    assert not upward, "imports that run up a layer:\n" + "\n".join(upward)


def test_stages_never_import_each_other():
    """A stage reads the files the stage before it wrote (names in run.py); what two stages share lives lower down."""
    known = modules()
    stages = [module for module in known if module != "tutorlm" and LAYERS[layer_of(module)][0] == "stages"]
    crossing = [f"{module} imports {owner(target, known)}" for module in stages
                for target, _, _ in imports(module, known[module], known) if owner(target, known) in stages]
    assert not crossing, crossing


def test_there_is_no_import_cycle():
    edges = graph()
    cycles, index, low, stack, on_stack, counter = [], {}, {}, [], set(), [0]

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in edges[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in list(edges):
        if node not in index:
            visit(node)
    assert not cycles, f"import cycles: {cycles}"


def test_no_private_name_is_imported_from_another_module():
    known = modules()
    private = [f"{path.relative_to(PACKAGE.parent)}:{line}: {name} from {target}"
               for module, path in known.items() for target, name, line in imports(module, path, known)
               if name and name.startswith("_") and not name.startswith("__")]
    assert not private, "private names imported across modules:\n" + "\n".join(private)


@pytest.mark.parametrize("argv", [["--help"], ["tasks", "list"], ["verify", "--gold", "42", "The answer is 42."],
                                  ["run", "--help"], ["serve", "--help"], ["eval", "--help"], ["train", "--help"],
                                  ["doctor", "--help"]])
def test_the_command_line_starts_without_torch(argv):
    """`tutorlm --help`, `tasks list`, `verify` and every command's --help import neither torch nor transformers."""
    code = ("import sys\nfrom tutorlm.cli.main import main\n"
            f"try:\n    status = main({argv!r})\nexcept SystemExit as exit:\n    status = exit.code\n"
            "heavy = [name for name in ('torch', 'transformers') if name in sys.modules]\n"
            "print('HEAVY', heavy)\nsys.exit(0 if status in (0, None) else 3)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"COLUMNS": "200", "PATH": ""},
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "HEAVY []" in result.stdout, f"{' '.join(argv)} imported {result.stdout.splitlines()[-1]}"
