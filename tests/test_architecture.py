"""The package's shape: imports run one way (no cycles, at module level or inside functions, and
no layer imports a layer above it), and modules and functions stay small enough to read."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "streambatch"

# Lower layers never import higher ones (docs/ARCHITECTURE.md).  A module not listed here fails
# the test: place every new module in a layer.
LAYERS: list[tuple[str, ...]] = [
    ("errors", "_version", "_kernels", "_sizes", "_progress", "ragged", "packing", "_pieces", "plan", "_quality_args", "_prediction", "quality"),
    ("_fields", "schema", "decode"),
    ("io", "io.checksum", "io.files", "io.remote"),
    ("stats", "_ragged_stats", "_feature_stats", "manifest"),
    ("storage",),  # the package and every module in it
    ("sources", "_target", "convert", "loader"),  # sources/, convert/ and loader/: packages
    ("dataset",),
    ("cli_run", "cli", ""),  # "" is the package's __init__: the public API
]


def _modules() -> dict[str, Path]:
    out = {}
    for p in PACKAGE.rglob("*.py"):
        parts = p.relative_to(PACKAGE).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every package module ``name`` imports, at module level or inside functions."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                mod = ".".join(base + ([node.module] if node.module else []))
            elif node.module and (node.module == "streambatch" or node.module.startswith("streambatch.")):
                mod = node.module.removeprefix("streambatch").lstrip(".")
            else:
                continue
            found |= {m for m in [mod, *(f"{mod}.{a.name}".lstrip(".") for a in node.names)] if m in known}
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("streambatch"):
                    found.add(a.name.removeprefix("streambatch").lstrip("."))
    found.discard(name)
    return found & known


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(name, path, set(mods)) for name, path in mods.items()}


def _layer(name: str) -> int:
    for i, layer in enumerate(LAYERS):
        if name in layer or any(name.startswith(f"{m}.") for m in layer if m):
            return i
    raise AssertionError(f"streambatch.{name} is in no layer of tests/test_architecture.py")


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_the_import_graph_has_no_cycle() -> None:
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(f"streambatch.{m}".rstrip(".") for m in cycle)


def test_no_layer_imports_a_layer_above_it() -> None:
    wrong = [f"streambatch.{a} (layer {_layer(a)}) imports streambatch.{b} (layer {_layer(b)})"
             for a, deps in sorted(_graph().items()) for b in sorted(deps) if _layer(b) > _layer(a)]
    assert not wrong, "\n".join(wrong)


def test_the_checks_see_cycles_and_function_level_imports(tmp_path: Path) -> None:
    """The graph builder itself: a function-level import back is a cycle."""
    (tmp_path / "a.py").write_text("from . import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from .a import x\n")
    graph = {n: _imports(n, tmp_path / f"{n}.py", {"a", "b"}) for n in ("a", "b")}
    assert _cycle(graph) == ["a", "b", "a"]
    with pytest.raises(AssertionError, match="in no layer"):
        _layer("nowhere")


def _oversized(path: Path, root: Path) -> list[str]:
    """A module over 400 lines without a '# long module:' reason in its first 40 lines, and every
    function over 60 lines without a '# long:' reason on its def line or the line above."""
    src = path.read_text()
    lines = src.splitlines()
    rel = path.relative_to(root)
    out = []
    if len(lines) > 400 and not any("# long module:" in line for line in lines[:40]):
        out.append(f"{rel}: {len(lines)} lines")
    for node in ast.walk(ast.parse(src, str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = (node.end_lineno or node.lineno) - node.lineno + 1
            if n > 60 and "# long:" not in " ".join(lines[max(0, node.lineno - 2):node.lineno]):
                out.append(f"{rel}:{node.lineno}: {node.name}() has {n} lines")
    return out


def test_modules_and_functions_stay_small_or_say_why() -> None:
    big = [line for p in sorted(PACKAGE.rglob("*.py")) for line in _oversized(p, PACKAGE.parent)]
    assert not big, "\n".join(big)


def test_the_size_check_sees_long_functions_and_accepts_a_reason(tmp_path: Path) -> None:
    body = "".join(f"    x{i} = {i}\n" for i in range(70))
    (tmp_path / "m.py").write_text(f"def f():\n{body}\n# long: a table of constants\ndef g():\n{body}")
    assert _oversized(tmp_path / "m.py", tmp_path) == ["m.py:1: f() has 71 lines"]
    (tmp_path / "big.py").write_text("x = 1\n" * 401)
    assert _oversized(tmp_path / "big.py", tmp_path) == ["big.py: 401 lines"]
