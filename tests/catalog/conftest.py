"""A seeded synthetic cohort of every supported layout, ingested once per test session."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import catalog
from hestkit.sample import ReadOptions
from hestkit.synthetic import SyntheticSample, make_hest, make_visium


@dataclass(frozen=True)
class Case:
    sample_id: str
    truth: SyntheticSample
    path: Path
    options: ReadOptions
    organ: str
    species: str
    patient: str
    technology: str = "visium"


def build_cohort(root: Path) -> list[Case]:
    cases = []
    # Space Ranger >= 2, pixel size embedded, 0.25 um/px (patches come from pyramid level 1)
    v2 = make_visium(
        root / "v2" / "outs", layout="spaceranger2", n_rows=10, n_cols=9, pixel_size_um=0.25, seed=11, origin_px=(500.0, 480.0)
    )
    cases.append(
        Case(
            "breastA",
            v2,
            v2.path,
            ReadOptions(sample_id="breastA", organ="Breast", species="Homo sapiens", patient="P1"),
            "Breast",
            "Homo sapiens",
            "P1",
        )
    )
    # Space Ranger 1.x, MEX matrix, no embedded pixel size (estimated from spacing), 0.7 um/px
    # (upsampled to 0.5), and spots near the left/top edge whose patches leave the image.
    v1 = make_visium(
        root / "v1",
        layout="spaceranger1",
        matrix="mex",
        n_rows=9,
        n_cols=8,
        pixel_size_um=0.7,
        embed_pixel_size=False,
        seed=12,
        origin_px=(40.0, 45.0),
        species="Mus musculus",
    )
    cases.append(
        Case(
            "brainB",
            v1,
            v1.path,
            ReadOptions(sample_id="brainB", organ="Brain", species="Mus musculus", patient="M7"),
            "Brain",
            "Mus musculus",
            "M7",
        )
    )
    # HEST-1k root with two ids
    h1 = make_hest(
        root / "hest",
        "TENX01",
        organ="Bowel",
        species="Homo sapiens",
        patient="P2",
        n_rows=8,
        n_cols=8,
        pixel_size_um=0.5,
        seed=13,
    )
    h2 = make_hest(
        root / "hest",
        "NCBI02",
        organ="Kidney",
        species="Mus musculus",
        patient="M9",
        n_rows=8,
        n_cols=7,
        pixel_size_um=0.4,
        seed=14,
    )
    for sid, t, organ, sp, pat in (("TENX01", h1, "Bowel", "Homo sapiens", "P2"), ("NCBI02", h2, "Kidney", "Mus musculus", "M9")):
        cases.append(Case(sid, t, root / "hest", ReadOptions(ids=(sid,)), organ, sp, pat))
    return cases


@pytest.fixture(scope="session")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> list[Case]:
    return build_cohort(tmp_path_factory.mktemp("cohort"))


@pytest.fixture(scope="session")
def ingested(cohort: list[Case], tmp_path_factory: pytest.TempPathFactory) -> tuple[catalog.Catalog, list[Case]]:
    cat = catalog.create(tmp_path_factory.mktemp("cat") / "catalog")
    for case in cohort:
        if case.sample_id == "NCBI02":
            continue  # ingested together with TENX01 below
        opts = case.options
        if case.sample_id == "TENX01":
            opts = ReadOptions(ids=("TENX01", "NCBI02"))
        rep = cat.ingest([case.path], options=opts, workers=2)
        assert not rep.failed, rep.failed[0].message
    return cat, cohort


# -- an S3 server (moto) on a free loopback port, for the object-storage tests ------------------
_S3_SERVER = """
import sys
from moto.server import ThreadedMotoServer
srv = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
srv.start()
print(srv.get_host_and_port()[1], flush=True)
sys.stdin.read()  # until the test module closes our stdin
srv.stop()
"""


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """An S3 server on a free loopback port, for one test module (skipped without moto/s3fs)."""
    import subprocess
    import sys

    pytest.importorskip("moto.server", reason="moto[server] is not installed (pip install 'hestkit[dev]')")
    pytest.importorskip("s3fs", reason="s3fs is not installed (pip install 'hestkit[s3]')")
    proc = subprocess.Popen(
        [sys.executable, "-c", _S3_SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.strip().isdigit():
            pytest.skip("the moto S3 server did not start")
        yield f"http://127.0.0.1:{int(line)}"
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
