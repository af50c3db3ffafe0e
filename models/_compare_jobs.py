"""The per-(repeat, fold) job of :func:`models.compare.compare_models` and how jobs run.

One function, :func:`run_fold`, fits every model spec on one (repeat, fold) and returns
that fold's out-of-fold predictions, SHAP rows, modality weights and timings, plus the
warnings (and, in worker processes, the log records) the fits raised. It runs

* in this process, one job after another (``n_jobs=1``, the default);
* in ``n_jobs`` worker processes (joblib's loky backend);
* on a ``dask.distributed`` cluster (``client=``; the table is scattered once).

:func:`run_folds` returns the outputs in task order whatever the completion order, so the
main process assembles them in a fixed (repeat, fold, spec) order and the result does not
depend on how the jobs ran.

Determinism. Every job holds BLAS/OpenMP to one thread (``threadpoolctl``) and torch to
``FusionClassifier(num_threads=1)`` (its default) in every path, and seeds XGBoost and the
network from ``random_state + repeat`` as before, so the three paths give the same
numbers. Jobs in the *same* process run one at a time (a process-wide lock): torch's
global random generator, its thread setting and Python's warning filters are
process-wide, and two fusion fits interleaved in threads would not reproduce. Threads
are therefore not a way to run jobs side by side; processes are (see
``benchmarks/RESULTS.md``, "Model comparison").
"""
from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.special import expit

from models import _kernels as K
from normfuse.checks import get_logger
from normfuse.contracts import MODALITY_PREFIXES
from normfuse.errors import ConvergenceWarning, DataDroppedWarning

_log = get_logger("models.compare")
_WEIGHTED = ("fusion_bigru_attention", "fusion_late")
_JOB_LOCK = threading.Lock()


# =========================================================================== specs and job data
@dataclass
class _Spec:
    name: str
    kind: str  # logistic | xgb | fusion
    mods: tuple
    full: str | None = None  # ablations: the full model
    strategy: str | None = None


@dataclass(frozen=True)
class _JobContext:
    """What every job shares (scattered once to a Dask cluster)."""

    specs: tuple
    y: np.ndarray
    seqs: dict
    id_col: str
    count_col: str
    device: str
    random_state: int
    xgb_params: dict
    fusion_params: dict
    who: str
    main_pid: int
    log_level: int


@dataclass(frozen=True)
class _FoldTask:
    """One (repeat, fold): row positions, and the hook's tables when ``preprocessors`` ran."""

    r: int
    k: int
    tr_pos: np.ndarray
    te_pos: np.ndarray
    fcols: dict
    tables: tuple | None = None  # (train, test) from the preprocessors hook, else None


@dataclass
class _FoldOutput:
    r: int
    k: int
    preds: dict = field(default_factory=dict)      # spec name -> p of the test rows
    secs: dict = field(default_factory=dict)       # spec name -> seconds
    shap_rows: list = field(default_factory=list)  # (r, k, feature, modality, mean |SHAP|)
    weight_rows: list = field(default_factory=list)  # (model, r, k, modality, weight)
    warnings: list = field(default_factory=list)   # (category, message, filename, lineno)
    records: list = field(default_factory=list)    # log records (worker processes only)


# =========================================================================== per-fold fits
def _logistic(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, who: str) -> np.ndarray:
    """Unpenalised logistic regression on standardised columns (train medians impute NaN)."""
    med = np.nanmedian(np.where(np.isnan(xtr).all(0), 0.0, xtr), axis=0)
    n_imp = int(np.isnan(xtr).sum() + np.isnan(xte).sum())
    if n_imp:
        _log.info("%s: imputed %d missing count values with the training-fold median", who, n_imp)
    xtr = np.where(np.isnan(xtr), med, xtr)
    xte = np.where(np.isnan(xte), med, xte)
    mu, sd = xtr.mean(0), xtr.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    ztr, zte = (xtr - mu) / sd, (xte - mu) / sd
    beta, _, ok = K.logistic_newton(ytr.astype(np.float64), np.column_stack([np.ones(len(ztr)), ztr]))
    if not ok:
        warnings.warn(f"{who}: the logistic regression did not converge in a training fold "
                      "(separation?); its predictions are unreliable.", ConvergenceWarning, stacklevel=4)
    return expit(np.column_stack([np.ones(len(zte)), zte]) @ beta)


