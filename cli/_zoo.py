"""``seal models``: the model zoo's presets; writing embeddings to an ``.npz`` file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ._common import handle_errors, print_table

__all__ = ["models", "write_npz"]


def models(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also show the timm name, checkpoint files and layout.")] = False,
) -> None:
    """List the model-zoo presets: embedding size, input size, parameters.

    Use them as PRESET@WEIGHTS in --backbone / --encoder. Facts and sources: docs/models.md."""
    with handle_errors():
        import pandas as pd

        from seal.zoo import PRESETS, param_count

        rows: list[dict[str, Any]] = []
        for p in PRESETS.values():
            row: dict[str, Any] = {
                "preset": p.name,
                "model": p.title,
                "dim": p.dim,
                "input": f"{p.input_size}px",
                "params_M": round(param_count(p) / 1e6, 1),
                "output": p.output,
            }
            if verbose:
                row.update(timm=p.timm_name, layout=p.layout, files=", ".join(p.files), weights_from=p.hf_repo)
            rows.append(row)
        print_table(pd.DataFrame(rows), title="seal model zoo (weights: PRESET@FILE_OR_FOLDER, never downloaded)")


def write_npz(path: Path, emb: Any, view: Any) -> None:
    """``embeddings`` (n x d float32), ``sample_id`` and ``barcode`` (unicode arrays: no
    pickle needed to read them) in the view's order, written atomically (a temporary file
    renamed into place)."""
    import os

    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    obs = view.obs
    np.savez(
        tmp,
        embeddings=np.asarray(emb, dtype=np.float32),
        sample_id=np.asarray(obs["sample_id"].astype(str).tolist(), dtype=str),
        barcode=np.asarray(obs["barcode"].astype(str).tolist(), dtype=str),
    )
    os.replace(tmp, path)
