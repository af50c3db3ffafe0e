"""Many responses (vertex-wise, parcel-wise): chunked fits, concatenation, chunked Z.

Responses are independent given the shared design (knots, age range, covariate
scalings and sites are learned from the covariates only), so a model of tens of
thousands of responses is fitted as chunks of responses, each a
:class:`~normative.model.NormativeModel` fitted on a subset of the response columns
with the same covariates and sites, then concatenated along the response axis into
one model. The responses may be passed as an ``(n, R)`` numpy array or memmap next
to a small covariate DataFrame, so the big array is never turned into one large
DataFrame: each chunk builds its own small one.

With a ``dask.distributed`` client (extra ``dask``) the chunks are fitted on the
workers: the covariate frame is scattered once, each response block is sent to one
worker, and the fitted chunks are gathered and concatenated in order. The same
chunks give the same floating-point numbers as the single-machine path.

Note: a chunked fit equals a single fit of all responses to optimiser tolerance, not
bit for bit: the engine stops its empirical-Bayes rounds when the site prior of every
response in the batch has settled, so the round count can differ between batches.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from normfuse import checks
from normfuse.errors import ColumnContractError, DataDroppedWarning, OutOfRangeWarning

__all__ = ["fit_chunked", "concat_models", "transform_chunked", "response_names"]

_log = checks.get_logger("normative.many")

#: the engine's per-response arrays, with the axis along which responses run
_RESPONSE_ARRAYS = {
    "beta_": 1, "gamma_": 1, "eps_": 0, "tau_": 0, "cov_beta_": 0, "cov_gamma_": 0,
    "y_mean_": 0, "y_sd_": 0, "y_raw_mean_": 0, "y_raw_sd_": 0, "log_mask_": 0,
    "site_prior_sd_": 1, "converged_": 0,
    "adapted_offset_": 1, "adapted_offset_var_": 1, "adapted_log_scale_": 1,
    "adapted_log_scale_var_": 1, "modelled_": 0,
}
# values a response left out of the fit carries (its Z and predictions are NaN whatever
# they are; finite placeholders keep the batched linear algebra of other responses clean)
_LEFT_OUT_FILL = {"y_sd_": 1.0, "y_raw_mean_": np.nan, "y_raw_sd_": np.nan,
                  "site_prior_sd_": 1.0, "converged_": False, "modelled_": False,
                  "log_mask_": False}
#: fewest observed values a response needs to be fitted (as in NormativeModel.fit)
_MIN_OBSERVED = 10
# memory budget (bytes) for the (responses x rows x p) temporaries of chunked transform
_TRANSFORM_BUDGET = 64 * 2**20


def response_names(n: int, prefix: str = "r") -> list[str]:
    """Default names of ``n`` array responses: ``r00000``, ``r00001``, ..."""
    width = max(5, len(str(max(n - 1, 0))))
    return [f"{prefix}{j:0{width}d}" for j in range(n)]


def _as_response_array(controls, responses, names, who):
    """Return (Y (n, R) array-like, names) from column names or an array."""
    if responses is None:
        raise TypeError(f"{who}: pass responses as a list of columns of `controls` or as an "
                        "(n, R) array (e.g. from normative.surface.collect_surface).")
    if isinstance(responses, (str, bytes)):
        raise TypeError(f"{who}: responses={responses!r} is a single string; pass a list of "
                        "column names, e.g. responses=[{responses!r}].")
    if hasattr(responses, "shape") and hasattr(responses, "dtype"):
        Y = responses
        if Y.ndim != 2:
            raise ValueError(f"{who}: the response array must be 2-D (n_rows, n_responses); "
                             f"got shape {tuple(Y.shape)}.")
        if Y.shape[0] != len(controls):
            raise ValueError(f"{who}: the response array has {Y.shape[0]} rows but the covariate "
                             f"frame has {len(controls)}; they must hold the same scans in the "
                             "same order.")
        if names is None:
            names = response_names(Y.shape[1])
        names = [str(n) for n in names]
        if len(names) != Y.shape[1]:
            raise ValueError(f"{who}: got {len(names)} names for {Y.shape[1]} response columns.")
        clash = [n for n in names if n in controls.columns]
        if clash:
            raise ColumnContractError(
                f"{who}: response names {clash[:10]} are also columns of the covariate frame. "
                "Rename them (names=[...]) or drop those columns from the frame.")
        return Y, names
    cols = list(responses)
    checks.require_columns(controls, cols, who)
    if names is not None:
        raise TypeError(f"{who}: names= applies to array responses only; the columns "
                        "already name the responses.")
    return None, [str(c) for c in cols]


def _blocks(R: int, chunk_size: int):
    chunk_size = int(chunk_size)
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size!r}; expected a positive integer such as 1000.")
    return [(s, min(s + chunk_size, R)) for s in range(0, R, chunk_size)]


def _chunk_frame(cov, block, names):
    """A small DataFrame: the covariate columns plus one block of response columns."""
    import pandas as pd

    resp = pd.DataFrame(np.asarray(block, dtype=np.float64), index=cov.index, columns=names)
    return pd.concat([cov, resp], axis=1, copy=False)


def _fit_block(cov, block, names, model_kwargs):
    """Fit one chunk of responses (runs locally or on a Dask worker)."""
    from threadpoolctl import threadpool_limits

    from normative.model import NormativeModel

    # one BLAS thread: the engine parallelises over rows itself, and the same thread
    # count everywhere keeps local and distributed chunks bit-for-bit equal
    with threadpool_limits(limits=1, user_api="blas"):
        frame = _chunk_frame(cov, block, names)
        # an explicit log_responses list names responses of every chunk (checked up front)
        return NormativeModel(responses=list(names), **model_kwargs)._fit(frame, strict_log_names=False)


def fit_chunked(
    controls,
    responses: Sequence[str] | np.ndarray,
    *,
    names: Sequence[str] | None = None,
    chunk_size: int = 1000,
    client: Any = None,
    **model_kwargs,
):
    """Fit a :class:`~normative.model.NormativeModel` of many responses, chunk by chunk.

    Parameters
    ----------
    controls : DataFrame
        Healthy controls, one row per scan, with the model's covariate columns (and
        site column); when ``responses`` names columns, those too.
    responses : list of str or array of shape (n, R)
        Column names of ``controls``, or an ``(n, R)`` numpy array / ``np.memmap``
        whose rows are the rows of ``controls`` (e.g. the vertex array of
        :func:`normative.surface.collect_surface`). Missing values (NaN) are left out
        of that response's fit. Responses that are constant across the controls (a
        template surface's medial wall) or have fewer than 10 observed values are left
        out of the fit with a ``DataDroppedWarning`` that counts them: they stay in
        ``responses_`` with ``modelled_`` False, and their Z are NaN.
    names : list of str, optional
        Names of array responses (default ``r00000`` ...).
    chunk_size : int, default 1000
        Responses per chunk. A chunk's fit needs about 0.45 KB per (row x response):
        with 5,000 controls, ``chunk_size=500`` adds about 1.1-1.4 GB to the data array
        and 1000 about 2.2 GB (README, "Running at scale"), times the number of chunks
        fitted at once (``n_jobs``).
    client : dask.distributed.Client, optional
        Fit the chunks on the cluster's workers. Results equal the local path exactly.
    **model_kwargs
        Passed to every chunk's ``NormativeModel`` (covariates, site_col, likelihood,
        device, ...). On the CPU, ``n_jobs`` (default: all cores) chunks are fitted side
        by side on threads, each single-threaded; the result equals ``n_jobs=1``.

    Returns
    -------
    NormativeModel
        One fitted model whose ``responses_`` are all responses, in order.

    Raises
    ------
    ColumnContractError
        Missing covariate/response columns, names clashing with covariates, or no
        response that can be fitted.
    ValueError
        Shapes that do not match, a bad ``chunk_size``.

    See Also
    --------
    concat_models, transform_chunked

    Examples
    --------
    >>> from normative.simulate import simulate_controls
    >>> df = simulate_controls(n=300, regions=6, n_sites=3, seed=0)
    >>> cols = [c for c in df.columns if c.startswith("region_")]
    >>> nm = fit_chunked(df, cols, chunk_size=4, likelihood="normal")
    >>> len(nm.responses_), nm.beta_.shape[1]
    (6, 6)
    """
    import pandas as pd

    who = "fit_chunked"
    checks.require_dataframe(controls, who, "controls")
    Y, names = _as_response_array(controls, responses, names, who)
    if len(set(names)) != len(names):
        dup = pd.Index(names)[pd.Index(names).duplicated()].unique().tolist()
        raise ValueError(f"{who}: duplicate response names {dup[:10]}.")
    probe = _probe_model(model_kwargs)
    lr = probe.log_responses
    if lr is not None and not isinstance(lr, str):
        unknown = sorted(set(lr) - set(names))
        if unknown:
            raise ValueError(f"{who}: log_responses names {unknown[:10]} are not among the responses.")
    need = [c for c in probe._needed_columns() + ["volume_kind"] if c in controls.columns]
    checks.require_columns(controls, probe._needed_columns(), who)
    cov = controls.loc[:, list(dict.fromkeys(need))]
    all_names = names

    def block_of(cols):     # cols: a slice, or an index array of the responses kept
        if Y is None:       # non-numeric cells raise naming the column, row and value
            sel = all_names[cols] if isinstance(cols, slice) else [all_names[j] for j in cols]
            return checks.check_numeric(controls, sel, who, allow_nan=True)
        return np.asarray(Y[:, cols], dtype=np.float64)

    keep = _fittable(block_of, len(names), chunk_size)
    if not keep.any():
        raise ColumnContractError(
            f"{who}: none of the {len(names)} responses can be fitted: each is constant across "
            f"the controls or has fewer than {_MIN_OBSERVED} observed values.")
    idx = np.flatnonzero(keep)
    if not keep.all():
        dropped = [all_names[j] for j in np.flatnonzero(~keep)]
        msg = (f"{who}: {len(dropped)} of {len(names)} responses are constant across the controls "
               f"or have fewer than {_MIN_OBSERVED} observed values (e.g. {dropped[:5]}; on a "
               "template surface, the medial wall); they are left out of the fit, their Z are "
               "NaN and model.modelled_ marks them False.")
        _log.warning(msg)
        warnings.warn(msg, DataDroppedWarning, stacklevel=2)
        names = [all_names[j] for j in idx]
    blocks = _blocks(len(names), chunk_size)
    cols_of = ((lambda s, e: slice(s, e)) if keep.all()
               else (lambda s, e: idx[s:e]))

    workers = _chunk_workers(probe, len(blocks))
    if client is None and workers == 1:
        models = []
        for k, (s, e) in enumerate(blocks):
            models.append(_fit_block(cov, block_of(cols_of(s, e)), names[s:e], model_kwargs))
            _log.info("%s: fitted chunk %d/%d (responses %d-%d)", who, k + 1, len(blocks), s, e - 1)
    elif client is None:
        # chunks on a thread pool (numpy releases the GIL in its loops and BLAS calls),
        # each fitted single-threaded: the same numbers as one after another; each worker
        # reads its own block, so `workers` chunks are in memory at a time
        from concurrent.futures import ThreadPoolExecutor

        from threadpoolctl import threadpool_limits

        inner = {**model_kwargs, "n_jobs": 1}

        def fit_one(se):
            s, e = se
            return _fit_block(cov, block_of(cols_of(s, e)), names[s:e], inner)

        with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(workers) as pool:
            models = list(pool.map(fit_one, blocks))
        _log.info("%s: fitted %d chunks on %d threads", who, len(blocks), workers)
    else:
        checks.optional_import("distributed", "dask", "fit_chunked(client=...)")
        from distributed import as_completed

        cov_f = client.scatter(cov, broadcast=True)
        n_workers = max(1, len(client.scheduler_info().get("workers", {})))
        window = 2 * n_workers          # blocks in flight: bounds driver and worker memory
        models = [None] * len(blocks)

        def submit(k):
            s, e = blocks[k]
            blk = client.scatter(block_of(cols_of(s, e)))
            fut = client.submit(_fit_block, cov_f, blk, names[s:e], dict(model_kwargs),
                                pure=False)
            slot[fut.key] = k
            return fut

        slot: dict = {}
        nxt = min(window, len(blocks))
        pending = as_completed([submit(k) for k in range(nxt)], with_results=True)
        for fut, model in pending:
            models[slot.pop(fut.key)] = model
            if nxt < len(blocks):
                pending.add(submit(nxt))
                nxt += 1
        _log.info("%s: fitted %d chunks on the cluster", who, len(blocks))
    model = concat_models(models)
    return model if keep.all() else _with_left_out(model, keep, all_names)


def _chunk_workers(probe, n_blocks: int) -> int:
    """Threads that fit chunks side by side: the model's ``n_jobs`` (None: all cores), on the CPU."""
    import os

    if n_blocks < 2 or probe.device not in ("cpu",):
        return 1
    n = (os.cpu_count() or 1) if probe.n_jobs is None else int(probe.n_jobs)
    return max(1, min(n, n_blocks))