def _fusion_data(tr: pd.DataFrame, te: pd.DataFrame, mods: Sequence[str], cols: dict,
                 seqs: dict, pos_tr: np.ndarray, pos_te: np.ndarray, id_col: str, who: str):
    """FusionData of both parts; partial NaN cells get the training-fold median."""
    from models.fusion_data import FusionData

    out = []
    static_tr, static_te = {}, {}
    n_imp = 0
    for m in mods:
        if m == "ehr" and seqs:
            continue
        a = tr[cols[m]].to_numpy(dtype=np.float64, na_value=np.nan)
        b = te[cols[m]].to_numpy(dtype=np.float64, na_value=np.nan)
        pres = ~np.isnan(a).all(1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a column NaN in every training row
            med = np.nanmedian(a[pres], axis=0) if pres.any() else np.zeros(a.shape[1])
        med = np.where(np.isnan(med), 0.0, med)
        for arr, store in ((a, static_tr), (b, static_te)):
            part = np.isnan(arr) & ~np.isnan(arr).all(1)[:, None]
            n_imp += int(part.sum())
            store[m] = np.where(part, med, arr)
    if n_imp:
        _log.info("%s: imputed %d NaN cells of partly observed fusion inputs with training-fold "
                  "medians", who, n_imp)
    use_seq = "ehr" in mods and seqs
    for df, st, pos in ((tr, static_tr, pos_tr), (te, static_te, pos_te)):
        pid = df[id_col].to_numpy() if id_col in df.columns else df.index.to_numpy()
        sq = {k: x[pos] for k, (x, _) in seqs.items()} if use_seq else {}
        rm = {k: r[pos] for k, (_, r) in seqs.items()} if use_seq else {}
        names = {m: tuple(cols[m]) for m in st}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DataDroppedWarning)  # reported by the fit instead
            out.append(FusionData(patient_id=pid, static=st, sequences=sq, row_masks=rm,
                                  feature_names=names, drop_empty=False))
    return out


