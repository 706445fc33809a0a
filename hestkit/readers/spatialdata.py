"""SpatialData zarr stores (as written by spatialdata-io readers or ``hestkit export``).

The table annotates a shapes element (spots: circles with a radius, or polygons); an
image element sharing a coordinate system with the spots is the slide. Spot centres are
mapped into the image's pixels through the stores' coordinate transformations.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from ..errors import Problem, ReaderError, ValidationError, fix
from ..geometry import estimate_pixel_size_from_grid, resolve_pixel_size, visium_array_to_um
from ..sample import ReadOptions, SampleRef, SampleSource
from ..slide import open_slide
from ._common import check_spots_inside, spots_from_obs
from ._tenx import make_unique

__all__ = ["SpatialDataReader"]

_UM_SYSTEMS = ("micrometres", "micrometers", "microns", "um", "µm")


def _is_store(path: Path) -> bool:
    return path.is_dir() and ((path / "zarr.json").exists() or (path / ".zgroup").exists()) and (path / "tables").is_dir()


def _affine(element: Any, cs: str) -> np.ndarray:
    from spatialdata.transformations import get_transformation

    t = get_transformation(element, to_coordinate_system=cs)
    return np.asarray(t.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y")), dtype=float)


class SpatialDataReader:
    """A SpatialData ``.zarr`` store with a table, the shapes it annotates, and an image."""

    name = "spatialdata"
    description = "SpatialData zarr store (images/, shapes/, tables/) from spatialdata-io or hestkit export"

    def can_open(self, path: Path) -> bool:
        return _is_store(path)

    def scan(self, path: Path, options: ReadOptions) -> list[SampleRef]:
        if not _is_store(path):
            raise ReaderError(path, "is not a SpatialData store (no tables/ in a zarr group)", "point at the .zarr folder")
        return [SampleRef(self.name, options.sample_id or path.name.removesuffix(".zarr"), path, options)]

    def load(self, ref: SampleRef) -> SampleSource:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                import spatialdata as sd
        except ImportError as exc:
            raise ReaderError(ref.path, f"needs the spatialdata package ({exc})", "pip install 'hestkit[spatialdata]'") from exc
        path, opts = ref.path, ref.options
        problems: list[Problem] = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sdata = sd.read_zarr(str(path))
        tables = dict(sdata.tables)
        if not tables:
            raise ValidationError(f"SpatialData store {path}", [Problem(path / "tables", "no table (expression) in the store")])
        tname, table = next(iter(tables.items()))
        attrs = table.uns.get("spatialdata_attrs", {})
        region = attrs.get("region")
        region = region[0] if isinstance(region, list) else region
        if region not in sdata.shapes:
            raise ValidationError(
                f"SpatialData store {path}",
                [
                    Problem(
                        path / "tables" / tname,
                        f"annotates {region!r}, which is not a shapes element (have {list(sdata.shapes)})",
                    )
                ],
            )
        shapes = sdata.shapes[region]
        images = dict(sdata.images)
        if opts.image is not None:
            problems.append(
                Problem(opts.image, "an image (image) is not used with SpatialData stores: the store's image is the slide", fix("leave image out"))
            )
        shape_cs = set(_systems(shapes))
        cand = [n for n, im in images.items() if shape_cs & set(_systems(im))]
        if not cand:
            problems.append(
                Problem(
                    path / "images", "the store has no image sharing a coordinate system with the spots; add the H&E image to it"
                )
            )
        if problems:
            raise ValidationError(f"SpatialData store {path}", problems)
        # the largest image is the slide (spatialdata-io stores also carry hires/lowres copies)
        iname = max(cand, key=lambda n: _size(images[n]))
        cs = sorted(shape_cs & set(_systems(images[iname])))[0]
        m = np.linalg.inv(_affine(images[iname], cs)) @ _affine(shapes, cs)
        ikey = attrs.get("instance_key")
        inst = table.obs[ikey].to_numpy() if ikey in table.obs else table.obs_names.to_numpy()
        geo = shapes.loc[inst]
        cx = geo.geometry.centroid.x.to_numpy()
        cy = geo.geometry.centroid.y.to_numpy()
        xy = np.column_stack([cx, cy]) @ m[:2, :2].T + m[:2, 2]
        scale = math.sqrt(abs(np.linalg.det(m[:2, :2])))
        if "radius" in geo.columns:
            diam_shape = 2.0 * float(np.median(geo["radius"].to_numpy(dtype=float)))
            spot_shape = "circle"
        else:
            diam_shape = float(np.median(np.sqrt(geo.geometry.area.to_numpy())))
            spot_shape = "square"
        spots = spots_from_obs(table.obs, table.obs_names, xy)
        slide_path = path / "images" / iname
        slide = open_slide(slide_path)
        check_spots_inside(spots[spots["in_tissue"] > 0], slide, problems, path / "shapes" / str(region))
        slide.close()
        if problems:
            raise ValidationError(f"SpatialData store {path}", problems)
        hk: dict[str, Any] = dict(table.uns.get("hestkit", {}))
        # pixel size: a micrometre coordinate system of the image, else the Visium grid
        embedded = None
        for name in _systems(images[iname]):
            if name.lower() in _UM_SYSTEMS:
                embedded = math.sqrt(abs(np.linalg.det(_affine(images[iname], name)[:2, :2])))
        estimated = None
        technology = str(hk.get("technology") or "visium")
        if technology == "visium" and (spots["array_row"] >= 0).all() and len(spots) >= 3:
            estimated = estimate_pixel_size_from_grid(
                visium_array_to_um(spots["array_row"], spots["array_col"]), spots[["x_px", "y_px"]]
            )
        decision = resolve_pixel_size(
            embedded=embedded, estimated=estimated, override=opts.pixel_size_um, subject=f"{ref.sample_id} ({path.name})"
        )
        spot_um = float(hk["spot_diameter_um"]) if "spot_diameter_um" in hk else diam_shape * scale * decision.value
        x = table.layers["counts"] if "counts" in table.layers else table.X
        counts = sp.csr_matrix(x)
        md: dict[str, Any] = {
            "organ": opts.organ or hk.get("organ") or None,
            "species": opts.species or hk.get("species") or None,
            "patient": opts.patient or hk.get("patient") or None,
            "spatialdata_image": iname,
            "spatialdata_coordinate_system": cs,
        }
        return SampleSource(
            sample_id=ref.sample_id,
            technology=technology,
            counts=counts,
            genes=make_unique([str(g) for g in table.var_names]),
            gene_ids=[str(g) for g in (table.var["gene_ids"] if "gene_ids" in table.var else table.var_names)],
            spots=spots,
            image_path=slide_path,
            pixel_size=decision,
            spot_diameter_um=spot_um,
            spot_shape=spot_shape,  # type: ignore[arg-type]
            metadata=md,
            source_paths=[str(path)],
            counts_path=str(path / "tables" / tname),
            spots_path=str(path / "shapes" / str(region)),
            warnings=[decision.warning] if decision.warning else [],
        )


def _systems(element: Any) -> list[str]:
    from spatialdata.transformations import get_transformation

    return list(get_transformation(element, get_all=True).keys())


def _size(image: Any) -> int:
    try:
        arr = image["scale0"].ds["image"] if hasattr(image, "children") and "scale0" in image.children else image
        return int(np.prod(arr.shape))
    except Exception:  # noqa: BLE001
        return 0
