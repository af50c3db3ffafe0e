"""Array kernels behind :mod:`models.evaluate`: ranks, DeLong, average precision, logistic fits.

Every kernel works on whole arrays (several predictors or many bootstrap replicates at
once); none loops over rows or patients in Python. Inputs are assumed validated by the
public functions in :mod:`models.evaluate`.
"""
from __future__ import annotations

import numpy as np
from scipy.special import expit
from scipy.stats import rankdata

__all__ = [
    "delong_placements",
    "auc_rows",
    "average_precision_rows",
    "auc_ap_rows",
    "logistic_newton",
    "tpr_at_fpr_rows",
    "weighted_tpr_at_fpr_rows",
    "weighted_auc_rows",
]


def delong_placements(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs and DeLong covariance of ``k`` predictors by the midrank method of Sun & Xu (2014).

    Parameters
    ----------
    pos : (k, m) scores of the m positives for each of k predictors.
    neg : (k, n) scores of the n negatives.

    Returns
    -------
    auc : (k,) Mann-Whitney AUCs (ties count one half).
    cov : (k, k) DeLong covariance ``S10 / m + S01 / n`` (sample covariances, ddof=1).

    Notes
    -----
    With midranks ``Tz`` over all m + n scores, ``Tx`` within positives and ``Ty`` within
    negatives, the placement values are ``V10_i = (Tz_i - Tx_i) / n`` and
    ``V01_j = 1 - (Tz_j - Ty_j) / m``; this is O((m + n) log(m + n)) per predictor
    instead of DeLong's O(m n) pairwise kernel.
    """
    m, n = pos.shape[1], neg.shape[1]
    tx = rankdata(pos, axis=1)
    ty = rankdata(neg, axis=1)
    tz = rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    auc = tz[:, :m].sum(axis=1) / (m * n) - (m + 1) / (2.0 * n)
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    s10 = np.atleast_2d(np.cov(v10, ddof=1))
    s01 = np.atleast_2d(np.cov(v01, ddof=1))
    return auc, s10 / m + s01 / n


def _sorted_desc(scores: np.ndarray, y: np.ndarray):
    """Row-wise descending sort: sorted scores, labels in that order, tie-group end mask."""
    b, nn = scores.shape
    order = np.argsort(-scores, axis=1, kind="stable")
    s = np.take_along_axis(scores, order, axis=1)
    yy = np.take_along_axis(np.broadcast_to(y, (b, nn)), order, axis=1).astype(np.float64)
    end = np.ones((b, nn), dtype=bool)
    end[:, :-1] = s[:, :-1] != s[:, 1:]
    return s, yy, end


def _auc_from_sorted(yy: np.ndarray, end: np.ndarray, m: int) -> np.ndarray:
    """Mann-Whitney AUC from a descending sort: midrank of a tie group [a, b] is N - (a + b) / 2."""
    b, nn = yy.shape
    pos = np.arange(nn)
    start = np.zeros((b, nn), dtype=bool)
    start[:, 0] = True
    start[:, 1:] = end[:, :-1]
    first = np.maximum.accumulate(np.where(start, pos, 0), axis=1)
    last = np.minimum.accumulate(np.where(end, pos, nn)[:, ::-1], axis=1)[:, ::-1]
    midrank = nn - (first + last) / 2.0
    n = nn - m
    return ((midrank * yy).sum(axis=1) - m * (m + 1) / 2.0) / (m * n)


def _ap_from_sorted(yy: np.ndarray, end: np.ndarray) -> np.ndarray:
    nn = yy.shape[1]
    tp = np.cumsum(yy, axis=1)
    prec = tp / np.arange(1, nn + 1)
    prev = np.zeros_like(tp)
    prev[:, 1:] = np.maximum.accumulate(np.where(end, tp, 0.0), axis=1)[:, :-1]
    ap = np.where(end, (tp - prev) * prec, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return ap / tp[:, -1]


def auc_rows(scores: np.ndarray, m: int) -> np.ndarray:
    """AUC of each row of ``scores`` (B, m + n) whose first ``m`` columns are the positives."""
    y = np.r_[np.ones(m), np.zeros(scores.shape[1] - m)]
    _, yy, end = _sorted_desc(np.atleast_2d(scores), y)
    return _auc_from_sorted(yy, end, m)


def _tie_group_weights(scores, y, weights) -> tuple[np.ndarray, np.ndarray]:
    """(B, U) summed positive and negative weights per distinct score, scores ascending."""
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(s, kind="stable")
    s = s[order]
    yy = np.asarray(y, dtype=np.float64)[order]
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))[:, order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    return np.add.reduceat(w * yy, starts, axis=1), np.add.reduceat(w * (1.0 - yy), starts, axis=1)


def weighted_auc_rows(scores: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted Mann-Whitney AUC of one score vector under each row of case weights.

    Parameters
    ----------
    scores : (N,) predictions (fixed across replicates).
    y : (N,) 0/1 labels.
    weights : (B, N) non-negative case weights, one row per replicate (e.g. how often a
        cluster bootstrap drew each row's patient).

    Returns
    -------
    (B,) ``sum_{i pos, j neg} w_i w_j [I(s_i > s_j) + I(s_i = s_j) / 2] / (W+ W-)``; NaN
    where a replicate has no positive or no negative weight.

    Notes
    -----
    One sort of ``scores`` serves every replicate: per tie group the positive and negative
    weights are summed (``np.add.reduceat``), and each group's positives beat the negative
    weight of all lower groups plus half of their own group's. With integer weights every
    sum is an exact integer in float64 (below 2**53), so the result equals the AUC of the
    data with each row repeated ``w`` times up to the final division's rounding.
    """
    wp, wn = _tie_group_weights(scores, y, weights)
    below = np.cumsum(wn, axis=1) - wn
    num = (wp * (below + 0.5 * wn)).sum(axis=1)
    den = wp.sum(axis=1) * wn.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def average_precision_rows(scores: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Average precision of each row of ``scores`` (B, N) against the labels ``y`` (B, N) or (N,).

    ``AP = sum_k (R_k - R_{k-1}) P_k`` over the distinct thresholds (tied scores form one
    step), the step-function area used by scikit-learn's ``average_precision_score``; it
    does not interpolate precision linearly, which would be optimistic.
    """
    _, yy, end = _sorted_desc(np.atleast_2d(scores), y)
    return _ap_from_sorted(yy, end)


def auc_ap_rows(scores: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """AUC and average precision of each row (first ``m`` columns positive) from one sort."""
    y = np.r_[np.ones(m), np.zeros(scores.shape[1] - m)]
    _, yy, end = _sorted_desc(np.atleast_2d(scores), y)
    return _auc_from_sorted(yy, end, m), _ap_from_sorted(yy, end)


def tpr_at_fpr_rows(pos: np.ndarray, neg: np.ndarray, fpr: np.ndarray) -> np.ndarray:
    """Empirical sensitivity at false-positive rates ``fpr`` for each row (pROC's ``ci.se``).

    Parameters
    ----------
    pos : (B, m) positive scores; neg : (B, n) negative scores; fpr : (G,) in [0, 1].

    Returns
    -------
    (B, G) the largest true-positive rate reachable with a false-positive rate <= fpr.
    """
    b, m = pos.shape
    n = neg.shape[1]
    neg_desc = -np.sort(-neg, axis=1)
    k = np.floor(fpr * n + 1e-9).astype(int)  # false positives allowed
    out = np.ones((b, fpr.size))
    inner = k < n
    thr = neg_desc[:, k[inner]]  # a positive call needs a score > thr
    pos_sorted = np.sort(pos, axis=1)
    # count of positives strictly above thr, per row: searchsorted row by row without a
    # Python loop, by offsetting each row into its own disjoint band of a 1-D array.
    lo = min(pos_sorted.min(), thr.min())
    span = max(pos_sorted.max(), thr.max()) - lo + 1.0
    offs = (np.arange(b) * span)[:, None]
    flat = (pos_sorted - lo + offs).ravel()
    q = (thr - lo + offs)
    idx = np.searchsorted(flat, q.ravel(), side="right").reshape(q.shape)
    above = (np.arange(1, b + 1) * m)[:, None] - idx
    out[:, inner] = above / m
    return out


def weighted_tpr_at_fpr_rows(scores: np.ndarray, y: np.ndarray, weights: np.ndarray,
                             fpr: np.ndarray) -> np.ndarray:
    """Empirical sensitivity at false-positive rates ``fpr`` under each row of case weights.

    Parameters
    ----------
    scores, y, weights : (N,), (N,) and (B, N), as in :func:`weighted_auc_rows`.
    fpr : (G,) false-positive rates in [0, 1].

    Returns
    -------
    (B, G) the largest weighted true-positive rate reachable by a cut ``score >= t`` whose
    weighted false-positive count is at most ``floor(fpr * W-)``; NaN where a replicate has
    no positive weight. With integer weights this equals :func:`tpr_at_fpr_rows` on the
    data with each row repeated ``w`` times, to the last bit.

    Notes
    -----
    One sort of ``scores`` serves every replicate: per tie group the weights
    of positives and negatives are summed (``np.add.reduceat``) and accumulated, so
    ``fp[b, g]`` / ``tp[b, g]`` are the weighted counts called by the cut at group ``g``.
    The last cut with ``fp <= k`` is found for all rows at once by one ``searchsorted``
    over the rows laid end to end in disjoint bands.
    """
    gp, gn = _tie_group_weights(scores, y, weights)
    b = gp.shape[0]
    zero = np.zeros((b, 1))  # the empty cut; then groups from the highest score down
    tp = np.concatenate([zero, np.cumsum(gp[:, ::-1], axis=1)], axis=1)
    fp = np.concatenate([zero, np.cumsum(gn[:, ::-1], axis=1)], axis=1)
    wp, wn = tp[:, -1], fp[:, -1]
    k = np.floor(np.asarray(fpr, dtype=np.float64)[None, :] * wn[:, None] + 1e-9)
    span = float(wn.max()) + 1.0  # fp and k of row r lie in [r * span, r * span + wn_r]
    offs = (np.arange(b) * span)[:, None]
    idx = np.searchsorted((fp + offs).ravel(), (k + offs).ravel(), side="right").reshape(k.shape)
    last = idx - 1 - (np.arange(b) * fp.shape[1])[:, None]  # >= 0: the empty cut has fp = 0
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.take_along_axis(tp, last, axis=1) / np.where(wp > 0, wp, np.nan)[:, None]


def logistic_newton(
    y: np.ndarray,
    x: np.ndarray,
    offset: np.ndarray | None = None,
    *,
    max_iter: int = 100,
    tol: float = 1e-10,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Maximum-likelihood logistic regression by Newton-Raphson.

    Returns ``(beta, cov, converged)`` with ``cov`` the inverse observed information.
    """
    beta = np.zeros(x.shape[1])
    off = np.zeros(len(y)) if offset is None else offset
    converged = False
    for _ in range(max_iter):
        mu = expit(x @ beta + off)
        w = mu * (1.0 - mu)
        grad = x.T @ (y - mu)
        hess = (x * w[:, None]).T @ x
        try:
            step = np.linalg.solve(hess, grad)
        except np.linalg.LinAlgError:
            break
        beta = beta + step
        if np.max(np.abs(step)) < tol:
            converged = True
            break
    mu = expit(x @ beta + off)
    hess = (x * (mu * (1.0 - mu))[:, None]).T @ x
    try:
        cov = np.linalg.inv(hess)
    except np.linalg.LinAlgError:
        cov = np.full((x.shape[1], x.shape[1]), np.nan)
    return beta, cov, converged and bool(np.all(np.isfinite(beta)))