def _fittable(block_of, R, chunk_size):
    """Boolean (R,): responses with >= _MIN_OBSERVED observed values that are not constant."""
    keep = np.zeros(R, bool)
    for s, e in _blocks(R, chunk_size):
        B = block_of(slice(s, e))
        fin = np.isfinite(B)
        n_obs = fin.sum(0)
        lo = np.where(fin, B, np.inf).min(0)
        hi = np.where(fin, B, -np.inf).max(0)
        keep[s:e] = (n_obs >= _MIN_OBSERVED) & (hi > lo)
    return keep


def _with_left_out(model, keep, names):
    """The fitted model widened to all ``names``; responses not in ``keep`` are left out."""
    import copy

    out = copy.copy(model)
    idx = np.flatnonzero(keep)
    out.responses = list(names)
    out.responses_ = list(names)
    for attr, axis in _RESPONSE_ARRAYS.items():
        arr = np.asarray(getattr(model, attr))
        shape = list(arr.shape)
        shape[axis] = len(names)
        full = np.full(shape, _LEFT_OUT_FILL.get(attr, 0), dtype=arr.dtype)
        full[(slice(None),) * axis + (idx,)] = arr
        setattr(out, attr, full)
    return out


def _probe_model(model_kwargs):
    from normative.model import NormativeModel

    try:
        probe = NormativeModel(**model_kwargs)
    except TypeError as exc:
        raise TypeError(f"fit_chunked: {exc}. Pass NormativeModel parameters such as "
                        "covariates=, site_col=, likelihood=, device=.") from exc
    probe._validate_params()
    if probe.backend != "native":
        raise ValueError("fit_chunked: only backend='native' can be chunked and concatenated.")
    return probe


