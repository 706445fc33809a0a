"""Faults at every step of a commit leave the catalog as it was: readable, writable, and
passing `check`. A real full disk (a small tmpfs, where the test may mount one) and
failures injected at the write layer (ENOSPC at each step: patches, schema growth of
each SOMA array, rows of each array, gene list, gene index, manifest)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

import catalog
from catalog import _faults, _soma
from catalog.check import check_catalog
from catalog.writer import _commit, _cut, _prepare
from hestkit.readers import scan
from hestkit.sample import ReadOptions
from hestkit.synthetic import SyntheticSample, make_visium


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> list[SyntheticSample]:
    root = tmp_path_factory.mktemp("faultin")
    return [
        make_visium(root / "a", n_rows=5, n_cols=5, seed=31, n_genes=30),
        make_visium(root / "b", n_rows=5, n_cols=6, seed=32, n_genes=41),
    ]


@pytest.fixture
def tight_domains(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every commit grows every SOMA domain (a TileDB schema evolution), as a catalog
    does whenever an append outgrows the headroom."""
    monkeypatch.setattr(_soma, "_grown", lambda current, need: max(current, need))


@pytest.fixture
def no_hook() -> Iterator[None]:
    yield
    _faults.set_fault_hook(None)


def _tree(root: Path) -> dict[str, int]:
    """Every file of the catalog (but the lock) with its size."""
    out = {}
    for dp, _, fns in os.walk(root):
        for fn in fns:
            p = Path(dp) / fn
            if fn != ".lock":
                out[str(p.relative_to(root))] = p.stat().st_size
    return out


def _ingest(cat: catalog.Catalog, t: SyntheticSample, sid: str, overwrite: bool = False) -> catalog.IngestReport:
    return cat.ingest([t.path], options=ReadOptions(sample_id=sid, organ="Breast"), workers=1, overwrite=overwrite)


def _assert_usable(cat: catalog.Catalog, samples: set[str]) -> None:
    """Readable (every pair of the samples, their counts and patches), and `check` finds
    no damage."""
    expect = {m["sample_id"]: int(m["n_pairs"]) for m in cat.manifests()}
    assert set(expect) == samples and min(expect.values()) > 0
    view = cat.pairs()
    assert {s: int((view.obs["sample_id"] == s).sum()) for s in expect} == expect
    assert view.expression().shape[0] == sum(expect.values())
    for i in (0, len(view) - 1):
        assert view.patch(i).shape == (224, 224, 3)
    rep = check_catalog(cat.uri)
    assert rep.ok, rep.lines()


def _fake_half_schema(cat_root: Path, point: str) -> None:
    """What TileDB leaves when the disk fills while it stores an evolved schema: a
    zero-byte file under the array's __schema/ (seen on a real full tmpfs)."""
    array = point.removeprefix("schema:")
    d = cat_root / "soma" / ("obs" if array == "obs" else f"ms/RNA/{array}") / "__schema"
    (d / f"__9999999999999_9999999999999_{uuid.uuid4().hex}").touch()


COMMIT_POINTS = [
    "write:genes/.json",
    "schema:var",
    "schema:obs",
    "schema:X/counts",
    "schema:X/counts_by_gene",
    "rows:var",
    "rows:obs",
    "rows:X/counts",
    "rows:X/counts_by_gene",
    "write:genes/.npy",
    "write:manifest/.json",
]


def test_enospc_at_every_commit_step_rolls_back(
    samples: list[SyntheticSample], tmp_path: Path, tight_domains: None, no_hook: None
) -> None:
    root = tmp_path / "cat"
    cat = catalog.create(root)
    assert not _ingest(cat, samples[0], "a").failed
    ref = scan(samples[1].path, ReadOptions(sample_id="b", organ="Lung"))[0]
    prep = _prepare(str(root), ref, cat.spec, "20260101T000000-deadbeef")
    written = [_cut(prep.job, i) for i in range(len(prep.job.plan.blocks))]
    before = _tree(root)
    for point in COMMIT_POINTS:

        def hook(p: str, point: str = point) -> None:
            if p == point:
                if p.startswith("schema:"):
                    _fake_half_schema(root, p)
                raise OSError(errno.ENOSPC, "No space left on device")

        _faults.set_fault_hook(hook)
        with pytest.raises(_faults.ResourceError) as ei:
            _commit(str(root), prep, written, False, "test")
        msg = str(ei.value)
        assert "no space left" in msg and "\n" not in msg and "free some space" in msg, msg
        after = _tree(root)
        extra = set(after) - set(before)
        # only the content-addressed gene list (written before the lock) may stay
        assert all(p.startswith("genes/") and p.endswith(".json") for p in extra), (point, sorted(extra))
        assert {p: s for p, s in after.items() if p in before} == before, point
        assert check_catalog(cat.uri).ok, point
    _faults.set_fault_hook(None)
    _commit(str(root), prep, written, False, "test")  # space is back: the same staging commits
    _assert_usable(cat, {"a", "b"})
    assert cat.compact()


