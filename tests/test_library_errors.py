"""The library packages raise their own errors and never name command-line flags.

Static checks over the source of hestkit, catalog and seal (cli/ is the only place that
knows flags): every ``raise`` of a builtin ``ValueError`` / ``RuntimeError`` is one of the
package's error types instead, and no string in library code (docstrings aside) spells
a flag: a fix names the library parameter (``allow_upsampling=True``) and carries it as a
structured :class:`hestkit.errors.Opt`, which the CLI renders as the flag.
"""

from __future__ import annotations

import ast
import itertools
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("hestkit", "catalog", "seal")
#: Builtins a library raise may not use bare.
BANNED = {"ValueError", "RuntimeError"}
#: Flags of other programs that a fix may quote (they are not hestkit flags).
FOREIGN_FLAGS = {"vips tiffsave --tile --pyramid"}
_FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def _modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def _docstrings(tree: ast.AST) -> set[int]:
    ids: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    # attribute docs (``#:`` comments are not strings; a bare string after an assignment is)
    for node in ast.walk(tree):
        for field in ("body", "orelse", "finalbody"):
            stmts = getattr(node, field, None)
            if isinstance(stmts, list):
                for a, b in itertools.pairwise(stmts):
                    if isinstance(a, (ast.Assign, ast.AnnAssign)) and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant):
                        ids.add(id(b.value))
    return ids


def test_no_bare_value_or_runtime_error_is_raised() -> None:
    found = []
    for path in _modules():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Raise) and node.exc is not None:
                exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
                if isinstance(exc, ast.Name) and exc.id in BANNED:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: raise {exc.id}")
    assert not found, "raise the package's error types (they subclass the builtin):\n" + "\n".join(found)


def test_no_library_string_names_a_cli_flag() -> None:
    found = []
    for path in _modules():
        tree = ast.parse(path.read_text(), str(path))
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
                text = node.value
                for foreign in FOREIGN_FLAGS:
                    text = text.replace(foreign, "")
                if _FLAG.search(text):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value.strip()[:100]!r}")
    assert not found, "name the library parameter as an Opt in a Fix, not the flag:\n" + "\n".join(found)


def test_the_checks_catch_what_they_look_for(tmp_path: Path) -> None:
    """The two scans above fail on a bad module (so that they can fail at all)."""
    bad = 'def f(x):\n    """Use ``--image`` (a docstring may)."""\n    raise ValueError(f"{x}: pass --image PATH")\n'
    tree = ast.parse(bad)
    docs = _docstrings(tree)
    flags = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs and _FLAG.search(n.value)]
    raises = [n for n in ast.walk(tree) if isinstance(n, ast.Raise) and isinstance(n.exc, ast.Call) and getattr(n.exc.func, "id", "") in BANNED]
    assert flags == [": pass --image PATH"] and len(raises) == 1


@pytest.mark.parametrize(
    ("cls", "builtin"),
    [
        ("hestkit.errors.OptionError", ValueError),
        ("hestkit.errors.DataError", ValueError),
        ("hestkit.errors.StateError", RuntimeError),
        ("catalog.errors.DamagedError", ValueError),
        ("seal.errors.ConfigError", ValueError),
        ("seal.errors.ShapeError", ValueError),
        ("seal.errors.NotFittedError", RuntimeError),
        ("seal.vortex.errors.VortexConfigError", ValueError),
        ("seal.vortex.errors.VortexShapeError", ValueError),
    ],
)
def test_replacements_keep_the_builtin_and_the_package_base(cls: str, builtin: type[Exception]) -> None:
    import importlib

    from hestkit.errors import HestkitError

    mod, name = cls.rsplit(".", 1)
    err = getattr(importlib.import_module(mod), name)
    assert issubclass(err, builtin) and issubclass(err, HestkitError)