def concat_models(models: Sequence[Any]):
    """Concatenate fitted models of disjoint responses into one model.

    Every model must come from the same covariates and sites: identical parameters
    (other than ``responses``), identical learned design (knots, age range, covariate
    scalings, sites, adapted sites) and volume kind. The response arrays are joined in
    the given order.

    Parameters
    ----------
    models : sequence of fitted NormativeModel (native backend)

    Returns
    -------
    NormativeModel

    Raises
    ------
    ValueError
        Models fitted on different designs or parameters, overlapping responses, an
        unfitted or non-native model.
    """
    from normative._design import DesignSpec
    from normative.model import NormativeModel

    who = "concat_models"
    models = list(models)
    if not models:
        raise ValueError(f"{who}: got no models.")
    for i, m in enumerate(models):
        if not isinstance(m, NormativeModel):
            raise TypeError(f"{who}: item {i} is a {type(m).__name__}, not a NormativeModel.")
        checks.check_is_fitted(m, ["responses_"])
        if m.backend != "native":
            raise ValueError(f"{who}: item {i} uses backend={m.backend!r}; only native models "
                             "can be concatenated.")
    first = models[0]
    # parameters that change how a fit runs, not what it gives, may differ between chunks
    skip = {"responses", "n_jobs", "verbose"}
    params0 = {k: v for k, v in first.get_params().items() if k not in skip}
    design0 = first.design_.to_dict()
    for i, m in enumerate(models[1:], start=1):
        params = {k: v for k, v in m.get_params().items() if k not in skip}
        if params != params0:
            diff = sorted(k for k in params if params[k] != params0.get(k))
            raise ValueError(f"{who}: model {i} differs from model 0 in parameters {diff}; "
                             "fit every chunk with the same NormativeModel settings.")
        if not _same_design(m.design_.to_dict(), design0):
            raise ValueError(
                f"{who}: model {i} was fitted on a different design than model 0 (knots, age "
                "range, covariate scalings or sites differ). Chunks must share the same "
                "covariate rows; fit them with fit_chunked on one covariate frame.")
        if (m.sites_ != first.sites_ or m.volume_kind_ != first.volume_kind_
                or m.n_reference_sites_ != first.n_reference_sites_):
            raise ValueError(f"{who}: model {i} has other sites or volume kind than model 0.")
    names = [r for m in models for r in m.responses_]
    if len(set(names)) != len(names):
        seen, dup = set(), []
        for r in names:
            if r in seen:
                dup.append(r)
            seen.add(r)
        raise ValueError(f"{who}: responses {dup[:10]} appear in more than one model.")
    out = NormativeModel(responses=names, **params0)
    out.responses_ = names
    out.design_ = DesignSpec.from_dict(design0)
    out.sites_ = list(first.sites_)
    out.n_reference_sites_ = first.n_reference_sites_
    out.volume_kind_ = first.volume_kind_
    out.n_iter_ = max(int(m.n_iter_) for m in models)
    for attr, axis in _RESPONSE_ARRAYS.items():
        parts = [np.asarray(getattr(m, attr)) for m in models]
        setattr(out, attr, np.concatenate(parts, axis=axis))
    return out


