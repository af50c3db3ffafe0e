"""Evaluation of binary risk predictions: discrimination, calibration, clinical utility.

Everything here takes a binary outcome ``y`` (0/1 or bool, 1 = event) and risk scores
where a *higher score means a higher risk* (pROC's ``direction = "<"``; this module
never flips a predictor silently). Results are frozen dataclasses with ``summary()``.

==============================  ======================================================
:func:`delong`                  AUROCs of several predictors, DeLong covariance and CIs
:func:`delong_test`             paired DeLong test of two correlated AUROCs
:func:`auroc`                   AUROC; also :func:`auprc` (average precision), :func:`brier_score`
:func:`bootstrap_ci`            stratified, seeded, vectorised percentile bootstrap CIs
:func:`roc_curve`               ROC curve with a bootstrap sensitivity band
:func:`calibration`             calibration slope / calibration-in-the-large, binned curve
:func:`decision_curve`          net benefit (dcurves' conventions)
:func:`choose_threshold`        Youden / closest-top-left cut learned on *validation* data
:func:`metrics_at`              sensitivity, specificity, PPV, NPV at a frozen cut
:func:`subgroup_metrics`        the above by sex, age band or any grouping
:func:`evaluate_predictions`    all of the above on test data in one call
==============================  ======================================================

This module is the public entry point; calibration and decision curves are implemented
in :mod:`models.calibration`, thresholds and subgroups in :mod:`models.operating`, and the
array kernels in ``models._kernels``. Plots live in :mod:`models.plotting`.

References
----------
DeLong, DeLong & Clarke-Pearson (1988) Biometrics 44:837-845.
Sun & Xu (2014) IEEE Signal Processing Letters 21:1389-1393 (fast midrank DeLong).
Robin et al. (2011) pROC. BMC Bioinformatics 12:77.
Vickers & Elkin (2006) Med Decis Making 26:565-574 (decision curves).
Van Calster et al. (2019) BMC Medicine 17:230 (calibration: slope and intercept).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from scipy.special import ndtr

from models import _kernels as K
from models._inputs import _binary, _both_classes, _probabilities, _ro, _scores, _zcrit
from models.calibration import (
    CalibrationResult,
    DecisionCurveResult,
    calibration,
    decision_curve,
)
from models.operating import (
    OperatingPoint,
    SubgroupResult,
    Threshold,
    age_bands,
    choose_threshold,
    metrics_at,
    subgroup_metrics,
)
from normfuse.results import ResultMixin

__all__ = [
    "auroc", "auprc", "brier_score",
    "delong", "delong_test", "DeLongResult", "PairedDeLongResult",
    "bootstrap_ci", "BootstrapResult",
    "roc_curve", "RocCurveResult",
    "calibration", "CalibrationResult",
    "decision_curve", "DecisionCurveResult",
    "choose_threshold", "Threshold", "metrics_at", "OperatingPoint",
    "subgroup_metrics", "SubgroupResult", "age_bands",
    "evaluate_predictions", "EvaluationResult",
]

_METRICS = ("auroc", "auprc", "brier")
BOOT_BLOCK = 100  # replicates drawn and computed per array operation


# --------------------------------------------------------------------------- point metrics
def auroc(y_true, y_score) -> float:
    """Area under the ROC curve (Mann-Whitney; ties count one half).

    Examples
    --------
    >>> auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.75
    """
    y = _binary(y_true, "auroc")
    s, _ = _scores(y_score, y.size, "auroc", like=y_true)
    m, _ = _both_classes(y, "auroc")
    return float(K.auc_rows(np.concatenate([s[y == 1, 0], s[y == 0, 0]])[None, :], m)[0])


def auprc(y_true, y_score) -> float:
    """Area under the precision-recall curve as average precision (step function, no interpolation).

    Examples
    --------
    >>> round(auprc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]), 4)
    0.8333
    """
    y = _binary(y_true, "auprc")
    s, _ = _scores(y_score, y.size, "auprc", like=y_true)
    _both_classes(y, "auprc")
    return float(K.average_precision_rows(s[:, 0][None, :], y)[0])


def brier_score(y_true, y_prob) -> float:
    """Mean squared difference between predicted probability and outcome.

    Examples
    --------
    >>> round(brier_score([0, 1], [0.2, 0.6]), 4)
    0.1
    """
    y = _binary(y_true, "brier_score")
    p, names = _scores(y_prob, y.size, "brier_score", "y_prob", like=y_true)
    _probabilities(p[:, 0], names[0], "brier_score")
    return float(np.mean((p[:, 0] - y) ** 2))


# --------------------------------------------------------------------------- DeLong
@dataclass(frozen=True, eq=False)
class PairedDeLongResult(ResultMixin):
    """Paired DeLong test of ``AUC(a) - AUC(b)`` on the same patients.

    Attributes
    ----------
    names : the two predictors; auc : their AUCs; difference, se : AUC(a) - AUC(b) and its
    DeLong standard error; z, p_value : two-sided test of equal AUCs; ci_low, ci_high :
    Wald CI of the difference at ``conf_level``.
    """

    names: tuple[str, str]
    auc: tuple[float, float]
    difference: float
    se: float
    z: float
    p_value: float
    ci_low: float
    ci_high: float
    conf_level: float
    _title = "Paired DeLong test"

    def summary(self) -> pd.DataFrame:
        """One row: auc_a, auc_b, difference, se, z, p_value, ci_low, ci_high."""
        return pd.DataFrame(
            {"auc_a": [self.auc[0]], "auc_b": [self.auc[1]], "difference": [self.difference],
             "se": [self.se], "z": [self.z], "p_value": [self.p_value],
             "ci_low": [self.ci_low], "ci_high": [self.ci_high]},
            index=pd.Index([f"{self.names[0]} - {self.names[1]}"], name="comparison"),
        )


@dataclass(frozen=True, eq=False)
class DeLongResult(ResultMixin):
    """AUROCs of one or more predictors on the same patients, with DeLong's covariance.

    Attributes
    ----------
    names : predictor names; auc : (k,) AUCs; cov : (k, k) DeLong covariance of the AUCs;
    n_pos, n_neg : events and non-events; conf_level : level of :attr:`ci`.
    """

    names: tuple[str, ...]
    auc: np.ndarray
    cov: np.ndarray
    n_pos: int
    n_neg: int
    conf_level: float = 0.95
    _title = "AUROC (DeLong)"

    @property
    def se(self) -> np.ndarray:
        """DeLong standard errors of the AUCs."""
        return np.sqrt(np.diag(self.cov))

    @property
    def ci(self) -> np.ndarray:
        """(k, 2) Wald CIs on the AUC scale, clipped to [0, 1] as pROC's ``ci.auc`` does."""
        z = _zcrit(self.conf_level)
        lo = self.auc - z * self.se
        hi = self.auc + z * self.se
        return np.clip(np.column_stack([lo, hi]), 0.0, 1.0)

    def _index(self, name: str | int) -> int:
        if isinstance(name, (int, np.integer)):
            return int(name)
        if name not in self.names:
            raise KeyError(f"DeLongResult: no predictor {name!r}; have {list(self.names)}.")
        return self.names.index(name)

    def compare(self, a: str | int, b: str | int, conf_level: float | None = None) -> PairedDeLongResult:
        """Paired test of ``AUC(a) - AUC(b)`` (pROC ``roc.test(method = "delong")``)."""
        i, j = self._index(a), self._index(b)
        level = self.conf_level if conf_level is None else conf_level
        zc = _zcrit(level)
        diff = float(self.auc[i] - self.auc[j])
        var = float(self.cov[i, i] + self.cov[j, j] - 2 * self.cov[i, j])
        se = float(np.sqrt(max(var, 0.0)))
        z = diff / se if se > 0 else (0.0 if diff == 0 else np.sign(diff) * np.inf)
        p = float(2 * ndtr(-abs(z)))
        return PairedDeLongResult(
            names=(self.names[i], self.names[j]), auc=(float(self.auc[i]), float(self.auc[j])),
            difference=diff, se=se, z=float(z), p_value=p,
            ci_low=diff - zc * se, ci_high=diff + zc * se, conf_level=level,
        )

    def pairwise(self) -> pd.DataFrame:
        """All paired tests, one row per pair (unadjusted p-values)."""
        rows = [self.compare(i, j).summary() for i in range(len(self.names))
                for j in range(i + 1, len(self.names))]
        return pd.concat(rows) if rows else pd.DataFrame()

    def summary(self) -> pd.DataFrame:
        """One row per predictor: auc, se, ci_low, ci_high, n_pos, n_neg."""
        ci = self.ci
        return pd.DataFrame(
            {"auc": self.auc, "se": self.se, "ci_low": ci[:, 0], "ci_high": ci[:, 1],
             "n_pos": self.n_pos, "n_neg": self.n_neg},
            index=pd.Index(list(self.names), name="predictor"),
        )

    def _header_lines(self) -> list[str]:
        return [f"{self.n_pos} events, {self.n_neg} non-events; {self.conf_level:.0%} DeLong CI"]


