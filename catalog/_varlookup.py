"""Gene lists against var: which var joinids a sample's genes are, computed once per
distinct list and cached per process (see :class:`VarLookup`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["VarLookup", "share_gene_list"]

#: Distinct inline gene lists of cached 1.x manifests, so that samples of one panel share
#: one list object.
_GENE_LISTS: dict[tuple[int, str, str, str], list[list[str]]] = {}


def share_gene_list(manifest: dict[str, Any]) -> None:
    """Make a 1.x manifest's inline gene list the one list object of its content."""
    genes = manifest.get("genes")
    if not isinstance(genes, list) or not genes:
        return
    key = (len(genes), str(genes[0]), str(genes[len(genes) // 2]), str(genes[-1]))
    bucket = _GENE_LISTS.setdefault(key, [])
    for known in bucket:
        if known == genes:
            manifest["genes"] = known
            return
    bucket.append(genes)


class VarLookup:
    """The catalog's var (gene union) as arrays, with the var joinids of each distinct
    gene list of the manifests (samples of one panel share one list, computed once)."""

    def __init__(
        self, signature: tuple[str, ...], names: np.ndarray, joinids: np.ndarray, gene_ids: np.ndarray | None = None
    ) -> None:
        self.signature = signature
        n = int(joinids.max()) + 1 if len(joinids) else 0
        self.names = np.empty(n, dtype=object)
        self.names[joinids] = names
        #: var ``gene_id`` by joinid (None when not read).
        self.gene_ids: np.ndarray | None = None
        if gene_ids is not None:
            self.gene_ids = np.empty(n, dtype=object)
            self.gene_ids[joinids] = gene_ids
        self._index = pd.Index(names.astype(object))
        self._joinids = np.asarray(joinids, dtype=np.int64)
        self._lists: dict[tuple[int, str, str, str], list[tuple[list[str], np.ndarray]]] = {}
        self._by_ingest: dict[str, np.ndarray] = {}
        self._by_ref: dict[str, np.ndarray] = {}
        self._unions: dict[tuple[str, ...], np.ndarray] = {}

    def inherit(self, old: VarLookup) -> None:
        """Keep the per-ingest gene joinids of an older lookup: var is append-only, so a
        joinid, once given to a gene, never changes."""
        self._lists = dict(old._lists)
        self._by_ingest = dict(old._by_ingest)
        self._by_ref = dict(old._by_ref)
        self._unions = dict(old._unions)

    def lookup(self, genes: Sequence[str]) -> np.ndarray:
        """var joinids of ``genes`` (-1 where absent)."""
        pos = self._index.get_indexer(np.asarray(list(genes), dtype=object))
        return np.where(pos >= 0, self._joinids[pos], -1).astype(np.int64)

    def present(
        self,
        manifests: Sequence[dict[str, Any]],
        genes_of: Callable[[dict[str, Any]], list[str]],
        indexed: Callable[[Sequence[str]], dict[str, np.ndarray]] | None = None,
    ) -> np.ndarray:
        """A mask over var joinids: the genes of any of ``manifests``.

        2.x manifests share gene lists by ``genes_ref``; each list not mapped yet is
        taken from its stored var-joinid index (``indexed(refs)``: one small binary read
        per list, no names parsed). Lists without an index (catalogs written before it)
        are loaded (``genes_of``) and mapped as ONE union of names (hashing each name once
        is ~3x cheaper than an index lookup per list). The result is cached per set of
        lists, so a repeated query only ORs a cached mask."""
        mask = np.zeros(len(self.names), dtype=bool)
        by_ref: dict[str, dict[str, Any]] = {}
        for m in manifests:
            ref = m.get("genes_ref")
            if ref is None:
                mask[self.joinids_of(m, genes_of)] = True
            else:
                by_ref.setdefault(str(ref), m)
        if not by_ref:
            return mask
        key = tuple(sorted(by_ref))
        hit = self._unions.get(key)
        if hit is None:
            hit = np.zeros(len(self.names), dtype=bool)
            todo = [r for r in by_ref if r not in self._by_ref]
            if todo and indexed is not None:
                for ref, j in indexed(todo).items():
                    self._by_ref[ref] = j
            names: set[str] = set()
            for ref, m in by_ref.items():
                known = self._by_ref.get(ref)
                if known is not None:
                    hit[known] = True
                else:
                    names.update(genes_of(m))
            if names:
                j = self.lookup(list(names))
                hit[j[j >= 0]] = True
            if len(self._unions) >= 64:  # a few recent selections; each mask is len(var) bytes
                self._unions.pop(next(iter(self._unions)))
            self._unions[key] = hit
        mask |= hit
        return mask

    def accept_index(self, joinids: np.ndarray) -> bool:
        """A stored var-joinid index is usable: int, 1-D, inside this var."""
        return (
            joinids.ndim == 1
            and joinids.dtype.kind in "iu"
            and (len(joinids) == 0 or (int(joinids.min()) >= 0 and int(joinids.max()) < len(self.names)))
        )

    def joinids_of(
        self,
        manifest: dict[str, Any],
        genes_of: Callable[[dict[str, Any]], list[str]],
        indexed: Callable[[Sequence[str]], dict[str, np.ndarray]] | None = None,
    ) -> np.ndarray:
        """var joinids of a manifest's genes: from the list's stored index, else by mapping
        ``genes_of(manifest)`` (called only when not known yet), once per distinct list
        (by ``genes_ref`` for 2.x manifests, by ingest and list content for 1.x), so only
        the lists of the samples a query touches are ever loaded and mapped."""
        ref = manifest.get("genes_ref")
        if ref is not None:
            out = self._by_ref.get(str(ref))
            if out is None and indexed is not None:
                out = indexed([str(ref)]).get(str(ref))
            if out is None:
                out = self.lookup(genes_of(manifest))
                out = out[out >= 0]
            self._by_ref[str(ref)] = out
            return out
        iid = str(manifest["ingest_id"])
        out = self._by_ingest.get(iid)
        if out is not None:
            return out
        genes = genes_of(manifest)
        key = (len(genes), str(genes[0]), str(genes[len(genes) // 2]), str(genes[-1])) if genes else (0, "", "", "")
        bucket = self._lists.setdefault(key, [])
        for known, j in bucket:
            if known is genes or known == genes:
                out = j
                break
        else:
            out = self.lookup(genes)
            out = out[out >= 0]
            bucket.append((genes, out))
        self._by_ingest[iid] = out
        return out
