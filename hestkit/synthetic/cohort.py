"""A small mixed demo cohort: Space Ranger 2 and 1 folders plus a HEST-1k root."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ._truth import SyntheticSample
from .hest import make_hest
from .visium import make_visium

__all__ = ["CohortEntry", "make_demo_cohort"]


@dataclass(frozen=True, eq=False)
class CohortEntry:
    """One sample of the demo cohort.

    ``path`` is what a user points ``hestkit ingest`` at: the Visium folder, or the
    HEST-1k root (then ``sample_id`` selects the sample). ``image`` is the full-res
    H&E when it is a separate file the user must name (Visium), else ``None``.
    """

    path: Path
    kind: Literal["visium", "hest"]
    sample_id: str
    image: Path | None
    organ: str
    species: str
    patient: str
    truth: SyntheticSample


def make_demo_cohort(out_dir: str | Path, *, seed: int = 0, small: bool = True) -> list[CohortEntry]:
    """Write the demo cohort under ``out_dir`` and return its entries.

    Layout (``small=True``: grids of 12-20 spots per side, images at most ~3300 px; ~2.5 s):

    - ``visium_breast_p1/``: Space Ranger 2, HDF5 matrix, human breast, 0.5 um/px
      embedded in the TIFF.
    - ``visium_breast_p2/``: Space Ranger 2, MEX matrix, human breast, 0.5 um/px NOT
      embedded (must be estimated from the spot spacing).
    - ``visium_mouse_brain_sr1/``: Space Ranger 1 (headerless positions), HDF5,
      mouse brain, 0.8 um/px embedded.
    - ``hest/``: HEST-1k root with ``SYNH001`` (human bowel, Visium, 1.0 um/px) and
      ``SYNM002`` (mouse kidney, Visium, 1.0 um/px).

    ``small=False`` roughly doubles the grids (and images).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    grow = 1 if small else 2
    entries: list[CohortEntry] = []

    visium_specs: list[
        tuple[
            str,
            Literal["spaceranger1", "spaceranger2"],
            Literal["h5", "mex"],
            str,
            str,
            str,
            float,
            bool,
            int,
        ]
    ] = [
        (
            "visium_breast_p1",
            "spaceranger2",
            "h5",
            "Breast",
            "Homo sapiens",
            "P1",
            0.5,
            True,
            14,
        ),
        (
            "visium_breast_p2",
            "spaceranger2",
            "mex",
            "Breast",
            "Homo sapiens",
            "P2",
            0.5,
            False,
            12,
        ),
        (
            "visium_mouse_brain_sr1",
            "spaceranger1",
            "h5",
            "Brain",
            "Mus musculus",
            "M1",
            0.8,
            True,
            20,
        ),
    ]
    for k, (name, layout, matrix, organ, species, patient, ps, embed, n) in enumerate(visium_specs):
        folder = out / name
        truth = make_visium(
            folder,
            layout=layout,
            n_rows=n * grow,
            n_cols=n * grow,
            n_genes=60,
            pixel_size_um=ps,
            embed_pixel_size=embed,
            matrix=matrix,
            image_name="tissue_fullres.tif",
            seed=seed * 1000 + k,
            origin_px=(round(150.0 / ps), round(140.0 / ps)),
            species=species,
            organ=organ,
            sample_id=name,
        )
        entries.append(CohortEntry(folder, "visium", name, truth.image_path, organ, species, patient, truth))

    hest_root = out / "hest"
    hest_specs = [
        ("SYNH001", "Bowel", "Homo sapiens", "P3", "Cancer", "COAD"),
        ("SYNM002", "Kidney", "Mus musculus", "M2", "Healthy", None),
    ]
    for k, (sid, organ, species, patient, disease, oncotree) in enumerate(hest_specs):
        truth = make_hest(
            hest_root,
            sid,
            organ=organ,
            species=species,
            patient=patient,
            st_technology="Visium",
            disease_state=disease,
            oncotree_code=oncotree,
            n_rows=20 * grow,
            n_cols=20 * grow,
            n_genes=60,
            pixel_size_um=1.0,
            origin_px=(150.0, 140.0),
            seed=seed * 1000 + 10 + k,
        )
        entries.append(CohortEntry(hest_root, "hest", sid, None, organ, species, patient, truth))
    return entries
