"""The package stays readable in pieces: no module of anynet/ over 450 lines, no function over
60 (issue #20's limits; a module or function that outgrows them is split where it grew)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "anynet"
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 450, 60


def test_no_module_or_function_outgrows_its_limit():
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        where = path.relative_to(PACKAGE.parent)
        if source.count("\n") > MAX_MODULE_LINES:
            too_long.append(f"{where}: {source.count(chr(10))} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{where}:{node.lineno} {node.name}: {length} lines")
    assert not too_long, "\n".join(too_long)
    assert len(list(PACKAGE.rglob("*.py"))) > 40  # the walk saw the package
