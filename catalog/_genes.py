"""Gene identity in queries (symbols or ids) and which samples measured which genes.

var holds the gene union: ``var_id`` (the name a sample's source lists, a symbol such as
``Xkr4`` or, for runs that list only ids, an id such as ``ENSMUSG00000051951.5``) and
``gene_id`` (the source's gene id; equal to ``var_id`` when the source has only one). A
query names a gene by either, matched case-sensitively (``Xkr4`` is the mouse gene,
``XKR4`` the human one), with an Ensembl version suffix optional.

A sample that did not measure a gene has no value for it, not a zero: views keep, per
sample, the var joinids it measured (:class:`MeasuredGenes`).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = ["MeasuredGenes", "UnmeasuredGeneWarning", "resolve_genes", "strip_version"]

_VERSION = re.compile(r"^(ENS[A-Z]*[GTP]\d+)\.\d+$")


class UnmeasuredGeneWarning(UserWarning):
    """Some selected samples did not measure some selected genes (their zeros are not measurements)."""


def strip_version(gene: str) -> str:
    """An Ensembl id without its version suffix (``ENSMUSG00000051951.5`` -> ``ENSMUSG00000051951``);
    anything else unchanged."""
    m = _VERSION.match(gene)
    return m.group(1) if m else gene


def resolve_genes(
    wanted: Sequence[str], names: np.ndarray, gene_ids: np.ndarray | None, present: np.ndarray
) -> tuple[list[int], list[str], dict[str, list[str]]]:
    """Map query genes to var joinids among ``present`` ones (a mask over var).

    Each name is tried as a ``var_id``, then as a ``gene_id``, then as an Ensembl id
    without version, always case-sensitively. Returns the joinids found (query order),
    the names not found, and for those, case-insensitive near misses to suggest."""
    pj = np.flatnonzero(present)
    pnames = [str(n) for n in names[pj]]
    by_name = {n: int(j) for n, j in zip(pnames, pj, strict=True)}
    by_id: dict[str, int] = {}
    by_stripped: dict[str, int] = {}
    pids = [str(x) for x in gene_ids[pj]] if gene_ids is not None else [""] * len(pj)
    for n, gid, j in zip(pnames, pids, pj.tolist(), strict=True):
        if gid:
            by_id.setdefault(gid, j)
            by_stripped.setdefault(strip_version(gid), j)
        by_stripped.setdefault(strip_version(n), j)
    found: list[int] = []
    missing: list[str] = []
    for g in (str(x) for x in wanted):
        j = by_name.get(g, by_id.get(g, by_stripped.get(strip_version(g), -1)))
        if j >= 0:
            found.append(j)
        else:
            missing.append(g)
    hints: dict[str, list[str]] = {}
    if missing:
        folded: dict[str, list[str]] = {}
        for n in pnames:
            folded.setdefault(n.casefold(), []).append(n)
        for g in missing:
            near = folded.get(g.casefold())
            if near:
                hints[g] = near[:3]
    return found, missing, hints


class MeasuredGenes:
    """Which genes each sample of a view measured: per sample id, the var joinids of its
    genes (arrays shared between samples of one gene list). Pickles with the view."""

    def __init__(self, by_sample: dict[str, np.ndarray] | None = None) -> None:
        self.by_sample = dict(by_sample or {})

    def known(self) -> bool:
        return bool(self.by_sample)

    def sample_mask(self, samples: Sequence[str], var_joinids: np.ndarray) -> np.ndarray:
        """(n_samples, n_genes) bool: sample ``i`` measured gene ``k`` (var joinid
        ``var_joinids[k]``). Samples without a record count as measuring every gene."""
        vj = np.asarray(var_joinids, dtype=np.int64)
        out = np.ones((len(samples), len(vj)), dtype=bool)
        done: dict[int, np.ndarray] = {}
        for i, s in enumerate(samples):
            arr = self.by_sample.get(s)
            if arr is None:
                continue
            row = done.get(id(arr))
            if row is None:
                row = np.isin(vj, arr)
                done[id(arr)] = row
            out[i] = row
        return out

    def lacking(self, samples: Sequence[str], genes: Sequence[str], var_joinids: np.ndarray) -> pd.Series:
        """Per gene, how many of ``samples`` did not measure it."""
        m = self.sample_mask(samples, var_joinids)
        return pd.Series((~m).sum(axis=0), index=pd.Index(list(genes), name="gene"), name="n_samples_lacking")


def warn_unmeasured(lacking: pd.Series, n_samples: int, stacklevel: int = 3) -> None:
    """Warn (:class:`UnmeasuredGeneWarning`) when some genes were not measured by some samples."""
    bad = lacking[lacking > 0]
    if bad.empty:
        return
    show = ", ".join(f"{g} ({int(n)} of {n_samples})" for g, n in bad.head(8).items())
    more = f" and {len(bad) - 8} more" if len(bad) > 8 else ""
    warnings.warn(
        f"{len(bad)} gene(s) were not measured by some selected samples, whose pairs hold 0 for them: {show}{more}. "
        "These zeros are not measurements: use view.measured / view.measured_mask(), or expression(unmeasured='nan')",
        UnmeasuredGeneWarning,
        stacklevel=stacklevel,
    )
