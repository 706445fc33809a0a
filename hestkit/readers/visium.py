"""10x Visium (Space Ranger 1.x and >= 2 ``outs/`` folders)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..errors import DataError, Fix, HestkitError, Problem, ReaderError, ValidationError
from ..geometry import estimate_pixel_size_from_grid, resolve_pixel_size, visium_array_to_um
from ..sample import ReadOptions, SampleRef, SampleSource
from ..slide import open_slide
from ._common import check_spots_inside, find_image, normalise_spots, positive_field
from ._tenx import make_unique, read_10x

__all__ = ["VISIUM_SPOT_DIAMETER_UM", "VisiumReader", "read_tissue_positions"]

VISIUM_SPOT_DIAMETER_UM = 55.0
_POS_COLUMNS = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]


def _positions_file(folder: Path) -> Path | None:
    for name in ("tissue_positions.csv", "tissue_positions_list.csv", "tissue_positions.parquet"):
        p = folder / "spatial" / name
        if p.exists():
            return p
    return None


def _matrix_path(folder: Path) -> Path | None:
    for name in ("filtered_feature_bc_matrix.h5", "filtered_feature_bc_matrix"):
        p = folder / name
        if p.exists():
            return p
    return None


def read_tissue_positions(path: Path) -> pd.DataFrame:
    """Read Space Ranger spot positions (1.x headerless CSV, >= 2 CSV with header, or
    parquet). Pixel columns are full-resolution pixels: row = y, col = x."""
    try:
        if path.suffix == ".parquet":
            df = pd.read_parquet(path)
        else:
            with open(path) as fh:
                first = fh.readline()
            has_header = "barcode" in first.lower() or "in_tissue" in first.lower()
            df = pd.read_csv(path, header=0 if has_header else None)
            if not has_header:
                if df.shape[1] != 6:
                    raise ReaderError(
                        path,
                        f"has {df.shape[1]} columns and no header; expected the 6 columns {', '.join(_POS_COLUMNS)}",
                        "use the tissue_positions file written by Space Ranger",
                    )
                df.columns = _POS_COLUMNS
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, ValueError) as exc:
        if isinstance(exc, ReaderError):
            raise
        raise ReaderError(
            path, f"cannot be parsed as a positions table ({exc})", "re-copy it from Space Ranger's outs/spatial/"
        ) from exc
    missing = [c for c in _POS_COLUMNS if c not in df.columns]
    if missing:
        raise ReaderError(
            path,
            f"lacks the column(s) {', '.join(missing)} (found {', '.join(map(str, df.columns))})",
            "use the tissue_positions file written by Space Ranger (header barcode,in_tissue,array_row,array_col,pxl_row_in_fullres,pxl_col_in_fullres)",
        )
    for c in _POS_COLUMNS[1:]:
        if not pd.api.types.is_numeric_dtype(df[c]):
            raise ReaderError(path, f"column {c} is not numeric", "re-copy the file; it looks edited or corrupt")
    return df


def _explain_missing_image(folder: Path, problems: list[Problem], scalef: dict[str, float], positions: pd.DataFrame | None) -> None:
    """Add to the missing-image problem which Space Ranger images exist and what using them means."""
    from ..resolution import spaceranger_images_hint

    est = None
    if positions is not None:
        try:
            est = estimate_pixel_size_from_grid(
                visium_array_to_um(positions["array_row"], positions["array_col"]),
                positions[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(dtype=float),
            )
        except HestkitError:
            est = None
    hint = spaceranger_images_hint(folder / "spatial", scalef, est)
    for k, p in enumerate(problems):
        if hint is not None and p.path == folder and "full-resolution image" in p.message:
            both = Fix(f"{p.fix or ''}{hint}", (*p.options, *hint.options))
            problems[k] = Problem(folder, p.message + hint.text, both)


class VisiumReader:
    """Space Ranger ``outs/`` folder: ``spatial/tissue_positions[_list].csv``,
    ``spatial/scalefactors_json.json``, ``filtered_feature_bc_matrix.h5`` (or MEX)."""

    name = "visium"
    description = "10x Visium Space Ranger outs/ folder (spatial/tissue_positions*.csv + filtered_feature_bc_matrix)"

    def can_open(self, path: Path) -> bool:
        return (
            path.is_dir()
            and _positions_file(path) is not None
            and not (path / "binned_outputs").exists()
            and (_matrix_path(path) is not None or (path / "spatial" / "scalefactors_json.json").exists())
        )

    def scan(self, path: Path, options: ReadOptions) -> list[SampleRef]:
        sid = options.sample_id or (path.parent.name if path.name == "outs" else path.name)
        return [SampleRef(self.name, sid, path, options)]

    def load(self, ref: SampleRef) -> SampleSource:
        folder, opts = ref.path, ref.options
        problems: list[Problem] = []
        mpath = _matrix_path(folder)
        ppath = _positions_file(folder)
        spath = folder / "spatial" / "scalefactors_json.json"
        matrix = positions = None
        scalef: dict[str, float] = {}
        if mpath is None:
            problems.append(Problem(folder, "no filtered_feature_bc_matrix.h5 (or filtered_feature_bc_matrix/ MEX folder)"))
        else:
            try:
                matrix = read_10x(mpath)
            except ReaderError as exc:
                problems.append(Problem.of(exc))
        if ppath is None:
            problems.append(Problem(folder / "spatial", "no tissue_positions.csv or tissue_positions_list.csv"))
        else:
            try:
                positions = read_tissue_positions(ppath)
            except ReaderError as exc:
                problems.append(Problem.of(exc))
        if not spath.exists():
            problems.append(Problem(spath, "missing; copy spatial/scalefactors_json.json from Space Ranger's outs/"))
        else:
            try:
                scalef = json.loads(spath.read_text())
                if not isinstance(scalef, dict):
                    raise DataError("not a JSON object")
            except (ValueError, UnicodeDecodeError) as exc:
                problems.append(Problem(spath, f"is not valid JSON ({exc})"))
        image_path = find_image(folder, opts.image, problems)

        # Which frame the coordinates are in: full resolution, unless the image is
        # Space Ranger's own hires/lowres PNG, whose scale factor we then apply.
        coord_scale = 1.0
        if image_path is not None and scalef:
            if image_path.name == "tissue_hires_image.png":
                coord_scale = positive_field(scalef, "tissue_hires_scalef", spath, problems, default=1.0) or 1.0
            elif image_path.name == "tissue_lowres_image.png":
                coord_scale = positive_field(scalef, "tissue_lowres_scalef", spath, problems, default=1.0) or 1.0
        spot_diam_px = positive_field(scalef, "spot_diameter_fullres", spath, problems) if scalef else None

        spots = None
        counts = None
        if matrix is not None and positions is not None and ppath is not None and mpath is not None:
            pos = positions.set_index(positions["barcode"].astype(str))
            if pos.index.has_duplicates:
                problems.append(Problem(ppath, "lists some barcodes more than once"))
            absent = [b for b in matrix.barcodes if b not in pos.index]
            if absent:
                show = ", ".join(absent[:5]) + (" ..." if len(absent) > 5 else "")
                problems.append(
                    Problem(
                        mpath,
                        f"{len(absent)} of {len(matrix.barcodes)} barcodes of the matrix are absent from {ppath.name} "
                        f"({show}); the matrix and the positions come from different runs",
                    )
                )
            else:
                p = pos.loc[matrix.barcodes]
                df = pd.DataFrame(
                    {
                        "barcode": matrix.barcodes,
                        "in_tissue": p["in_tissue"].to_numpy(),
                        "array_row": p["array_row"].to_numpy(),
                        "array_col": p["array_col"].to_numpy(),
                        "x_px": p["pxl_col_in_fullres"].to_numpy(dtype=float) * coord_scale,
                        "y_px": p["pxl_row_in_fullres"].to_numpy(dtype=float) * coord_scale,
                    }
                )
                um = visium_array_to_um(df["array_row"], df["array_col"])
                df["x_um"], df["y_um"] = um[:, 0], um[:, 1]
                spots = normalise_spots(df)
                counts = matrix.counts

        slide = None
        if image_path is not None:
            try:
                slide = open_slide(image_path)
            except ReaderError as exc:
                problems.append(Problem.of(exc))
        if slide is not None and spots is not None:
            check_spots_inside(spots[spots["in_tissue"] > 0], slide, problems, ppath)
        if image_path is None and opts.image is None:
            _explain_missing_image(folder, problems, scalef, positions)
        if problems:
            raise ValidationError(f"Visium sample {ref.sample_id!r} at {folder}", problems)
        # mypy: everything below exists when no problem was recorded
        if spots is None or counts is None or slide is None or image_path is None or positions is None or matrix is None:
            raise ValidationError(f"Visium sample {ref.sample_id!r} at {folder}", [Problem(folder, "incomplete sample")])

        # Pixel size: estimate from the whole array (all spots, in or out of tissue).
        grid = visium_array_to_um(positions["array_row"], positions["array_col"])
        centres = positions[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(dtype=float) * coord_scale
        estimated = estimate_pixel_size_from_grid(grid, centres)
        embedded = slide.embedded_pixel_size_um
        slide.close()
        decision = resolve_pixel_size(
            embedded=embedded, estimated=estimated, override=opts.pixel_size_um, subject=f"{ref.sample_id} ({image_path.name})"
        )
        warnings = [decision.warning] if decision.warning else []
        metadata = {
            "organ": opts.organ,
            "species": opts.species,
            "patient": opts.patient,
            "spaceranger_layout": "1.x" if ppath is not None and ppath.name == "tissue_positions_list.csv" else ">=2",
            "spot_diameter_fullres": spot_diam_px,
            "coordinate_scale": coord_scale,
        }
        return SampleSource(
            sample_id=ref.sample_id,
            technology="visium",
            counts=counts,
            genes=make_unique(matrix.names),
            gene_ids=matrix.ids,
            spots=spots,
            image_path=image_path,
            pixel_size=decision,
            spot_diameter_um=VISIUM_SPOT_DIAMETER_UM,
            spot_shape="circle",
            metadata=metadata,
            source_paths=[str(p) for p in (mpath, ppath, spath, image_path) if p is not None],
            warnings=warnings,
            counts_path=str(mpath) if mpath is not None else None,
            spots_path=str(ppath) if ppath is not None else None,
        )