def delong(y_true, y_score, *, conf_level: float = 0.95) -> DeLongResult:
    """AUROCs of one or several predictors with DeLong's covariance matrix.

    Parameters
    ----------
    y_true : array-like of 0/1 or bool, shape (n,)
        Outcome, 1 = event (pROC's "case").
    y_score : array-like (n,), (n, k), DataFrame or mapping name -> (n,)
        Risk scores, higher = more likely an event. Several predictors are handled in one
        vectorised pass and their full covariance is returned.
    conf_level : float
        Level of the Wald confidence intervals.

    Returns
    -------
    DeLongResult

    Raises
    ------
    ValueError
        Non-binary outcome, NaN/inf scores, length mismatch, or fewer than two events or
        non-events (a single-class fold).

    Notes
    -----
    Uses the midrank placement values of Sun & Xu (2014), O(n log n), which equal
    DeLong et al. (1988) exactly. The CI is ``auc +/- z * se`` clipped to [0, 1], as
    pROC's ``ci.auc(method = "delong")``.

    Examples
    --------
    >>> r = delong([0, 0, 0, 1, 1, 1], {"a": [.1, .2, .6, .5, .8, .9], "b": [.3, .1, .2, .9, .4, .7]})
    >>> r.auc.round(3).tolist()
    [0.889, 1.0]
    """
    y = _binary(y_true, "delong")
    s, names = _scores(y_score, y.size, "delong", like=y_true)
    m, n = _both_classes(y, "delong", min_each=2)
    _zcrit(conf_level)
    auc, cov = K.delong_placements(s[y == 1].T, s[y == 0].T)
    return DeLongResult(tuple(names), _ro(auc), _ro(cov), m, n, conf_level)


