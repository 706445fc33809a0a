"""``hestkit query --out -``: the selection as tab-separated text on stdout, for pipes.

One header line, then one line per pair: ``obs_name`` (``{sample_id}_{barcode}``, as in
the AnnData export), the pair's obs columns (sample, barcode, organ, technology, spot
centre in px and um, tissue and patch-validity fractions, ...), then one column per gene
with the raw counts. A gene the pair's sample did not measure is an empty field, never a
0 (a measured zero is written ``0``). Rows are written in blocks, so a large selection
never sits in memory whole.
"""

from __future__ import annotations

from typing import Any, TextIO

__all__ = ["STDOUT", "write_stdout", "write_tsv"]

#: The ``--out`` value that means stdout.
STDOUT = "-"

#: obs columns that only make sense inside the catalog (row ids, the ingest generation,
#: the position in the patch array); left out of the text output.
_INTERNAL = ("soma_joinid", "obs_id", "ingest_id", "patch_index")

#: Pairs per block read and written at a time.
_BLOCK = 4096


def write_tsv(view: Any, stream: TextIO, block: int = _BLOCK) -> int:
    """Write ``view`` (a :class:`catalog.PairView`) to ``stream`` as described above;
    returns the number of pairs written."""
    import numpy as np
    import pandas as pd

    cols = [c for c in view.obs.columns if c not in _INTERNAL]
    header = ["obs_name", *cols, *view.genes]
    if not len(view):
        stream.write("\t".join(header) + "\n")
        return 0
    for lo in range(0, len(view), block):
        sub = view.subset(np.arange(lo, min(lo + block, len(view))))
        obs = sub.obs[cols].reset_index(drop=True)
        names = obs["sample_id"].astype(str) + "_" + obs["barcode"].astype(str)
        X = sub.expression(unmeasured="nan")
        df = pd.concat([names.rename("obs_name"), obs, pd.DataFrame(X, columns=pd.Index(view.genes))], axis=1)
        df.to_csv(stream, sep="\t", index=False, header=lo == 0, float_format="%g", na_rep="", lineterminator="\n")
    return len(view)


def write_stdout(view: Any) -> int:
    """:func:`write_tsv` to stdout. A reader that stops early (``| head``) ends the
    command quietly with exit code 0, as ``cat`` does, instead of a traceback."""
    import os
    import sys

    import typer

    try:
        n = write_tsv(view, sys.stdout)
        sys.stdout.flush()
    except BrokenPipeError:
        # further writes (and the interpreter's final flush) would fail again: point
        # stdout at /dev/null, then stop
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(0) from None
    return n
