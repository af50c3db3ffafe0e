"""XGBoost classifier on the flat analysis table, with TreeSHAP and JSON persistence.

:class:`XGBClassifierModel` is a scikit-learn-style estimator that selects the feature
columns by modality prefix (``dev__``, ``ehr__``, ``txt__``, ``demo__``), holds out an
inner validation split (stratified by outcome, grouped by ``patient_id``) for early
stopping, weights the classes, and runs on CUDA when a GPU is visible (``hist`` on the
CPU otherwise; same API). SHAP values come from XGBoost's own TreeSHAP
(``pred_contribs=True``); the model is saved as XGBoost JSON inside a normfuse folder.

``xgboost`` is imported inside the methods that use it, so importing this module stays
light.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin

from normfuse import persist
from normfuse.checks import (
    check_columns_match,
    check_is_fitted,
    check_numeric,
    get_logger,
    log_dropped,
    require_dataframe,
)
from normfuse.contracts import MODALITY_PREFIXES
from normfuse.device import xgboost_device
from normfuse.errors import ColumnContractError, DataDroppedWarning, SchemaError

__all__ = ["XGBClassifierModel", "inner_split", "select_features", "grouped_folds", "cross_val_risk"]

_log = get_logger("models.xgb")
_KIND = "XGBClassifierModel"


def select_features(table: pd.DataFrame, prefixes: Sequence[str], who: str) -> list[str]:
    """Columns of ``table`` that start with one of ``prefixes``, in table order.

    Raises :class:`ColumnContractError` naming every prefix that matches no column (a
    modality missing from the table).
    """
    require_dataframe(table, who, "table")
    prefixes = tuple(prefixes)
    if not prefixes:
        raise ValueError(f"{who}: feature_prefixes is empty; use e.g. {tuple(MODALITY_PREFIXES.values())}.")
    cols = [str(c) for c in table.columns]
    absent = [p for p in prefixes if not any(c.startswith(p) for c in cols)]
    if absent:
        raise ColumnContractError(
            f"{who}: no feature column starts with {absent} (modality missing from the table).\n"
            f"Present columns: {cols[:20]}{' ...' if len(cols) > 20 else ''}\n"
            f"Try 1) dropping it: feature_prefixes={tuple(p for p in prefixes if p not in absent)!r}, "
            "or 2) joining that modality's features into the analysis table."
        )
    return [c for c in table.columns if str(c).startswith(prefixes)]


def inner_split(
    y: np.ndarray,
    groups: np.ndarray | None,
    validation_fraction: float,
    random_state: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Row positions ``(train, validation)`` of a split stratified by ``y`` and grouped by ``groups``.

    The validation part is one fold of ``round(1 / validation_fraction)`` folds of
    scikit-learn's ``StratifiedGroupKFold`` (``StratifiedKFold`` without groups), so
    no patient has rows on both sides.
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    k = max(2, int(round(1.0 / validation_fraction)))
    if groups is not None:
        n_groups = pd.unique(groups).size
        if n_groups < k:
            raise ValueError(
                f"XGBClassifierModel.fit: only {n_groups} distinct patients, too few for a "
                f"validation_fraction={validation_fraction} split ({k} folds). Use more "
                "patients or set early_stopping_rounds=None."
            )
        cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=random_state)
        tr, va = next(cv.split(np.zeros(len(y)), y, groups))
    else:
        cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=random_state)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "least populated class" notice
            tr, va = next(cv.split(np.zeros(len(y)), y))
    return np.sort(tr), np.sort(va)


def _label_array(table: pd.DataFrame, y, who: str) -> np.ndarray:
    """Labels aligned with ``table`` as float (NaN where missing)."""
    if isinstance(y, str):
        if y not in table.columns:
            raise ColumnContractError(f"{who}: label column {y!r} is not in the table. Labels look "
                                      "like 'y_edss4_3y' (normfuse.contracts.milestone_label(4, 3)).")
        yy = table[y]
    elif isinstance(y, pd.Series):
        if not y.index.equals(table.index):
            missing = table.index.difference(y.index)
            if len(missing) or not y.index.is_unique:
                raise ColumnContractError(
                    f"{who}: the label Series' index does not match the table's index "
                    f"({len(missing)} table rows have no label, e.g. {list(missing[:5])}). "
                    "Pass labels indexed like the table, or the label column's name."
                )
            yy = y.reindex(table.index)
        else:
            yy = y
    elif y is None:
        raise ValueError(f"{who}: y is required (a label column name or a Series of 0/1).")
    else:
        arr = np.asarray(y)
        if arr.shape != (len(table),):
            raise ValueError(f"{who}: y has shape {arr.shape}, the table has {len(table)} rows.")
        yy = pd.Series(arr, index=table.index)
    if yy.dtype == bool:
        return yy.to_numpy(dtype=np.float64)
    num = pd.to_numeric(yy, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isnan(num) & ~np.isin(num, (0.0, 1.0))
    bad |= np.isnan(num) & yy.notna().to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{who}: labels must be 0/1 or True/False; row {table.index[i]!r} holds "
                         f"{_plain(yy.iloc[i])!r} ({int(bad.sum())} such rows).")
    return num


def _plain(v):
    return v.item() if isinstance(v, np.generic) else v


def grouped_folds(
    table: pd.DataFrame,
    y,
    *,
    n_splits: int = 5,
    id_col: str = "patient_id",
    random_state: int | None = 0,
) -> pd.Series:
    """Fold number (0..n_splits-1) of every row: stratified by outcome, grouped by patient.

    Every row of a patient falls in the same fold, so a model never sees a test patient's
    other visits. Rows whose label is missing get fold -1 (they are counted and logged)
    and are left out of every fold. Reuse the returned Series to compare models on
    identical folds.

    Parameters
    ----------
    table : analysis table (holds ``id_col`` when patients have several rows).
    y : label column name, Series indexed like ``table``, or array in table order.
    n_splits : number of folds; id_col : patient identifier; random_state : shuffling seed.

    Returns
    -------
    Series of int named ``fold`` with the table's index.
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    who = "grouped_folds"
    require_dataframe(table, who, "table")
    lab = _label_array(table, y, who)
    keep = ~np.isnan(lab)
    log_dropped(_log, int((~keep).sum()), "rows", "label missing (fold -1)")
    yk = lab[keep].astype(int)
    fold = np.full(len(table), -1, dtype=int)
    rows = np.flatnonzero(keep)
    if id_col in table.columns:
        groups = table[id_col].to_numpy()[keep]
        cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=random_state)
        splits = cv.split(np.zeros(yk.size), yk, groups)
    else:
        cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=random_state)
        splits = cv.split(np.zeros(yk.size), yk)
    for k, (_, te) in enumerate(splits):
        fold[rows[te]] = k
    return pd.Series(fold, index=table.index, name="fold")


