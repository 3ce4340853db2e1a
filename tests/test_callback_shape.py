"""Callbacks are edges: each hook guards, then hands off to the library (as Lightning's EarlyStopping does).
Every hook a callback overrides is a few statements long; the algorithms live in ``nas_lightning``."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
import pytorch_lightning as pl

ROOT = Path(__file__).parents[1]
HOOKS = {name for name, _ in inspect.getmembers(pl.Callback, inspect.isfunction) if not name.startswith("_")}
MAX_STATEMENTS = 5


def _statements(body: list[ast.stmt]) -> int:
    """Statements of a function body, nested ones included, its docstring not."""
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    count = 0
    for node in body:
        count += 1
        for field in ("body", "orelse", "finalbody", "handlers"):
            inner = getattr(node, field, None)
            if isinstance(inner, list) and inner and isinstance(inner[0], ast.stmt | ast.ExceptHandler):
                count += _statements(inner) if field != "handlers" else sum(_statements(h.body) for h in inner)
    return count


def _hooks() -> list[tuple[str, str, int, bool]]:
    found = []
    for path in sorted((ROOT / "callbacks").glob("*.py")):
        for cls in ast.walk(ast.parse(path.read_text())):
            if not isinstance(cls, ast.ClassDef):
                continue
            for fn in cls.body:
                if isinstance(fn, ast.FunctionDef) and fn.name in HOOKS - {"state_dict", "load_state_dict"}:
                    overridden = any(isinstance(d, ast.Name) and d.id == "override" for d in fn.decorator_list)
                    found.append((f"{path.name}:{cls.name}.{fn.name}", fn.name, _statements(fn.body), overridden))
    return found


def test_the_shape_test_sees_the_callbacks() -> None:
    names = {h[0].split(":")[1].split(".")[0] for h in _hooks()}
    assert {"PoolShrinking", "ControllerStep", "ProjectionMatrixUpdate", "EvolutionSearch", "RankingEvaluation",
            "DisturbanceMetrics"} <= names


@pytest.mark.parametrize("hook", _hooks(), ids=lambda h: h[0])
def test_every_hook_is_thin_and_marked_override(hook: tuple[str, str, int, bool]) -> None:
    where, _, statements, overridden = hook
    assert overridden, f"{where} overrides a Callback hook without @override"
    assert statements <= MAX_STATEMENTS, f"{where} has {statements} statements: move the work into nas_lightning"
