"""Dependencies run one way: the library never imports the top-level ``callbacks`` package, ``spaces``
never imports ``supernet``, and scripts and benchmarks reach maths through the library."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_importing_every_library_module_imports_no_callback() -> None:
    code = ("import importlib, pkgutil, sys, nas_lightning as n\n"
            "[importlib.import_module(m.name) for m in pkgutil.walk_packages(n.__path__, 'nas_lightning.')]\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'callbacks'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def test_no_library_file_names_the_callbacks_package() -> None:
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "nas_lightning").rglob("*.py")
                 if any(m.split(".")[0] == "callbacks" for m in _imports(p))]
    assert offenders == []


def test_spaces_never_import_supernets() -> None:
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "nas_lightning" / "spaces").rglob("*.py")
                 if any(m.startswith("nas_lightning.supernet") for m in _imports(p))]
    assert offenders == []


def test_scripts_and_benchmarks_reach_maths_through_the_library() -> None:
    files = [*(ROOT / "scripts").glob("*.py"), *(ROOT / "benchmarks").glob("*.py")]
    offenders = [str(p.relative_to(ROOT)) for p in files if any(m.split(".")[0] == "callbacks" for m in _imports(p))]
    assert files and offenders == []


def test_callbacks_import_only_the_library() -> None:
    """A callback is an edge: it may use the library, never a command."""
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "callbacks").glob("*.py")
                 if any(m.startswith("nas_lightning.commands") or m == "nas_lightning.cli" for m in _imports(p))]
    assert offenders == []