def _fit_spec(ctx: _JobContext, s: _Spec, task: _FoldTask, tr, te, ytr, seed, cache, out: _FoldOutput):
    """Fit one model spec on the fold's training rows; return the test rows' risks."""
    who = f"{ctx.who} [{s.name}]"
    if s.kind == "logistic":
        return _logistic(tr[[ctx.count_col]].to_numpy(dtype=np.float64, na_value=np.nan), ytr,
                         te[[ctx.count_col]].to_numpy(dtype=np.float64, na_value=np.nan), who)
    if s.kind == "xgb":
        from models.xgb import XGBClassifierModel

        pre = tuple(MODALITY_PREFIXES[m] for m in s.mods)
        est = XGBClassifierModel(feature_prefixes=pre, id_col=ctx.id_col, device=ctx.device,
                                 random_state=seed, **ctx.xgb_params)
        est.fit(tr, pd.Series(ytr, index=tr.index))
        p = est.predict_proba(te)[:, 1]
        if s.name == "all_xgb":
            sv = est.shap_values(te).drop(columns="bias").abs().mean()
            for f, v in sv.items():
                mod = next(m for m, pf in MODALITY_PREFIXES.items() if f.startswith(pf))
                out.shap_rows.append((task.r, task.k, f, mod, float(v)))
        return p
    from models.fusion import FusionClassifier

    if s.mods not in cache:
        cache[s.mods] = _fusion_data(tr, te, s.mods, task.fcols, ctx.seqs, task.tr_pos, task.te_pos,
                                     ctx.id_col, who)
    dtr, dte = cache[s.mods]
    est = FusionClassifier(s.strategy, device=ctx.device, random_state=seed, **ctx.fusion_params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(dtr, ytr)
    p = est.predict_proba(dte)[:, 1]
    if s.name in _WEIGHTED:
        w = est.modality_weights(dte).mean()
        for mod, v in w.items():
            out.weight_rows.append((s.name, task.r, task.k, mod, float(v)))
    return p


def _add_context(exc: BaseException, where: str) -> None:
    """Append ``where`` (repeat, fold, model) to the message, keeping the exception's type."""
    try:
        if exc.args and isinstance(exc.args[0], str):
            exc.args = (f"{exc.args[0]} [{where}]", *exc.args[1:])
    except (AttributeError, TypeError):  # pragma: no cover - exotic exception classes
        pass
    if where not in str(exc):
        exc.add_note(where)


class _ListHandler(logging.Handler):
    def __init__(self, level: int):
        super().__init__(level)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        record.msg, record.args = record.getMessage(), None  # plain, picklable
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        self.records.append(record)


def run_fold(ctx: _JobContext, task: _FoldTask, table: pd.DataFrame | None = None) -> _FoldOutput:
    """Fit every spec on one (repeat, fold); the one job of all three execution paths.

    ``table`` is the labelled analysis table (rows sliced here by position) unless the
    task carries the ``preprocessors`` hook's own (train, test) tables.
    """
    from threadpoolctl import threadpool_limits

    out = _FoldOutput(task.r, task.k)
    in_worker = os.getpid() != ctx.main_pid
    base = logging.getLogger("normfuse")
    handler = None
    with _JOB_LOCK, warnings.catch_warnings(record=True) as caught, threadpool_limits(1):
        warnings.simplefilter("always")
        if in_worker:  # collect the job's log records for the main process
            saved = (base.level, base.propagate)
            handler = _ListHandler(ctx.log_level)
            base.addHandler(handler)
            base.setLevel(ctx.log_level)
            base.propagate = False
        kinds = {s.kind for s in ctx.specs}
        # import before the clocks start: a fresh worker's first import of torch/xgboost
        # (seconds) is start-up, not fitting time
        if "xgb" in kinds:
            import models.xgb  # noqa: F401
        if "fusion" in kinds:
            import torch

            import models.fusion  # noqa: F401
            if in_worker:
                torch.set_num_threads(1)
        try:
            if task.tables is not None:
                tr, te = task.tables
            else:
                tr, te = table.iloc[task.tr_pos], table.iloc[task.te_pos]
            ytr = ctx.y[task.tr_pos]
            seed = int(ctx.random_state) + task.r
            cache: dict = {}
            for s in ctx.specs:
                t0 = time.perf_counter()
                try:
                    p = _fit_spec(ctx, s, task, tr, te, ytr, seed, cache, out)
                except Exception as exc:
                    _add_context(exc, f"repeat {task.r}, fold {task.k}, model {s.name}")
                    raise
                out.preds[s.name] = np.asarray(p, dtype=np.float64)
                out.secs[s.name] = time.perf_counter() - t0
        finally:
            if handler is not None:
                base.removeHandler(handler)
                base.setLevel(saved[0])
                base.propagate = saved[1]
                out.records = handler.records
    out.warnings = [(w.category, str(w.message), w.filename, w.lineno) for w in caught]
    return out


# =========================================================================== execution paths
def effective_n_jobs(n_jobs, who: str) -> int:
    """sklearn's convention: None -> 1, -1 -> all cores, -2 -> all but one; 0 is an error."""
    if n_jobs is None:
        return 1
    if isinstance(n_jobs, (bool, np.bool_)) or not isinstance(n_jobs, (int, np.integer)) or n_jobs == 0:
        raise ValueError(f"{who}: n_jobs={n_jobs!r}; expected a non-zero integer (1: one job at a "
                         "time, -1: all cores, -2: all but one) or None.")
    if n_jobs > 0:
        return int(n_jobs)
    from joblib import cpu_count

    return max(1, int(cpu_count()) + 1 + int(n_jobs))


def plan_workers(n_jobs: int, n_tasks: int, device: str, who: str) -> int:
    """Worker processes to start: at most one per task, and one on a CUDA device.

    ``device`` is the resolved device. Several processes would each open a CUDA context
    (hundreds of MiB of GPU memory apiece) and contend for one GPU, so CUDA jobs run one
    after another in this process, with a logged note.
    """
    n = max(1, min(int(n_jobs), int(n_tasks)))
    if n > 1 and str(device).startswith("cuda"):
        _log.info("%s: device=%r: the %d (repeat, fold) jobs run one after another on the GPU "
                  "(n_jobs=%d not used), so that worker processes do not each open a CUDA context.",
                  who, device, n_tasks, n_jobs)
        return 1
    return n


def run_folds(ctx: _JobContext, tasks: list[_FoldTask], table: pd.DataFrame | None, n_workers: int,
              client=None) -> list[_FoldOutput]:
    """Run :func:`run_fold` on every task; outputs in task order."""
    if client is not None:
        from normfuse.checks import optional_import

        optional_import("distributed", "dask", "compare_models(client=...)")
        ctx_f = client.scatter(ctx, broadcast=True)
        tab_f = None if table is None else client.scatter(table, broadcast=True)
        futures = [client.submit(run_fold, ctx_f, t, tab_f, pure=False) for t in tasks]
        try:
            return client.gather(futures)
        except BaseException:
            client.cancel(futures)
            raise
    if n_workers <= 1:
        return [run_fold(ctx, t, table) for t in tasks]
    from joblib import Parallel, delayed

    return Parallel(n_jobs=n_workers, backend="loky")(delayed(run_fold)(ctx, t, table) for t in tasks)


_HIDDEN_BY_DEFAULT = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)


def replay(outputs: list[_FoldOutput], stacklevel: int = 3) -> None:
    """Re-emit the jobs' log records, then their warnings once per (category, message).

    Warnings are re-emitted in this process, where the user's filters apply, at the
    caller of :func:`compare_models` (``stacklevel``), whichever path ran the jobs. The
    categories Python hides by default (deprecations) keep their original place, so the
    default filters keep hiding library deprecations.
    """
    seen = set()
    for o in outputs:
        for rec in o.records:
            lg = logging.getLogger(rec.name)
            if lg.isEnabledFor(rec.levelno):
                lg.handle(rec)
    for o in outputs:
        for cat, msg, filename, lineno in o.warnings:
            if (cat, msg) in seen:
                continue
            seen.add((cat, msg))
            if issubclass(cat, _HIDDEN_BY_DEFAULT):
                module = os.path.splitext(os.path.basename(filename or ""))[0] or "<unknown>"
                warnings.warn_explicit(msg, cat, filename, lineno, module=module)
            else:
                warnings.warn(msg, cat, stacklevel=stacklevel)
