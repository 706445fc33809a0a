"""A training job reads the catalog while another process appends a sample to it."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import catalog
from catalog import _soma
from hestkit.sample import ReadOptions
from hestkit.synthetic import make_visium

_INGEST = """
import sys, catalog
from hestkit.sample import ReadOptions
rep = catalog.open(sys.argv[1]).ingest([sys.argv[2]], options=ReadOptions(sample_id="new"), workers=1)
assert not rep.failed, rep.failed[0].message
"""


def _read_all(view: catalog.PairView) -> list[str]:
    """Digest of every (patch, expression) pair, read through a DataLoader with 2 workers."""
    from torch.utils.data import DataLoader

    out: list[str] = []
    for imgs, e in DataLoader(view.to_torch(transform=np.asarray), batch_size=8, num_workers=2):
        for im, x in zip(imgs, e, strict=True):
            out.append(hashlib.sha1(np.asarray(im).tobytes() + np.asarray(x).tobytes()).hexdigest())
    return out


def test_reader_sees_a_consistent_snapshot_while_a_sample_is_appended(tmp_path: Path) -> None:
    old = [make_visium(tmp_path / f"o{i}", n_rows=5, n_cols=5, seed=80 + i) for i in range(2)]
    new = make_visium(tmp_path / "new", n_rows=6, n_cols=5, seed=90)
    cat = catalog.create(tmp_path / "cat")
    for i, t in enumerate(old):
        assert not cat.ingest([t.path], options=ReadOptions(sample_id=f"old{i}"), workers=1).failed
    n_old, n_new = sum(int(t.in_tissue.sum()) for t in old), int(new.in_tissue.sum())
    snapshot = cat.pairs()
    before = _read_all(snapshot)
    assert len(before) == len(set(before)) == n_old

    script = tmp_path / "ingest.py"
    script.write_text(_INGEST)
    # the writer pauses between its SOMA rows and its manifest: the window a reader must not see into
    env = {**os.environ, "HESTKIT_TEST_SLEEP_AT": "after-soma:4"}
    proc = subprocess.Popen([sys.executable, str(script), str(cat.path), str(new.path)], env=env, stderr=subprocess.PIPE)
    sizes: set[int] = set()
    saw_hidden_rows = False
    during: list[str] = []
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        view = catalog.open(cat.path).pairs()
        sizes.add(len(view))
        assert len(view) in (n_old, n_old + n_new), f"a partial sample became visible: {len(view)} pairs"
        if len(view) == n_old and _soma.obs_row_count(cat.layout.soma) > n_old:
            saw_hidden_rows = True  # the new rows are written, not committed, and unseen
            if not during:
                during = _read_all(snapshot)  # the old samples read whole while the writer is mid-commit
        if len(view) == n_old + n_new:
            assert float(view.expression().sum()) == pytest.approx(sum(float(t.counts[t.in_tissue].sum()) for t in [*old, new]))
        time.sleep(0.2)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert saw_hidden_rows, "the reader never observed the writer mid-commit"
    assert sorted(during) == sorted(before)
    # after the commit: the old snapshot is still whole, and the new catalog holds every pair once
    assert sorted(_read_all(snapshot)) == sorted(before)
    final = catalog.open(cat.path).pairs()
    assert len(final) == n_old + n_new
    after = _read_all(final)
    assert len(after) == len(set(after)) == n_old + n_new
    assert set(before) <= set(after)
    sub = catalog.open(cat.path).pairs(sample_ids=["new"])
    assert float(sub.expression().sum()) == pytest.approx(float(new.counts[new.in_tissue].sum()))
    assert sizes <= {n_old, n_old + n_new}
