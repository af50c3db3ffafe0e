"""Deviation features against deep fusion on identical folds (issue 6 section 4).

:func:`compare_models` fits every candidate predictor of a binary milestone on the
*same* repeated, patient-grouped, outcome-stratified folds and evaluates the pooled
out-of-fold predictions with :mod:`models.evaluate`:

=========================  ===============================================================
``dev_count_logistic``     logistic regression on the critical-deviation count alone
                           (``count_col``, default ``dev__n_crit``; unpenalised, as R
                           ``glm(y ~ n_crit, binomial)``)
``dev_xgb``                XGBoost on the ``dev__`` columns
``ehr_xgb``, ``txt_xgb``   XGBoost on the EHR summaries / the note embedding alone
``all_xgb``                XGBoost on every available modality (dev, ehr, txt, demo)
``fusion_<strategy>``      :class:`models.fusion.FusionClassifier` with strategy
                           ``concat``, ``lstm``, ``bigru_attention`` or ``late``
=========================  ===============================================================

plus leave-one-modality-out ablations (``<model>_minus_<modality>``) of ``all_xgb`` and
``fusion_concat``.

Leakage
-------
Every fitted step happens inside the training part of each fold: the user's
``preprocessors`` hook (e.g. an ``EHRFeaturizer`` or ``NoteEmbedder`` fitted on the
training rows), the median imputation and standardisation of the logistic model, the
median imputation of partially missing fusion inputs, the fusion network's input
standardisation, and XGBoost's early-stopping split (drawn from the training part,
grouped by patient).

Confidence intervals and tests over repeated CV
-----------------------------------------------
Within repeat ``r`` every labelled row has exactly one out-of-fold prediction; AUROC,
AUPRC, Brier and the calibration slope/intercept are computed on these pooled
predictions (per-fold metrics are not reported: small test folds give unstable AUROCs
and single-class folds none). DeLong's variance ``v_r`` of the pooled AUROC is taken per
repeat. The reported AUROC is the mean over repeats and its CI is
``mean +/- z * sqrt(mean_r v_r)``: the repeats re-use the same patients, so their
variances are *not* divided by ``n_repeats`` (averaging repeats removes partition noise,
not patient-sampling noise). The paired comparison with the baseline (and of an ablation
with its full model) is the paired DeLong test per repeat, combined the same way: mean
difference, ``se = sqrt(mean_r var_r)``, two-sided normal p-value. With
``n_repeats=1`` both equal pROC's ``ci.auc``/``roc.test(paired = TRUE)`` on the pooled
predictions. Per-repeat numbers are in :attr:`ComparisonResult.per_repeat`.

Repeated index visits (``ci="cluster_bootstrap"``, chosen by ``ci="auto"`` whenever some
patient has more than one labelled row, e.g. ``features.index_visits="all"``): DeLong
would treat a patient's correlated rows as independent and give too narrow intervals.
Instead ``n_boot`` replicates resample *patients* with replacement, stratified by whether
the patient has any event (so both classes are present), seeded by ``random_state``; a
patient drawn ``m`` times gives each of its rows weight ``m``, and the AUROC of every
replicate is the weighted Mann-Whitney statistic (:func:`models._kernels.weighted_auc_rows`,
exact for integer weights), computed for all replicates at once. The same replicates
serve every model and every repeat, so comparisons are paired. Repeats are combined as
above: per replicate the AUROCs (and differences) are averaged over repeats, and the CI
is the percentile interval of these averages; the reported AUROC and difference stay the
means over repeats of the pooled-prediction values. The p-value of a difference
(model - baseline, ablation - full model) is ``min(1, 2 min(P*(d <= 0), P*(d >= 0)))``
with ``P*(d <= 0) = (1 + #{d_b <= 0}) / (B + 1)``, so it is never below ``2 / (B + 1)``.
``per_repeat`` then holds each repeat's bootstrap SDs and p-values, and ``summary()``'s
``ci_method`` column says which method produced each row's numbers.

Limits: every interval treats the out-of-fold predictions as fixed, so none includes
the variability of refitting the models; DeLong (``ci="delong"``) also assumes
independent rows (one index row per patient, ``build_index_visits(rule="first")``),
while the cluster bootstrap assumes independent patients, and its percentile interval
needs enough patients per class (a few dozen) to be trusted. :meth:`ComparisonResult.roc`
follows ``ci_method``: under the cluster bootstrap its sensitivity band and its AUC CI come
from the same patient replicates as ``summary()`` (equal CIs when ``n_repeats=1``); under
DeLong the band resamples rows and the AUC CI is DeLong's.

Bad input
---------
* a fold whose training or test part holds a single class: ``ValueError`` naming the
  repeat, fold and counts and suggesting a smaller ``n_splits``;
* a modality with no column, or whose columns are NaN for every labelled row: the
  models that need only it are skipped with a :class:`DataDroppedWarning` and listed in
  ``summary()["skipped"]``; multi-modality models run without it;
* NaN features: passed to XGBoost as missing; for the logistic model imputed with the
  training-fold median; for the fusion network a modality row that is entirely NaN marks
  the modality absent for that patient, other NaN cells get the training-fold median
  (counts logged);
* infinite features: :class:`ColumnContractError` naming the column and row;
* rows without a label: dropped, counted, logged and warned (DataDroppedWarning);
* patient ids of ``sequences`` that differ from the table's: :class:`ColumnContractError`.

References
----------
Davison AC, Hinkley DV (1997) Bootstrap Methods and their Application, sec. 3.8 (resampling clusters).
DeLong ER, DeLong DM, Clarke-Pearson DL (1988) Biometrics 44:837-845.
Hayat N, Geras KJ, Shamout FE (2022) MedFuse. MLHC (PMLR 182).
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.special import ndtr

from models import _compare_jobs as J
from models import _kernels as K
from models._compare_jobs import _Spec
from models._inputs import _zcrit
from models.compare_inputs import (
    FoldFeaturizer,
    _available,
    _check_table,
    _sequences,
    simulate_comparison_table,
)
from models.evaluate import _cluster_counts
from models.evaluate import calibration as _calibration
from models.evaluate import decision_curve as _decision_curve
from models.evaluate import delong as _delong
from models.evaluate import roc_curve as _roc_curve
from models.xgb import _label_array, grouped_folds
from normfuse.checks import get_logger, log_dropped, require_dataframe
from normfuse.contracts import MODALITY_PREFIXES
from normfuse.errors import ColumnContractError, ConvergenceWarning, DataDroppedWarning
from normfuse.results import ResultMixin

__all__ = ["compare_models", "ComparisonResult", "MODEL_NAMES", "simulate_comparison_table", "FoldFeaturizer"]

_log = get_logger("models.compare")

#: Every model :func:`compare_models` knows, in report order.
MODEL_NAMES: tuple[str, ...] = (
    "dev_count_logistic", "dev_xgb", "ehr_xgb", "txt_xgb", "all_xgb",
    "fusion_concat", "fusion_lstm", "fusion_bigru_attention", "fusion_late",
)
_SINGLE = {"dev_xgb": "dev", "ehr_xgb": "ehr", "txt_xgb": "txt", "dev_count_logistic": "dev"}
_DEFAULT_ABLATE = ("all_xgb", "fusion_concat")
_CI_METHODS = ("auto", "delong", "cluster_bootstrap")
_SUMMARY_COLS = [
    "kind", "modalities", "auroc", "auroc_ci_low", "auroc_ci_high", "ci_method", "auroc_sd_repeats",
    "auprc", "brier", "cal_slope", "cal_intercept",
    "delta_vs_baseline", "delta_ci_low", "delta_ci_high", "p_vs_baseline",
    "full_model", "delta_vs_full", "p_vs_full",
    "n_rows", "n_patients", "n_events", "n_folds", "n_repeats", "fit_seconds", "skipped",
]


# =========================================================================== result
@dataclass(frozen=True, eq=False)
class ComparisonResult(ResultMixin):
    """Out-of-fold comparison of predictors on identical folds.

    Attributes
    ----------
    table : DataFrame
        One row per model and ablation (see :meth:`summary`).
    per_repeat : DataFrame
        model, repeat, auroc, auroc_se, auprc, brier, cal_slope, cal_intercept,
        delta_vs_baseline, delta_baseline_se, p_vs_baseline, delta_vs_full, delta_full_se,
        p_vs_full, ci_method (DeLong SEs and p-values, or the cluster bootstrap's SDs and
        p-values of that repeat).
    oof_predictions : DataFrame
        Long: repeat, fold, row (position among labelled rows), patient_id, model, y, p.
    shap : DataFrame
        Long: repeat, fold, feature, modality, mean_abs_shap (mean |SHAP| of the
        all-features XGBoost over the fold's test rows, log-odds scale).
    weights : DataFrame
        Long: model, repeat, fold, modality, weight (fusion modality weights averaged
        over the fold's test patients).
    folds : DataFrame
        Fold number of every labelled row (index = the table's index), one column per repeat.
    baseline : str
    conf_level : float
    n_splits, n_repeats : int
    n_boot : int
        Bootstrap replicates of the ROC sensitivity band in :meth:`roc` (patients are
        resampled when ``settings["ci_method"] == "cluster_bootstrap"``, and then the ROC's
        AUC CI comes from the same replicates).
    settings : dict
    """

    table: pd.DataFrame
    per_repeat: pd.DataFrame
    oof_predictions: pd.DataFrame
    shap: pd.DataFrame
    weights: pd.DataFrame
    folds: pd.DataFrame
    baseline: str
    conf_level: float
    n_splits: int
    n_repeats: int
    n_boot: int = 500
    settings: dict = field(default_factory=dict)
    _title = "Model comparison on identical folds (out-of-fold predictions)"

    # ---------------------------------------------------------------- tables
    def summary(self) -> pd.DataFrame:
        """One row per model and ablation (index ``model``).

        Columns: kind ("model"/"ablation"), modalities, auroc (mean over repeats),
        auroc_ci_low/high, ci_method ("delong" or "cluster_bootstrap": how the CIs and
        p-values of the row were computed; empty when skipped), auroc_sd_repeats, auprc, brier, cal_slope, cal_intercept,
        delta_vs_baseline (AUROC difference, model - baseline) with its CI and paired
        p_vs_baseline (DeLong or cluster bootstrap), full_model / delta_vs_full / p_vs_full (ablations: AUROC of
        the ablated model minus the full model), n_rows, n_patients, n_events, n_folds,
        n_repeats, fit_seconds, skipped (reason, empty when the model ran).
        """
        return self.table.copy()

    def _header_lines(self) -> list[str]:
        return [f"{self.n_repeats} x {self.n_splits}-fold CV, grouped by patient, stratified by outcome; "
                f"baseline {self.baseline}; {self.conf_level:.0%} "
                + ("DeLong CIs (mean over repeats)" if self.settings.get("ci_method", "delong") == "delong"
                   else f"patient-cluster bootstrap CIs ({self.n_boot} replicates, mean over repeats)")]

    @property
    def models(self) -> list[str]:
        """Models (and ablations) that ran, in table order."""
        return [m for m in self.table.index if not self.table.at[m, "skipped"]]

    def _oof(self, model: str, repeat: int) -> pd.DataFrame:
        if model not in self.models:
            reason = (self.table.at[model, "skipped"] if model in self.table.index else "unknown")
            raise KeyError(f"ComparisonResult: no predictions for {model!r} ({reason or 'not run'}); "
                           f"available: {self.models}.")
        if not 0 <= repeat < self.n_repeats:
            raise ValueError(f"ComparisonResult: repeat={repeat!r}; expected 0..{self.n_repeats - 1}.")
        o = self.oof_predictions
        return o[(o["model"] == model) & (o["repeat"] == repeat)].sort_values("row")

    def roc(self, model: str | None = None, repeat: int = 0):
        """ROC curve of one model's pooled out-of-fold predictions of ``repeat``.

        Returns :func:`models.evaluate.roc_curve`'s result: an AUC CI and a pointwise
        sensitivity band from ``n_boot`` bootstrap replicates. ``model`` defaults to the
        baseline.

        Under DeLong (``settings["ci_method"] == "delong"``) the band resamples rows
        (seed 0) and ``auc_ci`` is DeLong's. Under the patient-cluster bootstrap
        (``ci_method == "cluster_bootstrap"``, e.g. several index visits per patient) the
        band resamples *patients*, stratified by whether the patient has an event, with
        the very replicates :func:`compare_models` drew (seed ``random_state``, ``n_boot``),
        and ``auc_ci`` is the percentile interval of the AUROC over them
        (``auc_ci_method == "cluster_bootstrap"``). With ``n_repeats == 1`` it therefore
        equals ``summary()``'s ``auroc_ci_low``/``auroc_ci_high``; with several repeats
        ``summary()`` takes the percentiles of the replicates averaged over repeats, so the
        interval of one repeat differs slightly. With one row per patient the band and
        ``auc_ci`` are the row bootstrap's and DeLong's whatever ``ci_method`` says.
        """
        model = self.baseline if model is None else model
        o = self._oof(model, repeat)
        clusters, seed = None, 0
        if (self.settings.get("ci_method") == "cluster_bootstrap" and "patient_id" in o.columns
                and o["patient_id"].duplicated().any()):
            clusters, seed = o["patient_id"].to_numpy(), int(self.settings.get("random_state", 0))
        return _roc_curve(o["y"].to_numpy(np.int8), pd.Series(o["p"].to_numpy(), name=model),
                          n_boot=self.n_boot, conf_level=self.conf_level, random_state=seed,
                          clusters=clusters)

    def calibration(self, model: str | None = None, repeat: int = 0, n_bins: int = 10):
        """Calibration (slope, intercept, binned curve) of one model's pooled predictions."""
        model = self.baseline if model is None else model
        o = self._oof(model, repeat)
        return _calibration(o["y"].to_numpy(np.int8), pd.Series(o["p"].to_numpy(), name=model),
                            n_bins=n_bins)

    def decision_curve(self, models: Sequence[str] | None = None, repeat: int = 0, thresholds=None):
        """Decision curves of several models on the same pooled predictions (net benefit)."""
        models = [m for m in self.models if self.table.at[m, "kind"] == "model"] if models is None else list(models)
        if not models:
            raise ValueError("ComparisonResult.decision_curve: no model ran.")
        frames = {m: self._oof(m, repeat) for m in models}
        y = frames[models[0]]["y"].to_numpy(np.int8)
        return _decision_curve(y, {m: f["p"].to_numpy() for m, f in frames.items()}, thresholds=thresholds)

    def shap_summary(self) -> pd.DataFrame:
        """Mean |SHAP| per feature of the all-features XGBoost, averaged over folds and repeats.

        Columns feature, modality, mean_abs_shap, sd_folds (SD over folds), sorted by
        importance. Empty when ``all_xgb`` did not run.
        """
        if self.shap.empty:
            return pd.DataFrame(columns=["feature", "modality", "mean_abs_shap", "sd_folds"])
        g = self.shap.groupby(["feature", "modality"], sort=False)["mean_abs_shap"]
        out = pd.DataFrame({"mean_abs_shap": g.mean(), "sd_folds": g.std(ddof=1)}).reset_index()
        return out.sort_values("mean_abs_shap", ascending=False, ignore_index=True)

    def modality_weights(self) -> pd.DataFrame:
        """Fusion weights over modalities, averaged over test patients and folds.

        Index = model (``fusion_bigru_attention``, ``fusion_late`` when run), one column
        per modality; rows sum to 1. Empty when neither ran.
        """
        if self.weights.empty:
            return pd.DataFrame()
        w = self.weights.groupby(["model", "modality"], sort=False)["weight"].mean()
        return w.unstack("modality").fillna(0.0).rename_axis(columns=None)

    # ---------------------------------------------------------------- plots
    def plot(self, kind: str = "roc", ax=None, *, model: str | Sequence[str] | None = None,
             repeat: int = 0, **kwargs):
        """Figure for the report, delegated to :mod:`models.plotting`.

        Parameters
        ----------
        kind : {"roc", "calibration", "decision", "shap", "modality_weights"}
        model : model name or list of names ("roc", "calibration", "decision");
            default: the baseline ("roc", "calibration"), every model ("decision").
        repeat : which repeat's pooled predictions to draw.

        Returns
        -------
        matplotlib.axes.Axes
        """
        from models import plotting

        kinds = ("roc", "calibration", "decision", "shap", "modality_weights")
        if kind not in kinds:
            raise ValueError(f"ComparisonResult.plot: kind={kind!r}; expected one of {kinds}.")
        if kind == "decision":
            names = None if model is None else ([model] if isinstance(model, str) else list(model))
            return plotting.plot_decision_curve(self.decision_curve(names, repeat), ax=ax, **kwargs)
        if kind == "shap":
            return plotting.plot_feature_importance(self.shap_summary(), ax=ax, **kwargs)
        if kind == "modality_weights":
            return plotting.plot_modality_weights(self.modality_weights(), ax=ax, **kwargs)
        names = [self.baseline] if model is None else ([model] if isinstance(model, str) else list(model))
        for j, m in enumerate(names):
            if kind == "roc":
                ax = plotting.plot_roc(self.roc(m, repeat), ax=ax, color=f"C{j}",
                                       band=len(names) == 1, **kwargs)
            else:
                ax = plotting.plot_calibration(self.calibration(m, repeat), ax=ax, color=f"C{j}", **kwargs)
        return ax


# =========================================================================== model specs
def _specs(models, ablate, avail, missing, count_col, warn) -> tuple[list[_Spec], dict[str, str]]:
    specs: list[_Spec] = []
    skipped: dict[str, str] = {}
    order = [m for m in MODALITY_PREFIXES if m in avail or (m == "ehr" and "ehr" not in missing)]
    for name in models:
        if name == "dev_count_logistic":
            if "dev" in missing:
                skipped[name] = f"modality dev missing for everyone ({missing['dev']})"
            elif count_col not in avail.get("dev", []):
                skipped[name] = f"count column {count_col!r} is not in the table"
            else:
                specs.append(_Spec(name, "logistic", ("dev",)))
        elif name in _SINGLE:
            m = _SINGLE[name]
            if m in avail:
                specs.append(_Spec(name, "xgb", (m,)))
            else:
                why = missing.get(m, "only EHR sequences were given (no ehr__ summary columns)")
                skipped[name] = f"modality {m} missing for everyone ({why})"
        elif name == "all_xgb":
            ms = tuple(m for m in order if m in avail)
            specs.append(_Spec(name, "xgb", ms))
        else:
            specs.append(_Spec(name, "fusion", tuple(order), strategy=name[len("fusion_"):]))
    for s in list(specs):
        if s.name in ablate and len(s.mods) > 1:
            for m in s.mods:
                specs.append(_Spec(f"{s.name}_minus_{m}", s.kind, tuple(x for x in s.mods if x != m),
                                   full=s.name, strategy=s.strategy))
    for name, why in skipped.items():
        warn(f"compare_models: skipped {name}: {why}.")
    return specs, skipped


# =========================================================================== main
def compare_models(
    table: pd.DataFrame,
    label: str | pd.Series,
    *,
    sequences=None,
    models: Sequence[str] = MODEL_NAMES,
    ablations: bool | Sequence[str] = True,
    baseline: str = "dev_count_logistic",
    n_splits: int = 5,
    n_repeats: int = 2,
    id_col: str = "patient_id",
    count_col: str = "dev__n_crit",
    preprocessors: Callable[[pd.DataFrame, pd.DataFrame], tuple[pd.DataFrame, pd.DataFrame]] | None = None,
    n_boot: int = 500,
    conf_level: float = 0.95,
    ci: str = "auto",
    random_state: int = 0,
    device: str = "auto",
    fusion_params: Mapping | None = None,
    xgb_params: Mapping | None = None,
    n_jobs: int | None = 1,
    client=None,
    verbose: int = 0,
) -> ComparisonResult:
    """Compare deviation-count, XGBoost and fusion predictors on identical folds.

    Parameters
    ----------
    table : DataFrame
        Analysis table: ``id_col``, the label, and features whose names carry a modality
        prefix (``dev__``, ``ehr__``, ``txt__``, ``demo__``). Other columns are ignored.
        Never modified.
    label : str or Series
        Label column name (0/1 or bool) or a Series indexed like ``table``. Rows without a
        label are dropped (counted, logged, DataDroppedWarning).
    sequences : mapping or EHRSequences, optional
        Padded EHR sequences for the fusion network: name -> ``(X (n, T, V), mask (n, T))``
        in table row order, or ``(X, mask, patient_ids)`` to be matched on ``id_col``, or
        an :class:`features.ehr.EHRSequences` (one modality ``ehr``). When given, EHR
        enters the fusion network as these sequences (the ``ehr__`` summary columns are
        used by XGBoost only); otherwise as the static ``ehr__`` columns.
    models : sequence of str
        Any of :data:`MODEL_NAMES`.
    ablations : bool or sequence of str
        Leave-one-modality-out ablations of these models (True: ``all_xgb`` and
        ``fusion_concat``, when requested); False for none.
    baseline : str
        Model every other one is compared with (paired DeLong or paired cluster bootstrap).
    n_splits, n_repeats : int
        Folds per repeat and number of repeats (repeat ``r`` uses seed ``random_state + r``).
    id_col : str
        Patient identifier: folds are grouped by it.
    count_col : str
        Critical-deviation count used by ``dev_count_logistic``.
    preprocessors : callable, optional
        ``f(train_rows, test_rows) -> (train_table, test_table)``, called once per fold
        with the fold's rows of ``table``; fit anything data-dependent on ``train_rows``
        only. The returned tables must keep the rows (same index and order); their
        prefixed columns are the features.
    n_boot : int
        Replicates of the patient-cluster bootstrap (``ci="cluster_bootstrap"``) and of
        the ROC band in :meth:`ComparisonResult.roc`.
    conf_level : float
    ci : {"auto", "delong", "cluster_bootstrap"}
        How AUROC CIs and paired tests are computed. ``"delong"``: DeLong on the pooled
        out-of-fold rows (assumes independent rows). ``"cluster_bootstrap"``: patients
        (``id_col``) resampled with replacement, stratified by whether the patient has any
        event, ``n_boot`` replicates seeded by ``random_state``; percentile CIs and
        bootstrap p-values (see the module docstring). ``"auto"`` (default): DeLong when
        every patient has exactly one labelled row, else the cluster bootstrap.
    random_state : int
        Seed of the folds, XGBoost, the networks and the cluster bootstrap.
    device : str
        ``"auto"``, ``"cpu"`` or ``"cuda"`` for XGBoost and torch.
    fusion_params, xgb_params : mapping, optional
        Extra keyword arguments of :class:`models.fusion.FusionClassifier` and
        :class:`models.xgb.XGBClassifierModel` (e.g. ``{"epochs": 30}``, ``{"n_estimators": 200}``).
        XGBoost gets ``n_jobs=1`` unless given: on a few hundred rows thread start-up
        dominates (one all-features fit on 290 rows: 0.5 s with 1 thread, 3.4 s with the
        default on the shared 2-core machine).
    n_jobs : int or None, default 1
        (repeat, fold) jobs run side by side in this many worker processes (joblib's loky
        backend; scikit-learn's convention: None -> 1, -1 -> all cores, -2 -> all but
        one; never more workers than jobs). Each job holds BLAS and torch to one thread,
        as the sequential path does, so the result does not depend on ``n_jobs``
        (XGBoost and logistic risks identical; the fusion networks identical in our tests,
        asserted to 1e-6). Processes, not threads: torch's random generator and thread
        setting are per process, and two networks trained in threads of one process would
        not reproduce. Each fresh worker spends a few seconds importing torch and XGBoost,
        so ``n_jobs > 1`` pays off from a few seconds of fitting per job upwards (demo-sized
        comparison on 2 cores: see ``benchmarks/RESULTS.md``, "Model comparison"). On a
        CUDA ``device`` the jobs run one after another in this process (logged): several
        processes would each open a CUDA context on the one GPU.
    client : dask.distributed.Client, optional
        Submit the same jobs to a Dask cluster (extra ``dask``); the table is scattered to
        the workers once. Jobs sharing a worker process run one at a time, so use workers
        with one thread each (``LocalCluster(threads_per_worker=1)``) and as many worker
        processes as jobs should run at once. Same results as the local paths. Cannot be
        combined with ``n_jobs > 1``.
    verbose : int
        > 0 logs one line per model and fold at INFO.

    Returns
    -------
    ComparisonResult

    Raises
    ------
    ValueError
        Unknown model names, a baseline that is not among ``models``, a fold with a
        single class (use a smaller ``n_splits``), an unknown ``ci``, ``n_boot < 100``
        when the cluster bootstrap runs, ``n_jobs`` 0 or not an integer, or ``client``
        with ``n_jobs > 1``.
    Exception raised while fitting
        Whatever a fit raises, with ``[repeat r, fold k, model name]`` appended to its
        message, of the same type and wording on every path (in a worker or not).
    ColumnContractError
        No prefixed feature column, a non-numeric or infinite feature, a missing
        ``id_col``, or sequences whose patient ids differ from the table's.
    ValueError (from :class:`models.fusion_data.FusionData`)
        A fusion model (or ablation) meets a patient with none of its modalities; such
        patients cannot be scored by the network: drop them or keep a modality every
        patient has (usually ``demo__``).

    Notes
    -----
    Runtime grows with ``n_repeats x n_splits x`` (models + ablations). Each (repeat,
    fold) is one job that fits every model in turn (XGBoost with ``xgb_params["n_jobs"]``
    threads, default 1; torch one thread); ``n_jobs`` or ``client`` run the jobs side by
    side. The ``preprocessors`` hook always runs in this process, once per fold, before
    the jobs start. Warnings raised inside the jobs are re-emitted here, once per category
    and message, after the fits; log records of worker processes are replayed into this
    process's loggers. ``fit_seconds`` stays the sum of the per-job fitting times (not
    wall time); ``settings`` records ``n_jobs``, ``n_workers``, ``client`` and
    ``execution`` ("sequential", "processes" or "dask"). On the 2-core development
    machine the default comparison on 362 patients takes about a minute (see
    ``benchmarks/RESULTS.md``, "Model comparison").

    See Also
    --------
    models.xgb.grouped_folds, models.evaluate.delong

    Examples
    --------
    >>> tab = simulate_comparison_table(200, random_state=0)
    >>> res = compare_models(tab, "y", models=("dev_count_logistic", "dev_xgb"), ablations=False,
    ...                      n_splits=3, n_repeats=1, device="cpu", xgb_params={"n_estimators": 50})
    >>> res.summary()[["auroc", "auroc_ci_low", "auroc_ci_high", "p_vs_baseline"]].round(2).rename_axis(None)
                        auroc  auroc_ci_low  auroc_ci_high  p_vs_baseline
    dev_count_logistic   0.77          0.70           0.84            NaN
    dev_xgb              0.71          0.64           0.79           0.02
    """
    who = "compare_models"
    require_dataframe(table, who, "table")
    models = tuple(models)
    unknown = [m for m in models if m not in MODEL_NAMES]
    if unknown or not models:
        raise ValueError(f"{who}: unknown models {unknown}; choose from {list(MODEL_NAMES)}.")
    if baseline not in models:
        raise ValueError(f"{who}: baseline={baseline!r} is not among models {list(models)}; add it or "
                         "choose another baseline.")
    if ablations is True:
        ablate = tuple(m for m in _DEFAULT_ABLATE if m in models)
    elif ablations is False or ablations is None:
        ablate = ()
    else:
        ablate = tuple(ablations)
        bad = [m for m in ablate if m not in models or m in _SINGLE]
        if bad:
            raise ValueError(f"{who}: ablations {bad} must be multi-modality models among models "
                             f"(all_xgb or fusion_*).")
    if int(n_splits) < 2 or int(n_repeats) < 1:
        raise ValueError(f"{who}: n_splits={n_splits!r}, n_repeats={n_repeats!r}; expected n_splits >= 2 "
                         "and n_repeats >= 1.")
    zc = _zcrit(conf_level)
    if ci not in _CI_METHODS:
        raise ValueError(f"{who}: ci={ci!r}; expected one of {list(_CI_METHODS)}.")
    if id_col not in table.columns:
        raise ColumnContractError(f"{who}: patient id column {id_col!r} is not in the table; folds are "
                                  "grouped by patient. Pass id_col=... naming it.")
    if table[id_col].isna().any():
        i = int(np.flatnonzero(table[id_col].isna().to_numpy())[0])
        raise ColumnContractError(f"{who}: {id_col!r} is missing at row {table.index[i]!r} "
                                  f"({int(table[id_col].isna().sum())} rows); every row needs a patient id.")
    cols = _check_table(table, who)
    lab = _label_array(table, label, who)
    keep = ~np.isnan(lab)
    n_drop = int((~keep).sum())
    if n_drop:
        warnings.warn(f"{who}: dropped {n_drop} rows without a label. Silence with "
                      "warnings.filterwarnings('ignore', category=DataDroppedWarning).",
                      DataDroppedWarning, stacklevel=2)
        log_dropped(_log, n_drop, "rows", "label missing")
    seqs = _sequences(sequences, table, keep, id_col, who)
    drop_cols = [label] if isinstance(label, str) else []
    t = table.loc[keep].drop(columns=drop_cols)
    y = lab[keep].astype(np.int8)
    fp = dict(fusion_params or {})
    xp = {"n_jobs": 1, **dict(xgb_params or {})}  # one thread: 7x faster than all cores at this size
    n_jobs_eff = J.effective_n_jobs(n_jobs, who)
    if client is not None and n_jobs_eff > 1:
        raise ValueError(f"{who}: client= and n_jobs={n_jobs!r} were both given; the Dask cluster "
                         "decides how many jobs run at once. Pass one of them (n_jobs=1 with a client).")
    for bad_key in ("strategy", "random_state", "device"):
        if bad_key in fp or bad_key in xp:
            raise ValueError(f"{who}: pass {bad_key!r} as an argument of compare_models, not inside "
                             "fusion_params/xgb_params.")

    # ---- identical folds for every model
    pid_all = t[id_col].to_numpy()
    n_pat_events = pd.unique(pid_all[y == 1]).size
    n_pat_non = pd.unique(pid_all[y == 0]).size
    rows_per_patient = pd.Series(pid_all).value_counts()
    method = ci if ci != "auto" else ("delong" if bool((rows_per_patient == 1).all()) else "cluster_bootstrap")
    if ci == "auto":
        _log.info("%s: ci='auto' -> %s (%d rows from %d patients, at most %d rows per patient)", who,
                  method, len(y), rows_per_patient.size, int(rows_per_patient.max()))
    if method == "cluster_bootstrap" and int(n_boot) < 100:
        raise ValueError(f"{who}: n_boot={n_boot!r}; the patient-cluster bootstrap (ci={ci!r}, "
                         f"{int(rows_per_patient.max())} rows for some patient) needs n_boot >= 100 "
                         "(500-2000 recommended).")
    if min(n_pat_events, n_pat_non) < int(n_splits):
        raise ValueError(
            f"{who}: {n_pat_events} patients with events and {n_pat_non} without cannot fill "
            f"n_splits={n_splits} outcome-stratified folds: some fold would hold a single class. "
            f"Use fewer folds, e.g. n_splits={max(2, min(n_pat_events, n_pat_non))}, or a more "
            "common outcome."
        )
    folds = np.column_stack([
        grouped_folds(t, y, n_splits=int(n_splits), id_col=id_col, random_state=int(random_state) + r).to_numpy()
        for r in range(int(n_repeats))
    ])
    for r in range(folds.shape[1]):
        for k in range(int(n_splits)):
            for part, rows in (("test", folds[:, r] == k), ("training", folds[:, r] != k)):
                ev, nr = int(y[rows].sum()), int(rows.sum())
                if ev == 0 or ev == nr:
                    raise ValueError(
                        f"{who}: repeat {r}, fold {k}: the {part} part holds a single class "
                        f"({ev} events among {nr} rows). With {int(y.sum())} events in "
                        f"{n_pat_events} patients, use fewer folds, e.g. "
                        f"n_splits={max(2, min(int(n_splits) - 1, n_pat_events // 2))}."
                    )

    # ---- preprocess inside each fold (the hook sees only that fold's rows)
    fold_tables = {}
    for r in range(folds.shape[1]):
        for k in range(int(n_splits)):
            tr_pos = np.flatnonzero(folds[:, r] != k)
            te_pos = np.flatnonzero(folds[:, r] == k)
            tr = te = None  # without a hook each job slices the (shared) table itself
            fcols = cols
            if preprocessors is not None:  # the hook runs here, in this process
                tr, te = _run_hook(preprocessors, t.iloc[tr_pos], t.iloc[te_pos], who, r, k)
                fcols = _check_table(pd.concat([tr, te]), f"{who} (preprocessors output, repeat {r}, fold {k})")
            fold_tables[(r, k)] = (tr_pos, te_pos, tr, te, fcols)
    if preprocessors is not None:  # modality availability as seen in the first fold
        tr0, te0, cols = fold_tables[(0, 0)][2:]
        probe = pd.concat([tr0, te0])
    else:
        probe = t
    avail, missing = _available(probe, cols, seqs)

    def warn(msg):
        warnings.warn(msg + " Silence with warnings.filterwarnings('ignore', category=DataDroppedWarning).",
                      DataDroppedWarning, stacklevel=3)
        _log.warning(msg)

    specs, skipped = _specs(models, ablate, avail, missing, count_col, warn)
    if baseline in skipped:
        warn(f"{who}: the baseline {baseline} was skipped, so delta_vs_baseline and p_vs_baseline "
             "are NaN; choose another baseline.")
    if missing and any(sp.kind == "fusion" or sp.name == "all_xgb" for sp in specs):
        _log.warning("%s: modalities left out of the multi-modality models: %s", who, missing)

    # ---- fit every model on every fold: one job per (repeat, fold), here, in worker
    # processes or on a Dask cluster; outputs come back in task order
    tasks = [J._FoldTask(r, k, tr_pos, te_pos, fcols, None if preprocessors is None else (tr, te))
             for (r, k), (tr_pos, te_pos, tr, te, fcols) in fold_tables.items()]
    n_workers = 1
    if client is None and n_jobs_eff > 1:
        from normfuse.device import resolve_device

        n_workers = J.plan_workers(n_jobs_eff, len(tasks), resolve_device(device), who)
    ctx = J._JobContext(specs=tuple(specs), y=y, seqs=seqs, id_col=id_col, count_col=count_col,
                        device=device, random_state=int(random_state), xgb_params=xp, fusion_params=fp,
                        who=who, main_pid=os.getpid(), log_level=_log.getEffectiveLevel())
    outputs = J.run_folds(ctx, tasks, t if preprocessors is None else None, n_workers, client)
    J.replay(outputs)
    oof = {s.name: np.full((len(y), folds.shape[1]), np.nan) for s in specs}
    secs = dict.fromkeys(oof, 0.0)
    shap_rows, weight_rows = [], []
    for task, o in zip(tasks, outputs, strict=True):
        for s in specs:
            oof[s.name][task.te_pos, task.r] = o.preds[s.name]
            secs[s.name] += o.secs[s.name]
            if verbose:
                _log.info("repeat %d fold %d %-28s %d test rows, %.2f s", task.r, task.k, s.name,
                          len(task.te_pos), o.secs[s.name])
        shap_rows.extend(o.shap_rows)
        weight_rows.extend(o.weight_rows)

    boot = None
    if method == "cluster_bootstrap":
        boot = (_cluster_weights(pid_all, y, int(n_boot), np.random.default_rng(int(random_state))),
                float(conf_level))
    table_out, per_repeat = _evaluate(specs, skipped, oof, y, t[id_col].to_numpy(), baseline, zc,
                                      int(n_splits), folds.shape[1], secs, models, avail, seqs, boot)
    pid = t[id_col].to_numpy()
    long = [pd.DataFrame({"repeat": r, "fold": folds[:, r], "row": np.arange(len(y)), "patient_id": pid,
                          "model": s.name, "y": y, "p": oof[s.name][:, r]})
            for s in specs for r in range(folds.shape[1])]
    oof_df = pd.concat(long, ignore_index=True) if long else pd.DataFrame(
        columns=["repeat", "fold", "row", "patient_id", "model", "y", "p"])
    shap_df = pd.DataFrame(shap_rows, columns=["repeat", "fold", "feature", "modality", "mean_abs_shap"])
    weight_df = pd.DataFrame(weight_rows, columns=["model", "repeat", "fold", "modality", "weight"])
    folds_df = pd.DataFrame(folds, index=t.index, columns=[f"repeat_{r}" for r in range(folds.shape[1])])
    settings = {"count_col": count_col, "device": device, "random_state": int(random_state),
                "fusion_params": fp, "xgb_params": xp, "sequences": sorted(seqs),
                "missing_modalities": missing, "n_dropped_unlabelled": n_drop, "ci": ci,
                "ci_method": method, "max_rows_per_patient": int(rows_per_patient.max()),
                "preprocessors": None if preprocessors is None else getattr(preprocessors, "__name__", repr(preprocessors)),
                "n_jobs": n_jobs, "n_workers": n_workers, "client": client is not None,
                "execution": "dask" if client is not None else ("processes" if n_workers > 1 else "sequential")}
    return ComparisonResult(table=table_out, per_repeat=per_repeat, oof_predictions=oof_df, shap=shap_df,
                            weights=weight_df, folds=folds_df, baseline=baseline, conf_level=float(conf_level),
                            n_splits=int(n_splits), n_repeats=folds.shape[1], n_boot=int(n_boot),
                            settings=settings)


def _run_hook(fn, tr: pd.DataFrame, te: pd.DataFrame, who: str, r: int, k: int):
    out = fn(tr.copy(), te.copy())
    if not (isinstance(out, tuple) and len(out) == 2
            and all(isinstance(o, pd.DataFrame) for o in out)):
        raise TypeError(f"{who}: preprocessors must return (train_table, test_table) DataFrames; "
                        f"got {type(out).__name__} in repeat {r}, fold {k}.")
    for name, got, want in (("train", out[0], tr), ("test", out[1], te)):
        if not got.index.equals(want.index):
            raise ColumnContractError(
                f"{who}: preprocessors changed the rows of the {name} table in repeat {r}, fold {k} "
                f"({len(want)} rows in, {len(got)} out). Keep every row, in order (impute rather "
                "than drop), so predictions stay aligned with the labels.")
    return out


# =========================================================================== metrics
def _cluster_weights(pid: np.ndarray, y: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Row weights (n_boot, N) of a patient bootstrap stratified by "patient has any event".

    A row's weight is how often its patient was drawn (:func:`models.evaluate._cluster_counts`,
    the routine :meth:`ComparisonResult.roc` uses too, so both see the same replicates).
    """
    codes, _ = pd.factorize(pid)
    return _cluster_counts(codes, y, n_boot, rng)[:, codes].astype(np.float64)


def _boot_p(d: np.ndarray) -> float:
    """Two-sided bootstrap p-value ``2 min(P(d <= 0), P(d >= 0))`` with the +1 correction."""
    d = d[~np.isnan(d)]
    if d.size == 0:
        return np.nan
    lo, hi = (1 + np.sum(d <= 0)) / (d.size + 1), (1 + np.sum(d >= 0)) / (d.size + 1)
    return float(min(1.0, 2 * min(lo, hi)))


def _pct(d: np.ndarray, conf: float) -> tuple[float, float]:
    a = (1.0 - conf) / 2.0
    if np.isnan(d).all():
        return np.nan, np.nan
    lo, hi = np.nanquantile(d, [a, 1.0 - a])
    return float(lo), float(hi)


def _evaluate(specs, skipped, oof, y, pid, baseline, zc, n_splits, n_rep, secs, models, avail, seqs,
              boot=None):
    rows, per = {}, []
    names = [s.name for s in specs]
    base_ok = baseline in oof
    method = "delong" if boot is None else "cluster_bootstrap"
    bauc: dict = {}  # (model, repeat) -> (n_boot,) AUROC on the shared replicates

    def boot_auc(name, r):
        if (name, r) not in bauc:
            bauc[(name, r)] = K.weighted_auc_rows(oof[name][:, r], y, boot[0])
        return bauc[(name, r)]

    if boot is not None:
        n_bad = int(np.isnan(K.weighted_auc_rows(np.zeros(len(y)), y, boot[0])).sum())
        if n_bad:
            log_dropped(_log, n_bad, "bootstrap replicates", "a single class drawn")
    for s in specs:
        recs = []
        for r in range(n_rep):
            p = oof[s.name][:, r]
            scores = {s.name: p}
            if base_ok and s.name != baseline:
                scores[baseline] = oof[baseline][:, r]
            if s.full is not None:
                scores[s.full] = oof[s.full][:, r]
            d = _delong(y, scores)
            rec = {"model": s.name, "repeat": r, "auroc": float(d.auc[0]), "auroc_se": float(d.se[0]),
                   "auprc": float(K.average_precision_rows(p[None, :], y)[0]),
                   "brier": float(np.mean((p - y) ** 2))}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                c = _calibration(y, p)
            rec["cal_slope"], rec["cal_intercept"] = c.slope, c.intercept
            refs = {"baseline": baseline if (base_ok and s.name != baseline) else None, "full": s.full}
            for tag, ref in refs.items():
                if ref is None:
                    same = tag == "baseline" and s.name == baseline
                    rec[f"delta_vs_{tag}"] = 0.0 if same else np.nan
                    rec[f"delta_{tag}_se"] = 0.0 if same else np.nan
                    rec[f"p_vs_{tag}"] = np.nan
                    continue
                cmp = d.compare(s.name, ref)
                rec[f"delta_vs_{tag}"] = cmp.difference
                rec[f"delta_{tag}_se"] = cmp.se
                rec[f"p_vs_{tag}"] = cmp.p_value
                if boot is not None:
                    bd = boot_auc(s.name, r) - boot_auc(ref, r)
                    rec[f"delta_{tag}_se"] = float(np.nanstd(bd, ddof=1))
                    rec[f"p_vs_{tag}"] = _boot_p(bd)
            if boot is not None:
                rec["auroc_se"] = float(np.nanstd(boot_auc(s.name, r), ddof=1))
            rec["ci_method"] = method
            recs.append(rec)
        per.extend(recs)
        pr = pd.DataFrame(recs)
        row = {"kind": "ablation" if s.full else "model", "modalities": "+".join(
            ("ehr_seq" if (m == "ehr" and seqs and s.kind == "fusion") else m) for m in s.mods)}
        auc = pr["auroc"].mean()
        se = float(np.sqrt(np.mean(pr["auroc_se"] ** 2)))
        row.update(auroc=auc, auroc_ci_low=max(0.0, auc - zc * se), auroc_ci_high=min(1.0, auc + zc * se),
                   auroc_sd_repeats=pr["auroc"].std(ddof=1) if n_rep > 1 else np.nan,
                   auprc=pr["auprc"].mean(), brier=pr["brier"].mean(),
                   cal_slope=pr["cal_slope"].mean(), cal_intercept=pr["cal_intercept"].mean())
        row["ci_method"] = method
        if boot is not None:
            mean_boot = np.mean([boot_auc(s.name, r) for r in range(n_rep)], axis=0)
            row["auroc_ci_low"], row["auroc_ci_high"] = _pct(mean_boot, boot[1])
        for tag in ("baseline", "full"):
            dlt = pr[f"delta_vs_{tag}"].mean()
            dse = float(np.sqrt(np.mean(pr[f"delta_{tag}_se"] ** 2)))
            if tag == "baseline":
                row["delta_ci_low"], row["delta_ci_high"] = dlt - zc * dse, dlt + zc * dse
            row[f"delta_vs_{tag}"] = dlt
            if np.isnan(dlt) or (tag == "baseline" and s.name == baseline):
                row[f"p_vs_{tag}"] = np.nan
            elif boot is not None:
                ref = baseline if tag == "baseline" else s.full
                bd = np.mean([boot_auc(s.name, r) - boot_auc(ref, r) for r in range(n_rep)], axis=0)
                if tag == "baseline":
                    row["delta_ci_low"], row["delta_ci_high"] = _pct(bd, boot[1])
                row[f"p_vs_{tag}"] = _boot_p(bd)
            else:
                z = dlt / dse if dse > 0 else (0.0 if dlt == 0 else np.inf)
                row[f"p_vs_{tag}"] = float(2 * ndtr(-abs(z)))
        row["full_model"] = s.full or ""
        row.update(n_rows=len(y), n_patients=int(pd.unique(pid).size), n_events=int(y.sum()),
                   n_folds=n_splits, n_repeats=n_rep, fit_seconds=secs[s.name], skipped="")
        rows[s.name] = row
    for name, why in skipped.items():
        rows[name] = {"kind": "model", "modalities": _SINGLE.get(name, ""), "skipped": why,
                      "full_model": "", "n_rows": len(y), "n_patients": int(pd.unique(pid).size),
                      "n_events": int(y.sum()), "n_folds": n_splits, "n_repeats": n_rep}
    order = [m for m in models if m in rows] + [n for n in names if n not in models]
    tab = pd.DataFrame.from_dict(rows, orient="index").reindex(order)
    tab = tab.reindex(columns=_SUMMARY_COLS)
    tab["skipped"] = tab["skipped"].fillna("").astype(str)
    tab["full_model"] = tab["full_model"].fillna("").astype(str)
    tab["ci_method"] = tab["ci_method"].where(tab["skipped"] == "", "").fillna("").astype(str)
    tab.index.name = "model"
    per_df = pd.DataFrame(per)
    return tab, per_df
