"""Keep the contract honest: every hook is documented with its arguments, and tested."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from bagbot_core import hookspecs

ROOT = Path(__file__).resolve().parent.parent
HOOKS = sorted(name for name in dir(hookspecs) if name.startswith("bagbot_"))


def test_there_are_hooks() -> None:
    assert "bagbot_add_connectors" in HOOKS and "bagbot_order_status_changed" in HOOKS


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented_with_matching_arguments(hook: str) -> None:
    docs = (ROOT / "docs" / "plugin-hooks.md").read_text()
    match = re.search(rf"^### `{hook}\((.*?)\)", docs, re.MULTILINE)
    assert match, f"docs/plugin-hooks.md has no heading for {hook}"
    documented = [arg.split(":")[0].strip() for arg in match.group(1).split(",") if arg.strip()]
    assert documented == list(inspect.signature(getattr(hookspecs, hook)).parameters)


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_docstring(hook: str) -> None:
    doc = inspect.getdoc(getattr(hookspecs, hook)) or ""
    assert len(doc) > 80
    for param in inspect.signature(getattr(hookspecs, hook)).parameters:
        assert f":param {param}:" in doc


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_exercised_by_a_test(hook: str) -> None:
    tests = "".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py")
                    if p.name != "test_hookspecs.py")
    assert f"def {hook}(" in tests, f"no test implements {hook}"