def delong_test(y_true, score_a, score_b, *, conf_level: float = 0.95) -> PairedDeLongResult:
    """Paired DeLong test that two predictors have equal AUROC on the same patients.

    Equivalent to pROC ``roc.test(roc1, roc2, method = "delong", paired = TRUE)``.

    Examples
    --------
    >>> t = delong_test([0, 0, 0, 1, 1, 1], [.1, .2, .6, .5, .8, .9], [.3, .1, .2, .4, .5, .6])
    >>> round(t.difference, 3)
    -0.111
    """
    na = getattr(score_a, "name", None) or "a"
    nb = getattr(score_b, "name", None) or "b"
    if na == nb:
        na, nb = f"{na}_a", f"{nb}_b"
    a = np.asarray(score_a, dtype=np.float64)
    b = np.asarray(score_b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"delong_test: score_a has shape {a.shape}, score_b {b.shape}; "
                         "a paired test needs both scores for the same patients.")
    res = delong(y_true, {na: a, nb: b}, conf_level=conf_level)
    return res.compare(0, 1)


# --------------------------------------------------------------------------- bootstrap
@dataclass(frozen=True, eq=False)
class BootstrapResult(ResultMixin):
    """Percentile bootstrap CIs from outcome-stratified resamples.

    Attributes
    ----------
    estimate : metric -> value on the original data; replicates : (n_boot, metrics)
    DataFrame of replicate values; conf_level, n_boot, random_state : the settings.
    """

    estimate: dict
    replicates: pd.DataFrame
    conf_level: float
    n_boot: int
    random_state: int | None
    _title = "Stratified bootstrap"

    def summary(self) -> pd.DataFrame:
        """One row per metric: estimate, se (replicate SD), ci_low, ci_high (percentile)."""
        a = (1 - self.conf_level) / 2
        q = self.replicates.quantile([a, 1 - a])
        return pd.DataFrame(
            {"estimate": pd.Series(self.estimate), "se": self.replicates.std(ddof=1),
             "ci_low": q.iloc[0], "ci_high": q.iloc[1]},
        ).rename_axis("metric")

    def _header_lines(self) -> list[str]:
        return [f"{self.n_boot} replicates, seed {self.random_state}, {self.conf_level:.0%} percentile CI"]


