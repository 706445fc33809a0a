"""The Visium reader on a real Space Ranger 1.x run (10x mouse brain, via Seurat's test data)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from hestkit.geometry import estimate_pixel_size_from_grid, visium_array_to_um
from hestkit.readers import VisiumReader, find_reader, read_tissue_positions
from hestkit.sample import ReadOptions


@pytest.fixture()
def mousebrain(realdata: Path) -> Path:
    return realdata / "visium_seurat_mousebrain"


def test_positions_without_header(mousebrain: Path) -> None:
    pos = read_tissue_positions(mousebrain / "spatial" / "tissue_positions_list.csv")
    assert len(pos) == 4992
    assert int(pos["in_tissue"].sum()) == 2695
    assert pos["array_row"].max() == 77 and pos["array_col"].max() == 127


def test_pixel_size_from_spacing_not_diameter(mousebrain: Path) -> None:
    pos = read_tissue_positions(mousebrain / "spatial" / "tissue_positions_list.csv")
    est = estimate_pixel_size_from_grid(
        visium_array_to_um(pos["array_row"], pos["array_col"]),
        pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(float),
    )
    assert est == pytest.approx(0.7246, rel=0.003)


def test_reader_counts_and_alignment_on_lowres(mousebrain: Path) -> None:
    assert isinstance(find_reader(mousebrain), VisiumReader)
    img = mousebrain / "spatial" / "tissue_lowres_image.png"
    reader = VisiumReader()
    (ref,) = reader.scan(mousebrain, ReadOptions(image=img))
    src = reader.load(ref)
    # counts equal a direct read of the vendor file
    with h5py.File(mousebrain / "filtered_feature_bc_matrix.h5") as f:
        total = float(f["matrix/data"][:].sum())
        n_feat, n_bc = f["matrix/shape"][:]
    assert src.counts.shape == (n_bc, n_feat) == (2695, 100)
    assert float(src.counts.sum()) == total == 132231
    # coordinates were scaled into the lowres image, and the pixel size with them
    assert src.pixel_size.source == "estimated"
    assert src.pixel_size.value == pytest.approx(0.7246 / 0.051635113, rel=0.003)
    # spots land on tissue: in-tissue spots are darker than off-tissue ones in the image
    pos = read_tissue_positions(mousebrain / "spatial" / "tissue_positions_list.csv")
    grey = np.asarray(Image.open(img).convert("L"), dtype=float)
    s = 0.051635113
    x = np.clip((pos["pxl_col_in_fullres"] * s).round().astype(int), 0, grey.shape[1] - 1)
    y = np.clip((pos["pxl_row_in_fullres"] * s).round().astype(int), 0, grey.shape[0] - 1)
    g = grey[y, x]
    inside = pos["in_tissue"].to_numpy() == 1
    # AUC of "darker means in tissue"
    a, b = g[inside], g[~inside]
    auc = (a[:, None] < b[None, :]).mean()
    assert auc > 0.95
    # the reader's own centres are the same pixels
    np.testing.assert_allclose(
        src.spots[["x_px", "y_px"]].to_numpy(),
        pos.set_index("barcode").loc[src.spots["barcode"], ["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy() * s,
    )
