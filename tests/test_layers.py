"""The import rule of docs/architecture.md, checked on every source file (imports inside
functions included): types ← media ← model ← engine ← backends ← server / cli; eval stands alone
(an HTTP client) and only cli imports it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src" / "omnilive"

# what each layer may import from omnilive (besides itself)
ALLOWED = {
    "types": set(),
    "media": {"types"},
    "model": {"types", "media"},
    "engine": {"types", "media", "model"},
    "backends": {"types", "media", "model", "engine"},
    "server": {"types", "media", "engine", "backends"},  # never model: tensors stay below it
    "web": set(),
    "eval": set(),  # a client of any server over HTTP: none of omnilive's server, engine or model
    "cli": {"types", "media", "model", "engine", "backends", "server", "eval", "cli_users"},
    "cli_users": {"types", "media", "model", "engine", "backends", "server"},  # `omnilive users`
    "__main__": {"cli"},
    "__init__": set(),
}


def layer_of(path: Path) -> str:
    return path.relative_to(SOURCE).parts[0].removesuffix(".py")


def omnilive_imports(path: Path) -> list[tuple[int, str]]:
    """(line, first package under omnilive) of every import of omnilive in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names
                                     if node.module == "omnilive"]
        elif isinstance(node, ast.ImportFrom):
            raise AssertionError(f"{path}:{node.lineno}: relative import; write the absolute omnilive.… name")
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "omnilive" and len(parts) > 1:
                found.append((node.lineno, parts[1]))
    return found


SOURCES = sorted(SOURCE.rglob("*.py"))


def test_every_source_file_belongs_to_a_layer():
    assert SOURCES, SOURCE
    assert {layer_of(path) for path in SOURCES} <= set(ALLOWED)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(SOURCE)))
def test_imports_follow_the_layer_rule(path: Path):
    layer = layer_of(path)
    bad = [f"line {line}: omnilive.{target}" for line, target in omnilive_imports(path)
           if target != layer and target not in ALLOWED[layer]]
    assert not bad, f"{path.relative_to(SOURCE)} ({layer}/) may import only {sorted(ALLOWED[layer])}: {bad}"


def test_the_rule_catches_a_forbidden_import(tmp_path):
    """The checker itself: a model file importing the engine is found, even inside a function."""
    fake = tmp_path / "model.py"
    fake.write_text("def f():\n    from omnilive.engine.sampling import sample\n    import omnilive.types\n")
    assert omnilive_imports(fake) == [(2, "engine"), (3, "types")]


def test_no_source_file_is_over_500_lines():
    long = {str(p.relative_to(SOURCE)): n for p in SOURCES if (n := len(p.read_text().splitlines())) > 500}
    assert not long, long