def _metric_rows(metrics, scores: np.ndarray, m: int, ylay: np.ndarray) -> dict[str, np.ndarray]:
    out = {}
    if "auroc" in metrics or "auprc" in metrics:
        out["auroc"], out["auprc"] = K.auc_ap_rows(scores, m)
    if "brier" in metrics:
        out["brier"] = np.mean((scores - ylay) ** 2, axis=1)
    return {k: out[k] for k in metrics}


def _boot_block(metrics, pos, neg, ylay, rng, b: int) -> dict[str, np.ndarray]:
    """Metrics of ``b`` stratified replicates drawn from ``rng`` (positives, then negatives)."""
    m, n = pos.size, neg.size
    rep = np.concatenate(
        [pos[rng.integers(0, m, size=(b, m))], neg[rng.integers(0, n, size=(b, n))]], axis=1)
    return _metric_rows(metrics, rep, m, ylay)


def _boot_task(metrics, pos, neg, ylay, jobs):
    """Worker side: replay each block from its generator state."""
    out = []
    for state, b in jobs:
        rng = np.random.Generator(np.random.PCG64())
        rng.bit_generator.state = state
        out.append(_boot_block(metrics, pos, neg, ylay, rng, b))
    return out


def _boot_blocks_dask(client, metrics, pos, neg, ylay, rng, sizes):
    """Blocks computed on Dask workers from the generator states of the local sequence."""
    from normfuse.checks import optional_import

    optional_import("distributed", "dask", "bootstrap_ci(client=...)")
    if not isinstance(rng.bit_generator, np.random.PCG64):     # pragma: no cover
        raise TypeError("bootstrap_ci(client=...) needs numpy's default PCG64 generator.")
    m, n = pos.size, neg.size
    jobs = []
    for b in sizes:          # step through exactly the draws the local path makes
        jobs.append((rng.bit_generator.state, b))
        rng.integers(0, m, size=(b, m))
        rng.integers(0, n, size=(b, n))
    n_workers = max(1, len(client.scheduler_info().get("workers", {})))
    per = max(1, -(-len(jobs) // (2 * n_workers)))       # about two tasks per worker
    data = client.scatter([pos, neg, ylay], broadcast=True)
    futures = [client.submit(_boot_task, list(metrics), *data, jobs[i:i + per], pure=False)
               for i in range(0, len(jobs), per)]
    return [blk for part in client.gather(futures) for blk in part]


def bootstrap_ci(
    y_true,
    y_score,
    *,
    metrics: Sequence[Literal["auroc", "auprc", "brier"]] = _METRICS,
    n_boot: int = 2000,
    conf_level: float = 0.95,
    random_state: int | None = 0,
    client=None,
) -> BootstrapResult:
    """Stratified percentile-bootstrap CIs of AUROC, AUPRC and Brier score.

    Events and non-events are resampled separately (so every replicate keeps the observed
    prevalence and is never single-class), with a seeded ``numpy.random.default_rng``.
    Replicates are drawn and computed with array operations in blocks of
    ``BOOT_BLOCK`` (100) replicates (ranks per replicate for AUROC), so the result for a
    given seed does not depend on memory settings; replicate ``i`` of block ``b`` uses
    the generator's draws in order: positives' indices (100, m), then negatives' (100, n).

    Parameters
    ----------
    y_true, y_score : outcome (0/1) and one predictor's scores (probabilities for "brier").
    metrics : any of "auroc", "auprc", "brier".
    n_boot : number of replicates; conf_level : CI level; random_state : seed.
    client : dask.distributed.Client, optional
        Compute the replicate blocks on the cluster's workers (extra ``dask``). The
        driver steps the seeded generator through the same draws and sends each block
        the generator state at its start, so the replicates, and the CI, are identical
        to the local path.

    Returns
    -------
    BootstrapResult

    Examples
    --------
    >>> r = bootstrap_ci([0, 0, 0, 1, 1, 1], [.1, .2, .6, .5, .8, .9], n_boot=200)
    >>> round(r.estimate["auroc"], 3)
    0.889
    """
    y = _binary(y_true, "bootstrap_ci")
    s, names = _scores(y_score, y.size, "bootstrap_ci", like=y_true)
    if s.shape[1] != 1:
        raise ValueError("bootstrap_ci: pass one predictor at a time (got "
                         f"{s.shape[1]} columns: {names}).")
    unknown = [mm for mm in metrics if mm not in _METRICS]
    if unknown or not metrics:
        raise ValueError(f"bootstrap_ci: unknown metrics {unknown}; choose from {list(_METRICS)}.")
    if int(n_boot) < 2:
        raise ValueError(f"bootstrap_ci: n_boot={n_boot!r}; use at least a few hundred (default 2000).")
    _zcrit(conf_level)
    m, n = _both_classes(y, "bootstrap_ci")
    if "brier" in metrics:
        _probabilities(s[:, 0], names[0], "bootstrap_ci")
    pos = s[y == 1, 0]
    neg = s[y == 0, 0]
    ylay = np.concatenate([np.ones(m), np.zeros(n)])
    base = np.concatenate([pos, neg])[None, :]
    estimate = {k: float(v[0]) for k, v in _metric_rows(metrics, base, m, ylay).items()}
    rng = np.random.default_rng(random_state)
    sizes = [min(BOOT_BLOCK, n_boot - s) for s in range(0, int(n_boot), BOOT_BLOCK)]
    if client is None:
        blocks = [_boot_block(metrics, pos, neg, ylay, rng, b) for b in sizes]
    else:
        blocks = _boot_blocks_dask(client, metrics, pos, neg, ylay, rng, sizes)
    parts = {k: [blk[k] for blk in blocks] for k in metrics}
    reps = pd.DataFrame({k: np.concatenate(v) for k, v in parts.items()})
    return BootstrapResult(estimate, reps, conf_level, int(n_boot), random_state)


# --------------------------------------------------------------------------- ROC curve
_AUC_CI_METHODS = {"delong": "DeLong", "cluster_bootstrap": "patient-cluster bootstrap"}


@dataclass(frozen=True, eq=False)
class RocCurveResult(ResultMixin):
    """Empirical ROC curve, AUC CI and a pointwise bootstrap sensitivity band.

    Attributes
    ----------
    fpr, tpr, thresholds : the curve (a case is called when score >= threshold);
    auc, auc_ci : AUC and its CI; band_fpr, band_low, band_high : sensitivity CI at
    fixed false-positive rates (pROC ``ci.se``), from a stratified bootstrap of rows, or of
    clusters (patients) when :func:`roc_curve` was given ``clusters`` with some cluster
    holding several rows.
    auc_ci_method : ``"delong"`` (DeLong's interval, rows independent) or
        ``"cluster_bootstrap"`` (percentile interval of the AUC over the band's
        patient-resampled replicates).
    n_boot : bootstrap replicates behind the band (and the AUC CI under the cluster bootstrap).
    """

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray
    auc: float
    auc_ci: tuple[float, float]
    band_fpr: np.ndarray
    band_low: np.ndarray
    band_high: np.ndarray
    conf_level: float
    name: str = "score"
    auc_ci_method: str = "delong"
    n_boot: int = 500
    _title = "ROC curve"

    def summary(self) -> pd.DataFrame:
        """The curve: threshold, fpr, tpr (one row per distinct threshold)."""
        return pd.DataFrame({"threshold": self.thresholds, "fpr": self.fpr, "tpr": self.tpr})

    @property
    def auc_ci_label(self) -> str:
        """How ``auc_ci`` was computed, in words (e.g. ``"DeLong"``)."""
        label = _AUC_CI_METHODS.get(self.auc_ci_method, self.auc_ci_method)
        if self.auc_ci_method == "cluster_bootstrap":
            label += f", {self.n_boot} replicates"
        return label

    def _header_lines(self) -> list[str]:
        return [f"AUC {self.auc:.3f} ({self.conf_level:.0%} CI {self.auc_ci[0]:.3f}-{self.auc_ci[1]:.3f}, "
                f"{self.auc_ci_label}); sensitivity band: {self.n_boot} bootstrap replicates of "
                + ("patients" if self.auc_ci_method == "cluster_bootstrap" else "rows")]

    def plot(self, ax=None, **kwargs):
        """Delegate to :func:`models.plotting.plot_roc`."""
        from models.plotting import plot_roc

        return plot_roc(self, ax=ax, **kwargs)


def roc_curve(
    y_true, y_score, *, n_boot: int = 500, conf_level: float = 0.95,
    random_state: int | None = 0, grid: int = 101, clusters=None,
) -> RocCurveResult:
    """ROC curve with an AUC CI and a stratified-bootstrap band of sensitivity.

    The band is pointwise at ``grid`` false-positive rates (pROC's ``ci.se``): each of
    ``n_boot`` replicates resamples the positives and the negatives with replacement
    (blocks of ``BOOT_BLOCK`` replicates at a time, seeded by ``random_state``). The AUC
    CI is DeLong's (pROC ``ci.auc(method = "delong")``).

    Parameters
    ----------
    y_true, y_score : outcomes (0/1) and one score per row.
    n_boot, conf_level, random_state, grid : replicates, level, seed and band grid size.
    clusters : array-like of shape (n,), optional
        Cluster (patient) id of every row, for data with several rows per patient. The
        band then resamples *clusters* with replacement, stratified by whether the
        cluster has any event; a cluster drawn ``m`` times weighs its rows ``m`` times
        (:func:`models._kernels.weighted_tpr_at_fpr_rows`), and the AUC CI is the
        percentile interval of the weighted AUC over the *same* replicates
        (:func:`models._kernels.weighted_auc_rows`; ``auc_ci_method =
        "cluster_bootstrap"``), since DeLong's would treat a patient's rows as
        independent. The draws are those of :func:`models.compare.compare_models`'
        cluster bootstrap (``_cluster_counts``), so with the same seed and
        ``n_boot`` the AUC CI equals its single-repeat CI. When every cluster holds one
        row, ``clusters`` changes nothing: row band and DeLong CI.

    Examples
    --------
    >>> r = roc_curve([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], n_boot=50)
    >>> r.tpr.tolist(), r.fpr.tolist()
    ([0.0, 0.5, 0.5, 1.0, 1.0], [0.0, 0.0, 0.5, 0.5, 1.0])
    """
    y = _binary(y_true, "roc_curve")
    s, names = _scores(y_score, y.size, "roc_curve", like=y_true)
    m, n = _both_classes(y, "roc_curve", min_each=2)
    x = s[:, 0]
    thr = np.concatenate([[np.inf], np.unique(x)[::-1]])
    pos = np.sort(x[y == 1])
    neg = np.sort(x[y == 0])
    tpr = (m - np.searchsorted(pos, thr, side="left")) / m
    fpr = (n - np.searchsorted(neg, thr, side="left")) / n
    codes = None if clusters is None else _cluster_codes(clusters, y.size, "roc_curve")
    if codes is not None and int(codes.max()) + 1 == y.size:  # one row per cluster
        codes = None
    auc, cov = K.delong_placements(pos[None, :], neg[None, :])
    auc = float(auc[0])
    gfpr = np.linspace(0, 1, grid)
    rng = np.random.default_rng(random_state)
    a = (1 - conf_level) / 2
    if codes is None:
        se, zc = float(np.sqrt(cov[0, 0])), _zcrit(conf_level)
        ci = (max(0.0, auc - zc * se), min(1.0, auc + zc * se))
        blocks = []
        for start in range(0, int(n_boot), BOOT_BLOCK):  # blocks of replicates, not rows
            b = min(BOOT_BLOCK, int(n_boot) - start)
            bp = pos[rng.integers(0, m, size=(b, m))]
            bn = neg[rng.integers(0, n, size=(b, n))]
            blocks.append(K.tpr_at_fpr_rows(bp, bn, gfpr))
        lo, hi = np.quantile(np.concatenate(blocks), [a, 1 - a], axis=0)
        method = "delong"
    else:
        counts = _cluster_counts(codes, y, int(n_boot), rng)
        band, baucs = [], []
        for start in range(0, int(n_boot), BOOT_BLOCK):  # row weights of a block of replicates
            w = counts[start:start + BOOT_BLOCK, codes].astype(np.float64)
            band.append(K.weighted_tpr_at_fpr_rows(x, y, w, gfpr))
            baucs.append(K.weighted_auc_rows(x, y, w))
        lo, hi = np.nanquantile(np.concatenate(band), [a, 1 - a], axis=0)
        ci = tuple(float(v) for v in np.nanquantile(np.concatenate(baucs), [a, 1 - a]))
        method = "cluster_bootstrap"
    return RocCurveResult(_ro(fpr), _ro(tpr), _ro(thr), auc, ci, _ro(gfpr),
                          _ro(lo), _ro(hi), conf_level, names[0], method, int(n_boot))


def _cluster_codes(clusters, n: int, who: str) -> np.ndarray:
    """Integer codes 0..P-1 of the cluster ids (one per row, order of first appearance), refusing missing ids."""
    ids = clusters.to_numpy() if isinstance(clusters, (pd.Series, pd.Index)) else np.asarray(clusters)
    if ids.ndim != 1 or ids.size != n:
        raise ValueError(f"{who}: clusters must hold one id per row ({n}), got shape {ids.shape}.")
    codes, _ = pd.factorize(ids, use_na_sentinel=True)
    if (codes < 0).any():
        i = int(np.flatnonzero(codes < 0)[0])
        raise ValueError(f"{who}: clusters holds a missing id at position {i} "
                         f"({int((codes < 0).sum())} missing). Every row needs its patient id.")
    return codes


def _cluster_counts(codes: np.ndarray, y: np.ndarray, n_boot: int,
                             rng: np.random.Generator) -> np.ndarray:
    """Draw counts (n_boot, P) of a cluster bootstrap stratified by "cluster has any event".

    Parameters
    ----------
    codes : (N,) cluster code 0..P-1 of every row (e.g. ``pd.factorize(patient_id)[0]``).
    y : (N,) 0/1 labels.
    n_boot : replicates; rng : the generator (consumed: events' stratum first, then the other).

    Returns
    -------
    (n_boot, P) int64: how often each cluster was drawn. Within each stratum its ``P_s``
    clusters are drawn ``P_s`` times with replacement, so both classes stay present in
    every replicate (a cluster with an event contributes a positive row). Row weights of
    replicate ``b`` are ``counts[b, codes]``. Shared by :func:`roc_curve` and
    :func:`models.compare.compare_models`, so the same seed gives the same replicates.
    """
    n_cl = int(codes.max()) + 1
    has_event = np.zeros(n_cl, dtype=bool)
    has_event[codes[np.asarray(y) == 1]] = True
    counts = np.zeros((n_boot, n_cl), dtype=np.int64)
    offset = (np.arange(n_boot) * n_cl)[:, None]
    for stratum in (True, False):
        members = np.flatnonzero(has_event == stratum)
        if members.size:
            idx = members[rng.integers(0, members.size, size=(n_boot, members.size))]
            counts += np.bincount((offset + idx).ravel(), minlength=n_boot * n_cl).reshape(n_boot, n_cl)
    return counts


# --------------------------------------------------------------------------- one call
@dataclass(frozen=True, eq=False)
class EvaluationResult(ResultMixin):
    """Everything :func:`evaluate_predictions` computed on the test data, kept as parts.

    Attributes
    ----------
    discrimination : DeLongResult; bootstrap : BootstrapResult (AUROC, AUPRC, Brier);
    calibration : CalibrationResult; decision : DecisionCurveResult;
    threshold : Threshold or None (learned on validation data, or given);
    operating_point : OperatingPoint or None; subgroups : SubgroupResult or None.
    """

    discrimination: DeLongResult
    bootstrap: BootstrapResult
    calibration: CalibrationResult
    decision: DecisionCurveResult
    threshold: Threshold | None
    operating_point: OperatingPoint | None
    subgroups: SubgroupResult | None
    _title = "Evaluation on test data"

    def summary(self) -> pd.DataFrame:
        """Headline metrics: estimate, ci_low, ci_high and the CI method, one row each."""
        d = self.discrimination.summary().iloc[0]
        b = self.bootstrap.summary()
        c = self.calibration.summary()
        rows = [("auroc", d["auc"], d["ci_low"], d["ci_high"], "DeLong")]
        rows += [(m, b.loc[m, "estimate"], b.loc[m, "ci_low"], b.loc[m, "ci_high"],
                  "stratified bootstrap") for m in ("auprc", "brier")]
        rows += [(f"calibration_{m}", c.loc[m, "estimate"], c.loc[m, "ci_low"], c.loc[m, "ci_high"],
                  "Wald") for m in ("slope", "intercept")]
        if self.operating_point is not None:
            op = self.operating_point.summary()
            rows.append(("threshold", self.operating_point.threshold, np.nan, np.nan,
                         "validation data" if self.threshold is not None else "given"))
            rows += [(m, op.loc[m, "estimate"], op.loc[m, "ci_low"], op.loc[m, "ci_high"],
                      "Clopper-Pearson") for m in ("sensitivity", "specificity", "ppv", "npv")]
        tab = pd.DataFrame(rows, columns=["metric", "estimate", "ci_low", "ci_high", "ci_method"])
        return tab.set_index("metric")

    def _header_lines(self) -> list[str]:
        d = self.discrimination
        return [f"{d.n_pos} events, {d.n_neg} non-events; {d.conf_level:.0%} CIs"]


def evaluate_predictions(
    y_test,
    p_test,
    *,
    y_val=None,
    p_val=None,
    threshold: Threshold | float | None = None,
    groups=None,
    n_boot: int = 2000,
    conf_level: float = 0.95,
    random_state: int | None = 0,
) -> EvaluationResult:
    """Evaluate predicted risks on test data in one call.

    Computes AUROC with its DeLong CI, stratified-bootstrap CIs of AUPRC and Brier score,
    calibration slope and intercept, the decision curve, and, when a cut is available,
    sensitivity/specificity/PPV/NPV at it, plus metrics per subgroup.

    Parameters
    ----------
    y_test, p_test : test outcomes (0/1) and predicted risks.
    y_val, p_val : validation outcomes and risks; when given (and ``threshold`` is None)
        the Youden cut is chosen on them with :func:`choose_threshold`. The test data
        never choose the cut: without validation data or ``threshold`` no operating point
        is reported.
    threshold : a :class:`Threshold` or a pre-registered number, used as is.
    groups : DataFrame or mapping of subgroup labels aligned with the test rows, e.g.
        ``{"sex": sex, "age_band": age_bands(age)}``.
    n_boot, conf_level, random_state : bootstrap settings.

    Returns
    -------
    EvaluationResult

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 2, 400)
    >>> p = 1 / (1 + np.exp(-(2 * y - 1 + rng.normal(size=400))))
    >>> r = evaluate_predictions(y[200:], p[200:], y_val=y[:200], p_val=p[:200], n_boot=200)
    >>> r.summary().loc["auroc", "ci_method"]
    'DeLong'
    """
    if threshold is None and (y_val is None) != (p_val is None):
        raise ValueError("evaluate_predictions: pass both y_val and p_val (or neither).")
    if threshold is None and y_val is not None:
        threshold = choose_threshold(y_val, p_val)
    disc = delong(y_test, p_test, conf_level=conf_level)
    boot = bootstrap_ci(y_test, p_test, n_boot=n_boot, conf_level=conf_level,
                        random_state=random_state)
    cal = calibration(y_test, p_test)
    dec = decision_curve(y_test, p_test)
    op = None if threshold is None else metrics_at(threshold, y_test, p_test, conf_level=conf_level)
    sub = None
    if groups is not None:
        sub = subgroup_metrics(y_test, p_test, groups, threshold=threshold, conf_level=conf_level)
    return EvaluationResult(disc, boot, cal, dec,
                            threshold if isinstance(threshold, Threshold) else None, op, sub)