def cross_val_risk(estimator, table: pd.DataFrame, y, folds: pd.Series | None = None, **fold_kw) -> pd.Series:
    """Out-of-fold predicted risks: each row is predicted by a clone fitted without its fold.

    Parameters
    ----------
    estimator : unfitted estimator with ``fit(table, y)`` and ``predict_proba(table)``
        (e.g. :class:`XGBClassifierModel`); it is cloned per fold, never modified.
    table, y : analysis table and labels (as in :func:`grouped_folds`).
    folds : fold number per row from :func:`grouped_folds` (computed with ``fold_kw``
        when None). Rows in fold -1 get NaN.

    Returns
    -------
    Series named ``risk`` with the table's index.
    """
    from sklearn.base import clone

    who = "cross_val_risk"
    lab = _label_array(table, y, who)
    if folds is None:
        folds = grouped_folds(table, lab, **fold_kw)
    if not (isinstance(folds, pd.Series) and folds.index.equals(table.index)):
        raise ColumnContractError(f"{who}: folds must be a Series indexed like the table "
                                  "(use grouped_folds(table, y)).")
    f = folds.to_numpy()
    risk = np.full(len(table), np.nan)
    for k in np.unique(f[f >= 0]):  # one fit per fold
        tr = np.flatnonzero((f >= 0) & (f != k))
        te = np.flatnonzero(f == k)
        model = clone(estimator).fit(table.iloc[tr], pd.Series(lab[tr], index=table.index[tr]))
        risk[te] = model.predict_proba(table.iloc[te])[:, 1]
    return pd.Series(risk, index=table.index, name="risk")


