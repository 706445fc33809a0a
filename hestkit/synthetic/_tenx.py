"""Writers for 10x Genomics Space Ranger files (HDF5 v3 matrix, MEX, spatial/).

All writers are byte-deterministic for equal inputs (gzip mtime 0, no HDF5 times).
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from ..errors import OptionError

FEATURE_TYPE = "Gene Expression"


def _genome(species: str) -> str:
    return "mm10" if species.strip().lower() in ("mus musculus", "mouse") else "GRCh38"


def _bytes_array(values: Sequence[str]) -> NDArray[np.bytes_]:
    encoded = [v.encode("ascii") for v in values]
    width = max((len(v) for v in encoded), default=1)
    return np.array(encoded, dtype=f"S{max(width, 1)}")


def write_10x_h5(
    path: Path,
    counts: sp.csr_matrix,
    barcodes: Sequence[str],
    gene_ids: Sequence[str],
    genes: Sequence[str],
    species: str,
) -> None:
    """10x HDF5 v3 feature-barcode matrix from ``counts`` (barcodes x genes).

    Stored as in Space Ranger: ``matrix/shape = [n_features, n_barcodes]`` and CSC
    arrays with one column per barcode.
    """
    n_barcodes, n_genes = counts.shape
    if len(barcodes) != n_barcodes or len(genes) != n_genes or len(gene_ids) != n_genes:
        raise OptionError("barcodes/genes do not match the counts shape")
    # CSR of barcodes x genes == CSC of genes x barcodes.
    csr = sp.csr_matrix(counts, dtype=np.int32)
    csr.sort_indices()
    with h5py.File(path, "w", track_order=False) as f:
        f.attrs["filetype"] = "matrix"
        f.attrs["version"] = np.int64(2)
        f.attrs["software_version"] = "hestkit.synthetic"
        f.attrs["library_ids"] = _bytes_array(["synthetic"])
        f.attrs["chemistry_description"] = "Visium Spatial Gene Expression"
        m = f.create_group("matrix")
        opts: dict[str, object] = {
            "compression": "gzip",
            "compression_opts": 4,
            "shuffle": True,
        }
        m.create_dataset("barcodes", data=_bytes_array(barcodes), **opts)
        m.create_dataset("data", data=csr.data.astype(np.int32), **opts)
        m.create_dataset("indices", data=csr.indices.astype(np.int64), **opts)
        m.create_dataset("indptr", data=csr.indptr.astype(np.int64), **opts)
        m.create_dataset("shape", data=np.array([n_genes, n_barcodes], dtype=np.int32))
        feats = m.create_group("features")
        feats.create_dataset("id", data=_bytes_array(gene_ids), **opts)
        feats.create_dataset("name", data=_bytes_array(genes), **opts)
        feats.create_dataset("feature_type", data=_bytes_array([FEATURE_TYPE] * n_genes), **opts)
        feats.create_dataset("genome", data=_bytes_array([_genome(species)] * n_genes), **opts)
        feats.create_dataset("_all_tag_keys", data=_bytes_array(["genome"]))


def _write_gz(path: Path, text: str) -> None:
    with (
        open(path, "wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz,
    ):
        gz.write(text.encode("utf-8"))


def write_mex(
    folder: Path,
    counts: sp.csr_matrix,
    barcodes: Sequence[str],
    gene_ids: Sequence[str],
    genes: Sequence[str],
) -> None:
    """MEX folder: ``matrix.mtx.gz`` (features x barcodes), ``barcodes.tsv.gz``,
    ``features.tsv.gz`` (``id<TAB>name<TAB>Gene Expression``)."""
    folder.mkdir(parents=True, exist_ok=True)
    n_barcodes, n_genes = counts.shape
    coo = sp.csc_matrix(counts, dtype=np.int32).T.tocoo()  # genes x barcodes
    order = np.lexsort((coo.row, coo.col))
    rows, cols, vals = coo.row[order], coo.col[order], coo.data[order]
    buf = io.StringIO()
    buf.write("%%MatrixMarket matrix coordinate integer general\n")
    meta = {"software_version": "hestkit.synthetic", "format_version": 2}
    buf.write(f"%metadata_json: {json.dumps(meta)}\n")
    buf.write(f"{n_genes} {n_barcodes} {vals.size}\n")
    body = np.stack([rows + 1, cols + 1, vals], axis=1).astype(np.int64)
    np.savetxt(buf, body, fmt="%d", delimiter=" ")
    _write_gz(folder / "matrix.mtx.gz", buf.getvalue())
    _write_gz(folder / "barcodes.tsv.gz", "".join(f"{b}\n" for b in barcodes))
    _write_gz(
        folder / "features.tsv.gz",
        "".join(f"{i}\t{g}\t{FEATURE_TYPE}\n" for i, g in zip(gene_ids, genes, strict=True)),
    )


def write_tissue_positions(
    path: Path,
    *,
    barcodes: Sequence[str],
    in_tissue: NDArray[np.bool_],
    array_row: NDArray[np.int64],
    array_col: NDArray[np.int64],
    centres_px: NDArray[np.float64],
    header: bool,
) -> None:
    """``tissue_positions(.csv|_list.csv)``: one line per grid spot, integer pixels.

    Columns ``barcode, in_tissue, array_row, array_col, pxl_row_in_fullres,
    pxl_col_in_fullres`` (row = y, col = x); Space Ranger 2 writes this header,
    Space Ranger 1 does not.
    """
    lines = []
    if header:
        lines.append("barcode,in_tissue,array_row,array_col,pxl_row_in_fullres,pxl_col_in_fullres")
    xs = np.rint(centres_px[:, 0]).astype(np.int64)
    ys = np.rint(centres_px[:, 1]).astype(np.int64)
    for i, bc in enumerate(barcodes):
        lines.append(f"{bc},{int(in_tissue[i])},{array_row[i]},{array_col[i]},{ys[i]},{xs[i]}")
    path.write_text("\n".join(lines) + "\n", encoding="ascii")


def write_scalefactors(
    path: Path,
    *,
    hires: float,
    lowres: float,
    spot_diameter_px: float,
    fiducial_diameter_px: float,
) -> None:
    """``scalefactors_json.json`` with the four Space Ranger keys."""
    payload = {
        "tissue_hires_scalef": hires,
        "tissue_lowres_scalef": lowres,
        "fiducial_diameter_fullres": fiducial_diameter_px,
        "spot_diameter_fullres": spot_diameter_px,
    }
    path.write_text(json.dumps(payload, indent=4) + "\n", encoding="ascii")
