"""A catalog at an s3:// URI, against a real S3 server (moto's server mode) on loopback.

The server runs in a child process: TileDB holds the GIL while it waits on its HTTP
calls, so a server thread inside the test process could never answer them.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

import catalog
from catalog import _soma
from catalog.errors import CatalogError
from catalog.writer import write_gene_joinids, write_gene_list
from hestkit.sample import ReadOptions
from hestkit.synthetic import SyntheticSample, make_visium

pytest.importorskip("moto.server", reason="moto[server] is not installed (pip install 'hestkit[dev]')")
pytest.importorskip("s3fs", reason="s3fs is not installed (pip install 'hestkit[s3]')")


_KEY, _SECRET = "hestkit-test-key", "hestkit-test-secret"




@pytest.fixture
def s3_env(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The standard AWS variables pointing at the server, and a fresh bucket; returns its name."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", _KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", _SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.setenv("HESTKIT_S3_LOCK_LEASE_S", "2")
    from catalog import _s3

    bucket = f"hestkit-{uuid.uuid4().hex[:12]}"
    _s3.filesystem().call_s3("create_bucket", Bucket=bucket)
    return bucket


@pytest.fixture(scope="module")
def two_samples(tmp_path_factory: pytest.TempPathFactory) -> list[SyntheticSample]:
    root = tmp_path_factory.mktemp("s3in")
    return [
        make_visium(root / "a", n_rows=6, n_cols=6, seed=71, organ="Breast"),
        make_visium(root / "b", n_rows=5, n_cols=6, seed=72, pixel_size_um=0.4, organ="Lung"),
    ]


def _ingest(cat: catalog.Catalog, samples: list[SyntheticSample]) -> None:
    for i, t in enumerate(samples):
        rep = cat.ingest([t.path], options=ReadOptions(sample_id=f"s{i}", organ=("Breast", "Lung")[i]), workers=2)
        assert not rep.failed, rep.failed[0].message


def _digest(a: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest()


def _loader_items(view: catalog.PairView, preload: bool) -> tuple[list[str], np.ndarray]:
    """Every pair read through a DataLoader with 2 worker processes: patch digests and expression
    (``preload=False``: the workers read the counts too, each through its own S3 clients)."""
    from torch.utils.data import DataLoader

    ds = view.to_torch(transform=lambda p: p, preload_expression=preload)
    digests: list[str] = []
    expr: list[np.ndarray] = []
    for imgs, e in DataLoader(ds, batch_size=4, num_workers=2, shuffle=True, generator=_gen()):
        digests.extend(_digest(np.asarray(im)) + ":" + _digest(np.asarray(x)) for im, x in zip(imgs, e, strict=True))
        expr.append(e.numpy())
    return digests, np.concatenate(expr)


def _gen():  # type: ignore[no-untyped-def]
    import torch

    return torch.Generator().manual_seed(0)


def test_s3_catalog_matches_a_local_one(s3_env: str, two_samples: list[SyntheticSample], tmp_path: Path) -> None:
    uri = f"s3://{s3_env}/cohort/cat"
    cat = catalog.create(uri)
    assert cat.remote and cat.uri == uri
    _ingest(cat, two_samples)
    local = catalog.create(tmp_path / "cat")
    _ingest(local, two_samples)

    cat = catalog.open(uri)  # a fresh handle sees the committed samples
    assert list(cat.samples()["sample_id"]) == ["s0", "s1"]
    view, lview = cat.pairs(), local.pairs()
    n = sum(int(t.in_tissue.sum()) for t in two_samples)
    assert len(view) == len(lview) == n
    keys = ["sample_id", "barcode", "x_px", "y_px", "patch_index"]
    assert view.obs[keys].equals(lview.obs[keys])
    assert not view.obs.duplicated(["sample_id", "barcode"]).any()
    assert view.genes == lview.genes
    assert (view.expression() != lview.expression()).nnz == 0
    few = view.genes[:: max(1, len(view.genes) // 4)][:4]  # a few genes: read from X/counts_by_gene
    assert len(few) <= len(view.genes) * _soma.BY_GENE_MAX_FRACTION
    assert (view.with_genes(few).expression() != lview.with_genes(few).expression()).nnz == 0
    assert view.with_genes(few).expression().nnz > 0
    assert float(view.expression().sum()) == pytest.approx(sum(float(t.counts[t.in_tissue].sum()) for t in two_samples))
    # queries go through SOMA on S3
    lung = cat.pairs(organ="lung", genes=view.genes[:3])
    assert len(lung) == int(two_samples[1].in_tissue.sum()) and set(lung.obs["sample_id"]) == {"s1"}
    # a view pickles to URIs only: no handle, no credential
    blob = pickle.dumps(view)
    assert _SECRET.encode() not in blob and _KEY.encode() not in blob
    # every pair through 2 DataLoader worker processes: none lost, none duplicated, same bytes as local
    got, got_expr = _loader_items(view, preload=False)
    want, want_expr = _loader_items(lview, preload=True)
    assert len(got) == n and len(set(got)) == n  # pairs are distinct (synthetic tissue), so no duplicates
    assert sorted(got) == sorted(want)
    assert float(got_expr.sum()) == pytest.approx(float(want_expr.sum()))
    # nothing about the server or keys is stored in the catalog
    from catalog import _s3

    fs = _s3.filesystem()
    for key in ("catalog.json", "manifest/s0.json"):
        text = fs.cat_file(f"{s3_env}/cohort/cat/{key}").decode()
        assert _SECRET not in text and _KEY not in text and "127.0.0.1" not in text
    assert not fs.exists(f"{s3_env}/cohort/cat/.lock")  # released after each commit
    # both samples have the same genes: one shared, content-addressed gene list on S3
    ms = cat.manifests()
    assert ms[0]["genes_ref"] == ms[1]["genes_ref"] and "genes" not in ms[0]
    ref = ms[0]["genes_ref"]
    assert sorted(fs.ls(f"{s3_env}/cohort/cat/genes", detail=False)) == sorted(
        [f"{s3_env}/cohort/cat/genes/{ref}.json", f"{s3_env}/cohort/cat/genes/{ref}.joinids-v1.npy"]
    )
    assert cat.sample_genes(ms[0]) == list(two_samples[0].genes)
    # the list's var-joinid index, read back from S3, is the lookup of its names in var
    var = _soma.read_var(cat.layout.soma)
    by_name = dict(zip(var["var_id"], var["soma_joinid"], strict=True))
    assert cat.gene_joinids(ms[0]).tolist() == [by_name[g] for g in two_samples[0].genes]
    # writing either again is a no-op: the conditional PUT loses to the existing key, which is fine
    assert write_gene_list(cat.layout, list(two_samples[0].genes)) == ref
    assert write_gene_joinids(cat.layout, ref, cat.gene_joinids(ms[0])) is False


def test_cli_on_s3(s3_env: str, two_samples: list[SyntheticSample]) -> None:
    from typer.testing import CliRunner

    from cli.hestkit import app

    uri = f"s3://{s3_env}/cli"
    t = two_samples[0]
    r = CliRunner().invoke(app, ["ingest", str(t.path), "--catalog", uri, "--sample-id", "cli0", "--organ", "Breast"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["ls", uri])
    assert r.exit_code == 0 and "cli0" in r.output, r.output
    r = CliRunner().invoke(app, ["query", uri, "--organ", "Breast"])
    assert r.exit_code == 0, r.output
    assert str(int(t.in_tissue.sum())) in r.output
    assert len(catalog.open(uri).pairs(organ="Breast")) == int(t.in_tissue.sum())
    # a second commit (a second fragment per array), then compaction: the same pairs
    t1 = two_samples[1]
    r = CliRunner().invoke(app, ["ingest", str(t1.path), "--catalog", uri, "--sample-id", "cli1", "--organ", "Lung"])
    assert r.exit_code == 0, r.output
    before = catalog.open(uri).pairs()
    r = CliRunner().invoke(app, ["compact", uri])
    assert r.exit_code == 0 and "compacted obs, ms/RNA/var, ms/RNA/X/counts, ms/RNA/X/counts_by_gene" in r.output, r.output
    after = catalog.open(uri).pairs()
    assert after.obs.equals(before.obs) and after.genes == before.genes
    assert (after.expression() != before.expression()).nnz == 0
    assert (after.with_genes(after.genes[:2]).expression() != before.with_genes(before.genes[:2]).expression()).nnz == 0
    # what is not on object storage yet says so
    cat = catalog.open(uri)
    assert cat.volumes().empty and cat.sections().empty
    with pytest.raises(CatalogError, match="needs a local catalog"):
        cat.link_section("cli0", "vol", 10.0, affine=np.eye(3))
    from catalog.embeddings import EmbeddingStore

    with pytest.raises(CatalogError, match="cache=False"):
        EmbeddingStore(cat, "key", {})


def test_s3_errors_name_the_fix(s3_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(CatalogError, match=r"does not exist.*aws s3 mb"):
        catalog.create(f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/cat")
    with pytest.raises(catalog.NotACatalogError, match="hestkit ingest"):
        catalog.open(f"s3://{s3_env}/nothing-here")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    with pytest.raises(CatalogError, match=r"cannot reach the S3 endpoint.*AWS_ENDPOINT_URL"):
        catalog.open(f"s3://{s3_env}/cat")
    # an unreachable endpoint fails fast, not after botocore's defaults (60 s connect timeout):
    # the client is made with a short connect timeout and few attempts (speed itself is not
    # asserted in tests)
    from catalog import _s3

    client_cfg = _s3.storage_options()["config_kwargs"]
    assert client_cfg["connect_timeout"] <= 5 and client_cfg["retries"]["max_attempts"] <= 4
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(CatalogError, match="AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
        catalog.open(f"s3://{s3_env}/cat")
    with pytest.raises(CatalogError, match="unsupported catalog location gs://"):
        catalog.open("gs://bucket/cat")


def test_s3_lock_is_exclusive_and_leases_expire(s3_env: str) -> None:
    from catalog import _s3

    uri = f"s3://{s3_env}/locks/.lock"
    a = _s3.S3Lock(uri, lease_s=1.0)
    with a:
        # a second writer waits; it cannot take a lease that is being renewed
        with pytest.raises(CatalogError, match="held the catalog lock"):
            with _s3.S3Lock(uri, timeout_s=2.5, lease_s=1.0):
                pass
        a.check()
    # a holder that died (no renewals) is taken over once its lease has passed, by one waiter only
    fs = _s3.filesystem()
    fs.call_s3("put_object", Bucket=s3_env, Key="locks/.lock", Body=b'{"lease_s": 0.5}', IfNoneMatch="*")
    winners: list[int] = []
    inside = threading.Lock()
    overlaps: list[int] = []

    def contend(k: int) -> None:
        with _s3.S3Lock(uri, timeout_s=20, lease_s=1.0) as lk:
            if not inside.acquire(blocking=False):
                overlaps.append(k)
                return
            try:
                winners.append(k)
                if lk.took_over:
                    winners.append(-1)
                time.sleep(0.3)
            finally:
                inside.release()

    threads = [threading.Thread(target=contend, args=(k,)) for k in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not overlaps
    assert sorted(w for w in winners if w >= 0) == [0, 1, 2] and winners.count(-1) == 1
    # a holder that stalled past its lease learns it lost the lock and must not commit
    stalled = _s3.S3Lock(uri, lease_s=0.8)
    stalled.__enter__()
    stalled._stop.set()  # the renewals stop, as in a frozen process
    assert stalled._thread is not None
    stalled._thread.join()
    with _s3.S3Lock(uri, timeout_s=20, lease_s=0.8) as other:
        assert other.took_over
        stalled._stop.clear()
        stalled._renew_once()
        with pytest.raises(CatalogError, match="lost the catalog lock"):
            stalled.check()
    stalled.__exit__(None, None, None)


_KILL_SCRIPT = """
import sys, catalog
from hestkit.sample import ReadOptions
cat = catalog.create(sys.argv[1])
rep = cat.ingest([sys.argv[2]], options=ReadOptions(sample_id=sys.argv[3]), workers=1)
assert not rep.failed, rep.failed[0].message
"""


def test_s3_concurrent_writers_and_a_killed_one(s3_env: str, two_samples: list[SyntheticSample], tmp_path: Path) -> None:
    uri = f"s3://{s3_env}/conc"
    cat = catalog.create(uri)
    # a writer killed (SIGKILL) after its SOMA rows, before its manifest: its lock lease is left behind
    script = tmp_path / "ingest.py"
    script.write_text(_KILL_SCRIPT)
    env = {**os.environ, "HESTKIT_TEST_KILL_AT": "after-soma"}
    proc = subprocess.run(
        [sys.executable, str(script), uri, str(two_samples[0].path), "s0"], env=env, capture_output=True, timeout=300
    )
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert catalog.open(uri).samples().empty and len(catalog.open(uri).pairs()) == 0
    from catalog import _s3

    assert _s3.filesystem().exists(f"{s3_env}/conc/.lock")  # the dead writer's lease
    # two writers at once (threads), different samples: the stale lease is taken over, commits serialise
    errors: list[BaseException] = []

    def ingest(i: int) -> None:
        try:
            rep = cat.ingest([two_samples[i].path], options=ReadOptions(sample_id=f"s{i}"), workers=1)
            assert not rep.failed, rep.failed[0].message
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=ingest, args=(i,)) for i in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    view = catalog.open(uri).pairs()
    assert sorted(catalog.open(uri).samples()["sample_id"]) == ["s0", "s1"]
    assert len(view) == sum(int(t.in_tissue.sum()) for t in two_samples)
    assert not view.obs.duplicated(["sample_id", "barcode"]).any()
    assert float(view.expression().sum()) == pytest.approx(sum(float(t.counts[t.in_tissue].sum()) for t in two_samples))
    from catalog import _soma

    assert _soma.obs_row_count(f"{uri}/soma") > len(view)  # the killed writer's rows exist, unseen