@persist.register(_KIND, schema=1)
class XGBClassifierModel(ClassifierMixin, BaseEstimator):
    """Gradient-boosted trees predicting a binary milestone from the analysis table.

    Parameters
    ----------
    feature_prefixes : tuple of str
        Modalities to use; every column starting with one of them is a feature. A prefix
        matching no column is an error (a modality missing from the table).
    n_estimators : int
        Maximum boosting rounds.
    learning_rate, max_depth, min_child_weight, subsample, colsample_bytree, reg_lambda
        XGBoost's ``eta``, ``max_depth``, ``min_child_weight``, ``subsample``,
        ``colsample_bytree``, ``lambda``.
    early_stopping_rounds : int or None
        Stop when the validation log-loss has not improved for this many rounds; None
        trains ``n_estimators`` rounds on all rows (no inner split).
    validation_fraction : float
        Share of patients held out for early stopping (stratified by outcome, grouped by
        ``id_col`` when that column is present).
    scale_pos_weight : "balanced", float or None
        Weight of events; "balanced" uses n_non_events / n_events of the training split.
    id_col : str
        Patient identifier used to group the inner split.
    device : "auto", "cpu" or "cuda"
        "auto" uses CUDA when a GPU is visible, else the CPU ``hist`` method. Results on
        CUDA equal the CPU's within floating-point tolerance (not bit for bit: GPU
        histogram sums run in another order).
    n_jobs : int or None
        CPU threads (None lets XGBoost decide).
    random_state : int
        Seed of the inner split and of XGBoost's row/column sampling.
    verbose : int
        0 silent; >= 1 logs the validation loss every ``verbose`` rounds at INFO.

    Attributes
    ----------
    feature_names_in_ : ndarray of str
        Feature columns seen in fit.
    booster_ : xgboost.Booster
    best_iteration_ : int
        Last round used for prediction (from early stopping).
    scale_pos_weight_ : float
    feature_importances_ : ndarray
        Total gain per feature, normalised to sum to 1 (0 for unused features).
    n_train_, n_val_ : int
        Rows in the training and early-stopping parts; n_dropped_ : rows without a label.
    n_missing_by_modality_ : dict
        Prefix -> training rows where every feature of that modality is missing (e.g. a
        patient without a scan or without notes). Such rows are kept: XGBoost sends
        missing values along the branch it learned for them. A modality missing for
        every row is an error.
    device_ : str
        Device actually used ("cpu" or "cuda").

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = pd.DataFrame(rng.normal(size=(300, 3)), columns=["dev__a", "ehr__b", "demo__c"])
    >>> X["patient_id"] = np.arange(300)
    >>> y = (X["dev__a"] + rng.normal(scale=0.5, size=300) > 0).astype(int)
    >>> m = XGBClassifierModel(feature_prefixes=("dev__", "ehr__", "demo__"), device="cpu").fit(X, y)
    >>> m.shap_values(X).abs().mean().drop("bias").idxmax()
    'dev__a'
    """

    def __init__(
        self,
        *,
        feature_prefixes: Sequence[str] = ("dev__", "ehr__", "txt__", "demo__"),
        n_estimators: int = 500,
        learning_rate: float = 0.05,
        max_depth: int = 4,
        min_child_weight: float = 1.0,
        subsample: float = 0.8,
        colsample_bytree: float = 0.8,
        reg_lambda: float = 1.0,
        early_stopping_rounds: int | None = 30,
        validation_fraction: float = 0.2,
        scale_pos_weight: Literal["balanced"] | float | None = "balanced",
        id_col: str = "patient_id",
        device: str = "auto",
        n_jobs: int | None = None,
        random_state: int = 0,
        verbose: int = 0,
    ):
        self.feature_prefixes = feature_prefixes
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.max_depth = max_depth
        self.min_child_weight = min_child_weight
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.reg_lambda = reg_lambda
        self.early_stopping_rounds = early_stopping_rounds
        self.validation_fraction = validation_fraction
        self.scale_pos_weight = scale_pos_weight
        self.id_col = id_col
        self.device = device
        self.n_jobs = n_jobs
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ helpers
    def _check_params(self) -> None:
        who = "XGBClassifierModel"
        if not (isinstance(self.n_estimators, (int, np.integer)) and self.n_estimators >= 1):
            raise ValueError(f"{who}: n_estimators={self.n_estimators!r}; expected a positive integer.")
        if self.early_stopping_rounds is not None:
            if not (0 < float(self.validation_fraction) < 1):
                raise ValueError(f"{who}: validation_fraction={self.validation_fraction!r}; expected a "
                                 "number in (0, 1) such as 0.2, or early_stopping_rounds=None.")
            if int(self.early_stopping_rounds) < 1:
                raise ValueError(f"{who}: early_stopping_rounds={self.early_stopping_rounds!r}; "
                                 "expected a positive integer or None.")
        spw = self.scale_pos_weight
        if not (spw is None or spw == "balanced" or (isinstance(spw, (int, float)) and spw > 0)):
            raise ValueError(f"{who}: scale_pos_weight={spw!r}; expected 'balanced', a positive "
                             "number, or None.")

    def _matrix(self, table: pd.DataFrame, features: Sequence[str], who: str) -> np.ndarray:
        """Features as float32 with NaN kept (XGBoost's missing value); inf is an error."""
        x = check_numeric(table, list(features), who, allow_nan=True)
        return x.astype(np.float32)

    def _xgb_params(self, device: str, spw: float) -> dict:
        p = {
            "objective": "binary:logistic",
            "eval_metric": "logloss",
            "tree_method": "hist",
            "device": device,
            "eta": float(self.learning_rate),
            "max_depth": int(self.max_depth),
            "min_child_weight": float(self.min_child_weight),
            "subsample": float(self.subsample),
            "colsample_bytree": float(self.colsample_bytree),
            "lambda": float(self.reg_lambda),
            "scale_pos_weight": float(spw),
            "seed": int(self.random_state),
            "verbosity": 0,
        }
        if self.n_jobs is not None:
            p["nthread"] = int(self.n_jobs)
        return p

    # ------------------------------------------------------------------ fit
    def fit(self, table: pd.DataFrame, y=None) -> XGBClassifierModel:
        """Fit on the analysis table.

        Parameters
        ----------
        table : DataFrame
            Analysis table; features are the columns starting with ``feature_prefixes``
            (NaN allowed), ``id_col`` (if present) groups the inner split.
        y : str, Series or array
            Label column name in ``table`` (e.g. ``"y_edss4_3y"``), a 0/1 Series indexed
            like ``table``, or an array in table order. Rows with a missing label are
            dropped, counted in ``n_dropped_``, logged and warned about
            (:class:`~normfuse.errors.DataDroppedWarning`).

        Returns
        -------
        self

        Raises
        ------
        ColumnContractError
            A prefix matches no column; a modality is missing for every row; inf in a
            feature; labels not aligned with the table.
        ValueError
            A single-class training set; non-0/1 labels; bad parameters.
        """
        import xgboost as xgb

        who = "XGBClassifierModel.fit"
        self._check_params()
        require_dataframe(table, who, "table")
        features = select_features(table, self.feature_prefixes, who)
        labels = _label_array(table, y, who)
        x = self._matrix(table, features, who)
        keep = ~np.isnan(labels)
        n_drop = int((~keep).sum())
        if n_drop:
            log_dropped(_log, n_drop, "rows", "label missing")
            warnings.warn(f"{who}: dropped {n_drop} of {len(labels)} rows whose label is missing.",
                          DataDroppedWarning, stacklevel=2)
        x, labels = x[keep], labels[keep].astype(np.int8)
        missing_rows = {}
        for prefix in self.feature_prefixes:
            cols = [j for j, c in enumerate(features) if str(c).startswith(prefix)]
            absent = np.isnan(x[:, cols]).all(axis=1)
            missing_rows[prefix] = int(absent.sum())
            if missing_rows[prefix]:
                _log.info("%s: %d of %d rows have no %r feature (modality absent for that "
                          "patient); XGBoost routes them along its learned missing-value branch",
                          who, missing_rows[prefix], x.shape[0], prefix)
            if absent.all():
                raise ColumnContractError(
                    f"{who}: modality {prefix!r} ({len(cols)} columns) is missing for every "
                    "training row. Check the join that built the table, or leave the modality "
                    f"out: feature_prefixes={tuple(p for p in self.feature_prefixes if p != prefix)!r}."
                )
        n_pos = int(labels.sum())
        if n_pos == 0 or n_pos == labels.size:
            raise ValueError(
                f"{who}: the training labels hold a single class ({n_pos} events among "
                f"{labels.size} rows); a classifier needs both. Check the label column and "
                "the fold (pool folds or choose a milestone with events)."
            )
        groups = None
        if self.id_col in table.columns:
            groups = table[self.id_col].to_numpy()[keep]
            if pd.isna(groups).any():
                raise ColumnContractError(f"{who}: {self.id_col!r} has missing values; every row "
                                          "needs a patient id to group the validation split.")
        if self.early_stopping_rounds is not None:
            tr, va = inner_split(labels, groups, float(self.validation_fraction), self.random_state)
        else:
            tr, va = np.arange(labels.size), np.arange(0)
        ytr = labels[tr]
        if self.scale_pos_weight == "balanced":
            spw = float((ytr == 0).sum()) / max(float(ytr.sum()), 1.0)
        else:
            spw = 1.0 if self.scale_pos_weight is None else float(self.scale_pos_weight)
        device = xgboost_device(self.device)
        names = [f"f{j}" for j in range(len(features))]
        dtrain = xgb.DMatrix(x[tr], label=ytr, feature_names=names, missing=np.nan)
        evals, es = [], None
        if va.size:
            dval = xgb.DMatrix(x[va], label=labels[va], feature_names=names, missing=np.nan)
            evals, es = [(dval, "validation")], int(self.early_stopping_rounds)
        evals_result: dict = {}
        booster = xgb.train(
            self._xgb_params(device, spw), dtrain, num_boost_round=int(self.n_estimators),
            evals=evals, early_stopping_rounds=es, evals_result=evals_result,
            verbose_eval=False,
        )
        if self.verbose and evals_result:
            loss = evals_result["validation"]["logloss"]
            for r in range(0, len(loss), int(self.verbose)):
                _log.info("round %d: validation logloss %.5f", r, loss[r])
        self.booster_ = booster
        self.best_iteration_ = int(booster.best_iteration) if es else int(self.n_estimators) - 1
        self.feature_names_in_ = np.asarray([str(c) for c in features], dtype=object)
        self.n_features_in_ = len(features)
        self.classes_ = np.array([0, 1])
        self.scale_pos_weight_ = spw
        self.n_train_, self.n_val_, self.n_dropped_ = int(tr.size), int(va.size), n_drop
        self.device_ = device
        self.n_missing_by_modality_ = missing_rows
        self.validation_loss_ = (np.asarray(evals_result["validation"]["logloss"])
                                 if evals_result else np.empty(0))
        self.feature_importances_ = self._gain_importance()
        return self

    def fit_dask(self, client, table, y: str, *, eval_table=None) -> XGBClassifierModel:
        """Fit with ``xgboost.dask`` on data spread over a Dask cluster (extra ``dask``).

        The same trees as :meth:`fit` with ``early_stopping_rounds=None`` on one worker;
        on several workers XGBoost merges per-worker histogram sketches, so split points
        (and predictions) differ slightly. The fitted model predicts, explains and saves
        like a locally fitted one.

        Parameters
        ----------
        client : dask.distributed.Client
        table : dask or pandas DataFrame
            Analysis table (e.g. ``dd.read_parquet("s3://.../table/")``); features are the
            columns starting with ``feature_prefixes``. A pandas table is split into one
            partition per worker.
        y : str
            Label column (0/1). Rows with a missing label are dropped (counted, logged,
            warned about).
        eval_table : dask or pandas DataFrame, optional
            Held-out rows for early stopping (split by patient beforehand, e.g. with
            :func:`inner_split`); without it ``n_estimators`` rounds are trained.

        Returns
        -------
        self
        """
        import dask.dataframe as dd
        import xgboost as xgb
        from xgboost import dask as dxgb

        who = "XGBClassifierModel.fit_dask"
        self._check_params()
        n_workers = max(1, len(client.scheduler_info().get("workers", {})))
        if isinstance(table, pd.DataFrame):
            table = dd.from_pandas(table, npartitions=n_workers)
        if isinstance(eval_table, pd.DataFrame):
            eval_table = dd.from_pandas(eval_table, npartitions=n_workers)
        if not isinstance(y, str) or y not in table.columns:
            raise ColumnContractError(f"{who}: y={y!r} must name the label column of the table "
                                      f"(columns: {list(map(str, table.columns))[:20]}).")
        cols = [str(c) for c in table.columns]
        prefixes = tuple(self.feature_prefixes)
        absent = [p for p in prefixes if not any(c.startswith(p) for c in cols)]
        if absent:
            raise ColumnContractError(f"{who}: no feature column starts with {absent}; drop them "
                                      "from feature_prefixes or join that modality's features.")
        features = [c for c in table.columns if str(c).startswith(prefixes)]
        lab = table[y]
        keep = lab.notnull()
        table = table[keep]
        x = table[features].astype("float32")
        lab = table[y]
        miss = {p: x[[c for c in features if str(c).startswith(p)]].isna().all(axis=1).sum()
                for p in prefixes}
        import dask

        n_all, n_rows, n_pos, bad, miss = dask.compute(
            keep.size, lab.size, lab.sum(), (~lab.isin([0, 1])).sum(), miss)
        n_drop = int(n_all) - int(n_rows)
        if n_drop:
            log_dropped(_log, n_drop, "rows", "label missing")
            warnings.warn(f"{who}: dropped {n_drop} of {int(n_all)} rows whose label is missing.",
                          DataDroppedWarning, stacklevel=2)
        if int(bad):
            raise ValueError(f"{who}: label {y!r} holds {int(bad)} values other than 0/1.")
        n_pos, n_rows = int(n_pos), int(n_rows)
        if n_pos == 0 or n_pos == n_rows:
            raise ValueError(f"{who}: the training labels hold a single class ({n_pos} events "
                             f"among {n_rows} rows); a classifier needs both.")
        for p, k in miss.items():
            if int(k) == n_rows:
                raise ColumnContractError(f"{who}: modality {p!r} is missing for every training row.")
        if self.scale_pos_weight == "balanced":
            spw = float(n_rows - n_pos) / float(n_pos)
        else:
            spw = 1.0 if self.scale_pos_weight is None else float(self.scale_pos_weight)
        device = xgboost_device(self.device)
        names = [f"f{j}" for j in range(len(features))]
        x = x.rename(columns=dict(zip(features, names, strict=True)))
        dtrain = dxgb.DaskDMatrix(client, x, lab.astype("int8"), missing=np.nan)
        evals, es, n_val = [], None, 0
        if eval_table is not None and self.early_stopping_rounds is not None:
            ev = eval_table[eval_table[y].notnull()]
            xv = ev[features].astype("float32").rename(columns=dict(zip(features, names, strict=True)))
            dval = dxgb.DaskDMatrix(client, xv, ev[y].astype("int8"), missing=np.nan)
            evals, es = [(dval, "validation")], int(self.early_stopping_rounds)
            n_val = int(ev.shape[0].compute())
        out = dxgb.train(client, self._xgb_params(device, spw), dtrain,
                         num_boost_round=int(self.n_estimators), evals=evals,
                         early_stopping_rounds=es, verbose_eval=False)
        booster: xgb.Booster = out["booster"]
        history = out.get("history") or {}
        self.booster_ = booster
        self.best_iteration_ = int(booster.best_iteration) if es else int(self.n_estimators) - 1
        self.feature_names_in_ = np.asarray([str(c) for c in features], dtype=object)
        self.n_features_in_ = len(features)
        self.classes_ = np.array([0, 1])
        self.scale_pos_weight_ = spw
        self.n_train_, self.n_val_, self.n_dropped_ = n_rows, n_val, n_drop
        self.device_ = device
        self.n_missing_by_modality_ = {p: int(k) for p, k in miss.items()}
        self.validation_loss_ = (np.asarray(history["validation"]["logloss"])
                                 if "validation" in history else np.empty(0))
        self.feature_importances_ = self._gain_importance()
        return self

    def _gain_importance(self) -> np.ndarray:
        gain = self.booster_.get_score(importance_type="total_gain")
        imp = np.array([gain.get(f"f{j}", 0.0) for j in range(self.n_features_in_)])
        total = imp.sum()
        return imp / total if total > 0 else imp

    # ------------------------------------------------------------------ predict
    def _dmatrix(self, table: pd.DataFrame, who: str):
        import xgboost as xgb

        check_is_fitted(self, ["booster_"])
        require_dataframe(table, who, "table")
        feats = list(self.feature_names_in_)
        check_columns_match(feats, [str(c) for c in table.columns], who)
        x = self._matrix(table, feats, who)
        return xgb.DMatrix(x, feature_names=[f"f{j}" for j in range(len(feats))], missing=np.nan)

    def _range(self) -> tuple[int, int]:
        return (0, self.best_iteration_ + 1)

    def predict_proba(self, table: pd.DataFrame) -> np.ndarray:
        """Class probabilities, shape (n, 2), rows in table order (column 1 = event)."""
        dm = self._dmatrix(table, "XGBClassifierModel.predict_proba")
        p = self.booster_.predict(dm, iteration_range=self._range())
        p = np.asarray(p, dtype=np.float64)
        return np.column_stack([1.0 - p, p])

    def predict_risk(self, table: pd.DataFrame) -> pd.Series:
        """Event probability as a Series with the table's index (name ``risk``)."""
        return pd.Series(self.predict_proba(table)[:, 1], index=table.index, name="risk")

    def predict(self, table: pd.DataFrame, threshold: float = 0.5) -> np.ndarray:
        """0/1 calls ``risk >= threshold`` (choose the cut with models.evaluate.choose_threshold)."""
        return (self.predict_proba(table)[:, 1] >= threshold).astype(np.int8)

    def decision_function(self, table: pd.DataFrame) -> np.ndarray:
        """The margin (log-odds) before the logistic link."""
        dm = self._dmatrix(table, "XGBClassifierModel.decision_function")
        return np.asarray(self.booster_.predict(dm, output_margin=True,
                                                iteration_range=self._range()), dtype=np.float64)

    def shap_values(self, table: pd.DataFrame) -> pd.DataFrame:
        """Exact TreeSHAP contributions (log-odds scale) from XGBoost's ``pred_contribs``.

        Returns
        -------
        DataFrame
            Index = ``table.index``; one column per feature plus ``bias`` (the expected
            margin). Each row sums to :meth:`decision_function` of that row.
        """
        dm = self._dmatrix(table, "XGBClassifierModel.shap_values")
        c = self.booster_.predict(dm, pred_contribs=True, iteration_range=self._range())
        cols = [*map(str, self.feature_names_in_), "bias"]
        return pd.DataFrame(np.asarray(c, dtype=np.float64), index=table.index, columns=cols)

    # ------------------------------------------------------------------ persistence
    def save(self, path: Path | str) -> Path:
        """Save to the folder ``path``: model.json (params, state) and xgb.json (the booster)."""
        check_is_fitted(self, ["booster_"])
        meta = {
            "params": self.get_params(),
            "feature_names_in": list(self.feature_names_in_),
            "best_iteration": self.best_iteration_,
            "scale_pos_weight": self.scale_pos_weight_,
            "n_train": self.n_train_, "n_val": self.n_val_, "n_dropped": self.n_dropped_,
            "device": self.device_,
            "n_missing_by_modality": self.n_missing_by_modality_,
        }
        arrays = {"feature_importances": self.feature_importances_,
                  "validation_loss": self.validation_loss_}
        raw = bytes(self.booster_.save_raw(raw_format="json"))
        return persist.save_state(path, kind=_KIND, meta=meta, arrays=arrays,
                                  files={"xgb.json": raw})

    @classmethod
    def load(cls, path: Path | str) -> XGBClassifierModel:
        """Load a model saved with :meth:`save` (checksums verified; no pickle)."""
        return persist.load(path, kind=_KIND)

    @classmethod
    def _from_state(cls, meta: dict, arrays: dict, files: dict) -> XGBClassifierModel:
        import xgboost as xgb

        if "xgb.json" not in files:
            raise SchemaError("XGBClassifierModel: the saved folder lacks xgb.json.")
        params = dict(meta["params"])
        params["feature_prefixes"] = tuple(params["feature_prefixes"])
        obj = cls(**params)
        booster = xgb.Booster()
        booster.load_model(bytearray(files["xgb.json"]))
        obj.device_ = xgboost_device("auto") if meta["device"] == "cuda" else "cpu"
        booster.set_param({"device": obj.device_})
        obj.booster_ = booster
        obj.feature_names_in_ = np.asarray(meta["feature_names_in"], dtype=object)
        obj.n_features_in_ = len(obj.feature_names_in_)
        obj.classes_ = np.array([0, 1])
        obj.best_iteration_ = int(meta["best_iteration"])
        obj.scale_pos_weight_ = float(meta["scale_pos_weight"])
        obj.n_train_, obj.n_val_ = int(meta["n_train"]), int(meta["n_val"])
        obj.n_dropped_ = int(meta["n_dropped"])
        obj.n_missing_by_modality_ = {k: int(v) for k, v in meta["n_missing_by_modality"].items()}
        obj.feature_importances_ = arrays["feature_importances"]
        obj.validation_loss_ = arrays["validation_loss"]
        return obj