def _same_design(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for k in a:
        va, vb = a[k], b[k]
        if k in ("loc_knots", "scale_knots", "age_range"):
            if (va is None) != (vb is None):
                return False
            if va is not None and not np.array_equal(np.asarray(va, float), np.asarray(vb, float)):
                return False
        elif va != vb:
            return False
    return True


def _submodel(model, s: int, e: int):
    """A view of responses ``s:e`` of a fitted model (arrays are sliced, not copied)."""
    from normative.model import NormativeModel

    sub = NormativeModel.__new__(NormativeModel)
    sub.__dict__.update(model.__dict__)
    sub.responses = list(model.responses_[s:e])
    sub.responses_ = list(model.responses_[s:e])
    for attr, axis in _RESPONSE_ARRAYS.items():
        arr = getattr(model, attr)
        setattr(sub, attr, arr[:, s:e] if axis == 1 else arr[s:e])
    return sub


def transform_chunked(
    model,
    covariates,
    Y: np.ndarray,
    *,
    chunk_size: int = 1000,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Deviation scores Z of many responses, in blocks of responses and rows.

    Parameters
    ----------
    model : fitted NormativeModel (e.g. from :func:`fit_chunked`)
    covariates : DataFrame
        The model's covariate (and site) columns, one row per scan.
    Y : array of shape (n, R)
        Responses in the order of ``model.responses_`` (array or memmap).
    chunk_size : int, default 1000
        Responses per block; rows are blocked too, so the posterior-predictive
        quadratic forms (responses x rows x p) stay within about 64 MB.
    out : array of shape (n, R), optional
        Where to write Z (e.g. a float32 ``np.memmap``); a new float64 array otherwise.

    Returns
    -------
    ndarray of shape (n, R)
        Z, equal to ``model.transform`` on the same data; NaN where ``Y`` is NaN and for
        responses left out of the fit (``model.modelled_`` False). Rows with ages outside
        the reference range warn once; ``model.age_out_of_range(covariates)`` flags them
        (a boolean Series aligned with the rows of Z).
    """
    who = "transform_chunked"
    checks.check_is_fitted(model, ["responses_"])
    checks.require_dataframe(covariates, who, "covariates")
    R = len(model.responses_)
    if getattr(Y, "ndim", 0) != 2 or Y.shape != (len(covariates), R):
        raise ValueError(f"{who}: Y must have shape (n_rows, n_responses) = ({len(covariates)}, {R}); "
                         f"got {tuple(getattr(Y, 'shape', ()))}.")
    if out is None:
        out = np.empty((len(covariates), R))
    elif out.shape != Y.shape:
        raise ValueError(f"{who}: out has shape {out.shape}; expected {Y.shape}.")
    need = [c for c in model._needed_columns() + ["volume_kind"] if c in covariates.columns]
    checks.require_columns(covariates, model._needed_columns(), who)
    cov = covariates.loc[:, list(dict.fromkeys(need))]
    p = model.beta_.shape[0]
    n = len(cov)
    oor = model.age_out_of_range(cov)
    if oor.any():
        lo, hi = model.design_.age_range
        warnings.warn(
            f"{who}: {int(oor.sum())} rows have ages outside the reference range [{lo:g}, {hi:g}]; "
            "their age curves are held constant at the boundary. Silence with "
            "warnings.filterwarnings('ignore', category=OutOfRangeWarning).",
            OutOfRangeWarning, stacklevel=2)
    for s, e in _blocks(R, chunk_size):
        sub = _submodel(model, s, e)
        rows = max(64, int(_TRANSFORM_BUDGET // (8 * p * (e - s))))
        for r0 in range(0, n, rows):
            r1 = min(r0 + rows, n)
            frame = _chunk_frame(cov.iloc[r0:r1], Y[r0:r1, s:e], sub.responses_)
            with warnings.catch_warnings():      # warned once above, not per block
                warnings.simplefilter("ignore", OutOfRangeWarning)
                out[r0:r1, s:e] = sub.transform(frame).to_numpy()
    return out