@pytest.mark.parametrize("point", ["patches:thumbnail", "patches:shards"])
def test_enospc_while_staging_patches_leaves_nothing(
    samples: list[SyntheticSample], tmp_path: Path, point: str, no_hook: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    cat = catalog.create(tmp_path / "cat")
    monkeypatch.setenv(_faults.FAIL_ENV, point)
    rep = _ingest(cat, samples[0], "a")
    assert rep.failed and "no space left" in rep.failed[0].message and "Traceback" not in rep.failed[0].message
    assert "\n" not in rep.failed[0].message
    assert os.listdir(tmp_path / "cat" / "patches") == []  # the staging is gone
    monkeypatch.delenv(_faults.FAIL_ENV)
    assert not _ingest(cat, samples[0], "a").failed
    _assert_usable(cat, {"a"})


def test_cli_reports_enospc_in_one_line(samples: list[SyntheticSample], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cli.hestkit import app

    monkeypatch.setenv(_faults.FAIL_ENV, "rows:X/counts")
    cat_dir = tmp_path / "cat"
    res = CliRunner().invoke(app, ["ingest", str(samples[0].path), "-c", str(cat_dir), "--sample-id", "a", "-q", "--workers", "1"])
    assert res.exit_code == 1
    out = res.output
    assert "Traceback" not in out and "appending its rows to the SOMA arrays" in out and "free some space" in out, out
    monkeypatch.delenv(_faults.FAIL_ENV)
    assert CliRunner().invoke(app, ["check", str(cat_dir)]).exit_code == 0
    res = CliRunner().invoke(app, ["ingest", str(samples[0].path), "-c", str(cat_dir), "--sample-id", "a", "-q", "--workers", "1"])
    assert res.exit_code == 0, res.output


def test_overwrite_that_fails_keeps_the_old_sample(
    samples: list[SyntheticSample], tmp_path: Path, no_hook: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    cat = catalog.create(tmp_path / "cat")
    assert not _ingest(cat, samples[0], "a").failed
    old = cat.manifest("a")
    monkeypatch.setenv(_faults.FAIL_ENV, "write:manifest/.json")
    rep = _ingest(cat, samples[0], "a", overwrite=True)
    assert rep.failed and "writing its manifest" in rep.failed[0].message
    assert cat.manifest("a")["ingest_id"] == old["ingest_id"]
    assert not (tmp_path / "cat" / "retired").exists() or not os.listdir(tmp_path / "cat" / "retired")
    assert os.listdir(tmp_path / "cat" / "patches") == [old["patches_path"].split("/")[-1]]
    _assert_usable(cat, {"a"})


def _mount_tmpfs(where: Path, size: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    where.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    return res.returncode == 0


def test_real_full_disk_while_domains_grow(samples: list[SyntheticSample], tmp_path: Path, no_hook: None) -> None:
    """The catalog on a small tmpfs; the disk is filled right before the commit appends
    (so TileDB's schema evolution itself hits ENOSPC), then space is freed."""
    mnt = tmp_path / "mnt"
    if not _mount_tmpfs(mnt, "48m"):
        pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN); the injected faults cover the steps")
    try:
        root = mnt / "cat"
        cat = catalog.create(root)
        filler = mnt / "filler"
        _faults.set_fault_hook(_faults.fill_disk_at("before-soma", filler))
        try:
            rep = _ingest(cat, samples[0], "a")
        finally:
            _faults.set_fault_hook(None)
        assert rep.failed, "the commit should have hit the full disk"
        msg = rep.failed[0].message
        assert "no space left" in msg and "\n" not in msg, msg
        zero = [p for p in (root / "soma").rglob("__schema/*") if p.stat().st_size == 0]
        assert zero == []  # no half-written schema version left behind
        filler.unlink()
        assert check_catalog(str(root)).ok
        assert not _ingest(cat, samples[0], "a").failed
        assert not _ingest(cat, samples[1], "b").failed
        _assert_usable(cat, {"a", "b"})
        assert cat.compact()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_out_of_memory_while_planning_is_one_line(
    samples: list[SyntheticSample], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from catalog import writer

    def oom(*args: object, **kwargs: object) -> None:
        raise MemoryError("Unable to allocate 112. GiB for an array with shape (200000, 200000, 3)")

    monkeypatch.setattr(writer, "plan_patches", oom)
    cat = catalog.create(tmp_path / "cat")
    rep = _ingest(cat, samples[0], "a")
    msg = rep.failed[0].message
    assert msg == "a: reading the sample and planning its patches: out of memory; use fewer workers (workers=N, " + (
        "or a machine with more memory) and re-run the same command"
    ), msg
    assert os.listdir(tmp_path / "cat" / "patches") == [] and check_catalog(cat.uri).ok
