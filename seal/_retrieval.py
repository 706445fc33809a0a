"""Gene-to-image retrieval metrics, computed in chunks (no n x n matrix)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .errors import EvalError

__all__ = ["retrieval_metrics", "retrieval_ranks"]

# at most this many similarity values (float64) in memory at once: 2**24 -> 128 MiB
_MAX_BLOCK = 2**24


def _unit_rows(x: NDArray[np.float64], name: str) -> NDArray[np.float64]:
    norms = np.linalg.norm(x, axis=1)
    zero = norms == 0
    if zero.any():
        warnings.warn(
            f"{int(zero.sum())} row(s) of {name} are all-zero; their cosine similarity is taken as 0 to everything.",
            stacklevel=3,
        )
    return x / np.where(zero, 1.0, norms)[:, None]


def retrieval_ranks(
    image_emb: ArrayLike, expr_emb: ArrayLike, *, chunk_size: int = 1024, centre: bool = False
) -> NDArray[np.int64]:
    """Rank (1 = best) of the true patch ``i`` for each expression query ``i`` among all
    ``n`` image embeddings, by cosine similarity. Ties are resolved pessimistically:
    rank = 1 + #(others strictly more similar) + #(others equally similar).

    Queries are processed ``chunk_size`` at a time (fewer when ``n`` is large, so that
    one block holds at most 2**24 similarities). ``centre`` subtracts each side's mean over
    the set before the cosine, as a model trained with centred embeddings
    (``FitConfig.centre_embeddings``) compares them.
    """
    img = np.asarray(image_emb, dtype=np.float64)
    exp = np.asarray(expr_emb, dtype=np.float64)
    if img.ndim != 2 or exp.ndim != 2 or img.shape != exp.shape:
        raise EvalError(
            f"image_emb has shape {img.shape} and expr_emb {exp.shape}; expected two (n, d) arrays of equal shape, "
            "row i of both describing spot i. Fix: project both into the shared space and align their rows."
        )
    if img.shape[0] == 0:
        raise EvalError("image_emb and expr_emb are empty; expected >= 1 row.")
    if not (np.all(np.isfinite(img)) and np.all(np.isfinite(exp))):
        raise EvalError("image_emb or expr_emb contains NaN or infinite values; expected finite embeddings.")
    if chunk_size < 1:
        raise EvalError(f"chunk_size={chunk_size}; expected >= 1.")
    n = img.shape[0]
    if centre:
        img = img - img.mean(axis=0, keepdims=True)
        exp = exp - exp.mean(axis=0, keepdims=True)
    img_u = _unit_rows(img, "image_emb")
    exp_u = _unit_rows(exp, "expr_emb")
    step = max(1, min(int(chunk_size), _MAX_BLOCK // n))
    ranks = np.empty(n, dtype=np.int64)
    for start in range(0, n, step):
        stop = min(start + step, n)
        sims = exp_u[start:stop] @ img_u.T  # (chunk, n)
        rows = np.arange(stop - start)
        true = sims[rows, np.arange(start, stop)]
        # counts the true patch itself (>= true) plus every other patch scoring >= it
        ranks[start:stop] = (sims >= true[:, None]).sum(axis=1)
    return ranks


def retrieval_metrics(
    image_emb: ArrayLike,
    expr_emb: ArrayLike,
    ks: Sequence[int] = (1, 5, 10),
    *,
    chunk_size: int = 1024,
    centre: bool = False,
) -> dict[str, float]:
    """Gene-to-image retrieval: query with ``expr_emb[i]``, rank all patches ``image_emb[j]``
    by cosine similarity; the correct answer is ``j = i`` (see :func:`retrieval_ranks`).

    Returns ``recall_at_{k}`` (fraction of queries whose true patch ranks <= k),
    ``chance_recall_at_{k}`` (= min(k / n, 1), a random ranking's expectation),
    ``median_rank``, ``chance_median_rank`` (= (n + 1) / 2) and ``n_queries``.
    """
    ks_list = [int(k) for k in ks]
    if not ks_list or any(k < 1 for k in ks_list):
        raise EvalError(f"ks={list(ks)!r}; expected one or more positive integers, e.g. (1, 5, 10).")
    ranks = retrieval_ranks(image_emb, expr_emb, chunk_size=chunk_size, centre=centre)
    n = len(ranks)
    out: dict[str, float] = {}
    for k in ks_list:
        out[f"recall_at_{k}"] = float(np.mean(ranks <= k))
    out["median_rank"] = float(np.median(ranks))
    for k in ks_list:
        out[f"chance_recall_at_{k}"] = min(k / n, 1.0)
    out["chance_median_rank"] = (n + 1) / 2
    out["n_queries"] = n
    return out
