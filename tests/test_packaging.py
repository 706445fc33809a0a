"""Packaging: what the library imports is declared, what it declares is imported, bounds not pins."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("hestkit", "catalog", "seal", "cli")
# declared for what they ship, not for an import: the OpenSlide C library for openslide-python
NOT_IMPORTED = {"openslide-bin": "ships the OpenSlide shared library that openslide-python loads"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(req: str) -> str:
    return _norm(re.split(r"[\s<>=!~;\[]", req.strip(), maxsplit=1)[0])


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _imported_modules() -> set[str]:
    mods: set[str] = set()
    for pkg in PACKAGES:
        for f in (REPO / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(f.read_text(), str(f))):
                if isinstance(node, ast.Import):
                    mods.update(a.name.split(".")[0] for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    mods.add(node.module.split(".")[0])
    return mods - set(PACKAGES) - set(sys.stdlib_module_names) - {"__future__"}


def test_every_import_is_declared_and_every_core_dependency_is_imported() -> None:
    proj = _project()
    core = {_requirement_name(r) for r in proj["dependencies"]}
    extras = {_requirement_name(r) for reqs in proj["optional-dependencies"].values() for r in reqs} - {"hestkit"}
    dists = packages_distributions()
    imported = _imported_modules()
    undeclared = {m: dists.get(m) for m in imported if not {_norm(d) for d in dists.get(m, [m])} & (core | extras)}
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"
    provided = {_norm(d) for m in imported for d in dists.get(m, [])}
    unused = core - provided - set(NOT_IMPORTED)
    assert not unused, f"declared in pyproject.toml but never imported by {PACKAGES}: {sorted(unused)}"


def test_dependencies_are_lower_bounds_and_the_tested_set_is_pinned_in_constraints() -> None:
    proj = _project()
    pinned = [r for r in proj["dependencies"] if "==" in r]
    assert not pinned, f"exact pins belong in constraints.txt, not in the library's dependencies: {pinned}"
    assert all(">=" in r for r in proj["dependencies"]), "every dependency carries a lower bound"
    lock = {
        _requirement_name(line): line.split("==", 1)[1].strip()
        for line in (REPO / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    for r in proj["dependencies"]:
        assert _requirement_name(r) in lock, f"{r}: not pinned in constraints.txt"
    assert lock["torch"] == "2.14.1" and lock["torchvision"] == "0.29.1"
    assert "-c constraints.txt" in (REPO / "Makefile").read_text()


def test_packages_are_typed() -> None:
    for pkg in PACKAGES:
        assert (REPO / pkg / "py.typed").exists(), f"{pkg}/py.typed is missing"
    pkg_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert all("py.typed" in pkg_data.get(p, []) for p in PACKAGES)
