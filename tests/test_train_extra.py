"""hestkit and catalog work without the ``train`` extra (torch, torchvision, timm, peft).

A fresh interpreter refuses those imports; every module of hestkit and catalog (but
catalog.torch) imports, a synthetic sample ingests and queries, ``hestkit`` commands run,
and what needs the extra says which to install.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import importlib, importlib.abc, pkgutil, sys
    BLOCKED = {"torch", "torchvision", "timm", "peft"}

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
            return None

    sys.meta_path.insert(0, Block())
    import catalog, hestkit
    n = 0
    for pkg in (hestkit, catalog):
        for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            if m.name != "catalog.torch":
                importlib.import_module(m.name)
                n += 1
    assert not BLOCKED & {k.split(".")[0] for k in sys.modules}, "a blocked module got imported"
    from pathlib import Path
    from hestkit import ReadOptions
    from hestkit.errors import MissingDependencyError
    from hestkit.synthetic import make_visium
    root = Path(sys.argv[1])
    make_visium(root / "s1", n_rows=4, n_cols=4, seed=5)
    cat = catalog.create(root / "cat")
    rep = cat.ingest([root / "s1"], options=ReadOptions(sample_id="s1"), workers=1)
    assert not rep.failed, rep.failed
    view = cat.pairs()
    patch, expr = view[0]
    assert len(view) > 0 and patch.shape == (224, 224, 3)
    try:
        view.to_torch()
    except MissingDependencyError as exc:
        assert "pip install 'hestkit[train]'" in str(exc) and "torch" in str(exc), exc
    else:
        raise AssertionError("to_torch worked without torch")
    from typer.testing import CliRunner
    from cli.hestkit import app
    from cli.seal import app as seal_app
    r = CliRunner().invoke(app, ["query", str(root / "cat"), "--json"])
    assert r.exit_code == 0 and '"n_pairs"' in r.stdout, r.output
    r = CliRunner().invoke(seal_app, ["fit", str(root / "cat"), "--backbone", "test_vit", "--out", str(root / "m")])
    assert r.exit_code == 1 and "pip install 'hestkit[train]'" in r.stderr, r.output
    assert not BLOCKED & {k.split(".")[0] for k in sys.modules}
    print("ok", n)
    """
)


def test_catalog_side_imports_and_works_without_the_train_extra(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split()[0] == "ok" and int(r.stdout.split()[1]) > 40  # every module of both packages
