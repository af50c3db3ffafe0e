"""The normative model: all regions fitted at once, SHASH likelihood, site random effects.

``NormativeModel`` learns, from healthy controls, the distribution of every regional
volume given age (B-spline), sex, ICV and site, with heteroscedastic scale and
(by default) the sinh-arcsinh likelihood for skew and heavy tails. ``transform``
returns deviation scores ``Z`` that are standard normal in healthy controls.
"""
from __future__ import annotations

import logging
import numbers
import re
import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np

from normative import _shash
from normative._design import DesignSpec
from normfuse import checks, persist
from normfuse.errors import (
    ColumnContractError,
    ConvergenceWarning,
    OutOfRangeWarning,
    SmallReferenceGroupWarning,
    VolumeKindError,
)

__all__ = ["NormativeModel", "VOLUME_META_COLUMNS"]

log = logging.getLogger("normfuse.normative")

VOLUME_META_COLUMNS = ("subject_id", "session_id", "age", "sex", "site", "icv", "volume_kind")
_SCHEMA = 2          # 2: log_responses (log-scale responses)
#: FreeSurfer names of cerebrospinal-fluid spaces (ventricles, CSF): log_responses="csf"
CSF_PATTERN = re.compile(r"ventricle|inf-lat-vent|(^|[-_ ])csf($|[-_ ])", re.IGNORECASE)
_GH_NODES = 48       # Gauss-Hermite nodes for the original-unit moments of log responses
_WARM_START_ROWS = 8000
_MIN_SITE_LOG_SCALE_SD = 0.10
#: options NormativeModel(backend="pcntoolkit", backend_options=...) passes to PcnBackend
_PCN_OPTIONS = frozenset({"optimizer", "warp", "n_knots", "spline_order"})


def _quad_forms(A, covs, max_bytes=256 * 2**20):
    """(n, R) array of a_i' V_r a_i for rows a_i of A and covariance matrices V_r (R, p, p).

    Rows are processed in blocks whose (R, rows, p) temporary stays under ``max_bytes``,
    so memory is bounded for tens of thousands of responses.
    """
    n = A.shape[0]
    R = covs.shape[0]
    chunk_rows = max(1, int(max_bytes // (8 * max(R, 1) * max(A.shape[1], 1))))
    out = np.empty((n, R))
    # V_r = L_r L_r' (eigen-based square root tolerates semi-definite matrices)
    w, U = np.linalg.eigh(covs)
    Lt = U * np.sqrt(np.clip(w, 0.0, None))[:, None, :]          # (R, p, p)
    for s in range(0, n, chunk_rows):
        B = A[s:s + chunk_rows] @ Lt                                # (R, rows, p)
        out[s:s + chunk_rows] = np.einsum("rnp,rnp->nr", B, B)
    return out


def _exp_moments(mu, sigma, eps, delta, max_bytes=64 * 2**20):
    """Mean and sd of ``exp(X)`` for SHASH ``X`` (log-scale responses), elementwise.

    Gauss-Hermite quadrature over the standard-normal variable that generates X:
    ``X = mu + sigma * sinh((asinh(N) + eps) / delta)``. Rows are processed in blocks.
    """
    from numpy.polynomial.hermite_e import hermegauss

    x, w = hermegauss(_GH_NODES)
    w = w / w.sum()
    mu, sigma = np.asarray(mu, float), np.asarray(sigma, float)
    eps = np.broadcast_to(eps, mu.shape)
    delta = np.broadcast_to(delta, mu.shape)
    m = np.empty_like(mu)
    sd = np.empty_like(mu)
    step = max(1, int(max_bytes // (8 * _GH_NODES * max(mu.shape[1], 1))))
    for a in range(0, mu.shape[0], step):
        sl = slice(a, a + step)
        q = _shash.quantile(np, x[None, None, :], mu[sl, :, None], sigma[sl, :, None],
                            eps[sl, :, None], delta[sl, :, None])
        c = q.max(axis=2, keepdims=True)           # scale out the largest term (no overflow)
        e = np.exp(q - c)
        m1 = (e * w).sum(2)
        m2 = (e * e * w).sum(2)
        m[sl] = np.exp(c[..., 0]) * m1
        sd[sl] = np.exp(c[..., 0]) * np.sqrt(np.maximum(m2 - m1 * m1, 0.0))
    return m, sd


@persist.register("NormativeModel", schema=_SCHEMA)
class NormativeModel:
    """Normative model of many brain measures, fitted jointly on healthy controls.

    Parameters
    ----------
    responses : sequence of str, optional
        Columns to model (e.g. ``["Left-Thalamus", "Right-Thalamus"]``). ``None`` takes
        every numeric column of the fit data that is not a covariate, the site column
        or a ``volumes`` meta column (subject_id, session_id, age, sex, site, icv,
        volume_kind).
    covariates : sequence of str, default ("age", "sex", "icv")
        ``age`` enters as a cubic B-spline over the reference age range (location and
        scale), ``sex`` (values ``F``/``M``) as an indicator (location and scale), any
        other covariate linearly in the location after standardisation.
    site_col : str or None, default "site"
        Column naming the scanner/site. Site offsets (location) and site log-scales are
        Gaussian random effects whose variances are estimated by empirical Bayes, so
        small sites are shrunk toward the average site and new sites can be adapted.
    likelihood : {"shash", "normal"}, default "shash"
        ``"shash"``: sinh-arcsinh (Jones & Pewsey 2009) with per-region skew and tail
        weight; ``"normal"``: Gaussian with heteroscedastic scale.
    age_df, scale_age_df : int, default 6 and 3
        B-spline basis columns for age in the location and the log-scale.
    scale_covariates : sequence of {"age", "sex"}, optional
        Covariates of the log-scale (heteroscedasticity). Default: age (B-spline) and
        sex when they are covariates. ``()`` gives a homoscedastic scale per region
        (besides site scales), the structure of pcntoolkit's warped BLR. Their log-scale
        coefficients carry a weak N(0, 1) prior (``normative._engine.SCALE_PRIOR_SD``):
        negligible with hundreds of controls, it keeps fits on a few dozen from collapsing.
    log_responses : "csf", "all", None or sequence of str, default "csf"
        Responses modelled on the log scale (location, scale, site effects and SHASH
        shape all act on ``log(volume)``, so site and ICV effects are proportional).
        ``"csf"`` takes the cerebrospinal-fluid spaces by FreeSurfer name (lateral,
        inferior-lateral, 3rd, 4th and 5th ventricles, CSF): their spread grows with
        their size, and on the fcon1000 benchmark the log scale raises the held-out
        log-likelihood of all three ventricles (README, "Normative models"). A CSF
        column with zeros or negative values in the fit data stays on the original
        scale (logged). ``"all"``, ``None`` (none) or a list of names choose
        explicitly; listed columns must be strictly positive. Z, centiles and the log
        density are exact under the transform; ``predict`` returns the mean and sd in
        the original units (Gauss-Hermite quadrature). Native backend only.
    site_scale : bool, default False
        Also give each site its own (shrunk) log-scale. Off by default: on the
        fcon1000 benchmark it over-fitted small sites (held-out Z sd 1.06 vs 1.04).
    predictive : {"posterior", "plugin"}, default "posterior"
        ``"posterior"`` widens each prediction by the uncertainty of the fitted
        parameters (Laplace approximation: ``x'Vx`` for the location, the lognormal
        mean for the log-scale), which keeps held-out Z calibrated for small sites
        and adapted sites; ``"plugin"`` uses the point estimates only.
    backend : {"native", "pcntoolkit"}, default "native"
        ``"pcntoolkit"`` fits pcntoolkit 1.3's warped BLR behind this interface
        (extra ``pcn``; slow, for reference comparisons).
    backend_options : dict, optional
        Options of the pcntoolkit backend (:class:`normative._pcn.PcnBackend`):
        ``optimizer`` (``"l-bfgs-b"``, pcntoolkit's default, or ``"powell"``, which
        reaches the optimum of its marginal likelihood where the default stops short),
        ``warp`` (``"SinhArcsinh"`` or None), ``n_knots``, ``spline_order``.
    device : {"cpu", "cuda", "auto", "torch:cpu"}, default "cpu"
        ``"cuda"`` (or ``"auto"`` with a GPU) fits with torch on the GPU in float64,
        giving the CPU (numpy) results to float tolerance; ``"torch:cpu"`` runs the
        torch code path on the CPU (to check it against numpy without a GPU).
    max_iter : int, default 100
        Newton iterations per empirical-Bayes round.
    n_jobs : int or None, default None
        CPU threads that share the row chunks of a large fit (None: all cores; BLAS is
        held to one thread meanwhile). Results do not depend on it; pass 1 on a busy
        shared host.
    verbose : int, default 0
        Log progress at INFO when > 0.

    Attributes
    ----------
    responses_ : list of str
    sites_ : list of str
        Reference sites, then adapted sites.
    n_iter_ : int
    converged_ : ndarray of bool, one per response
    modelled_ : ndarray of bool, one per response
        False for responses left out of the fit (constant across the controls or with
        fewer than 10 observed values; only :func:`normative.many.fit_chunked` leaves
        responses out, e.g. a template surface's medial wall): their Z, predictions
        and centiles are NaN, and ``converged_`` is False.
    volume_kind_ : str or None
    log_responses_ : list of str
        The responses modelled on the log scale.

    Examples
    --------
    Fit on 400 simulated controls and score 200 held-out ones: their Z-scores should
    have mean near 0 and sd near 1 (Z of the fitted controls themselves has sd below 1
    because the posterior predictive is wider than the in-sample residuals).

    >>> from normative.simulate import simulate_controls
    >>> df = simulate_controls(n=600, regions=("Left-Thalamus", "Right-Thalamus"), seed=0)
    >>> train, test = df.iloc[:400], df.iloc[400:]
    >>> nm = NormativeModel(responses=["Left-Thalamus", "Right-Thalamus"]).fit(train)
    >>> z = nm.transform(test)
    >>> z.index.equals(test.index), list(z.columns)
    (True, ['Left-Thalamus', 'Right-Thalamus'])
    >>> round(float(z.to_numpy().mean()), 1), round(float(z.to_numpy().std()), 1)
    (0.0, 1.0)
    """

    def __init__(
        self,
        responses: Sequence[str] | None = None,
        *,
        covariates: Sequence[str] = ("age", "sex", "icv"),
        site_col: str | None = "site",
        likelihood: Literal["shash", "normal"] = "shash",
        age_df: int = 6,
        scale_age_df: int = 3,
        site_scale: bool = False,
        scale_covariates: Sequence[str] | None = None,
        log_responses: str | Sequence[str] | None = "csf",
        predictive: Literal["posterior", "plugin"] = "posterior",
        backend: Literal["native", "pcntoolkit"] = "native",
        backend_options: dict | None = None,
        device: str = "cpu",
        max_iter: int = 100,
        n_jobs: int | None = None,
        verbose: int = 0,
    ):
        self.responses = responses
        self.covariates = covariates
        self.site_col = site_col
        self.likelihood = likelihood
        self.age_df = age_df
        self.scale_age_df = scale_age_df
        self.site_scale = site_scale
        self.scale_covariates = scale_covariates
        self.log_responses = log_responses
        self.predictive = predictive
        self.backend = backend
        self.backend_options = backend_options
        self.device = device
        self.max_iter = max_iter
        self.n_jobs = n_jobs
        self.verbose = verbose

    # ------------------------------------------------------------------ params
    def get_params(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in (
            ("responses", None if self.responses is None else list(self.responses)),
            ("covariates", list(self.covariates)), ("site_col", self.site_col),
            ("likelihood", self.likelihood), ("age_df", self.age_df),
            ("scale_age_df", self.scale_age_df), ("site_scale", self.site_scale),
            ("predictive", self.predictive),
            ("scale_covariates", None if self.scale_covariates is None else list(self.scale_covariates)),
            ("log_responses", self.log_responses if self.log_responses is None
             or isinstance(self.log_responses, str) else list(self.log_responses)),
            ("backend", self.backend),
            ("backend_options", None if self.backend_options is None else dict(self.backend_options)),
            ("device", self.device), ("max_iter", self.max_iter), ("n_jobs", self.n_jobs),
            ("verbose", self.verbose))}

    def _validate_params(self):
        if self.likelihood not in ("shash", "normal"):
            raise ValueError(f"Got likelihood={self.likelihood!r}; expected 'shash' or 'normal'.")
        if self.predictive not in ("posterior", "plugin"):
            raise ValueError(f"Got predictive={self.predictive!r}; expected 'posterior' or 'plugin'.")
        if self.backend not in ("native", "pcntoolkit"):
            raise ValueError(f"Got backend={self.backend!r}; expected 'native' or 'pcntoolkit'.")
        if self.backend_options:
            if self.backend != "pcntoolkit":
                raise ValueError("backend_options apply to backend='pcntoolkit' only; got "
                                 f"{self.backend_options!r} with backend={self.backend!r}.")
            bad = sorted(set(self.backend_options) - _PCN_OPTIONS)
            if bad:
                raise ValueError(f"backend_options: unknown {bad}; expected some of "
                                 f"{sorted(_PCN_OPTIONS)}.")
        if self.scale_covariates is not None:
            bad = [c for c in self.scale_covariates if c not in ("age", "sex") or c not in self.covariates]
            if bad:
                raise ValueError(f"scale_covariates may hold 'age' and/or 'sex' among the covariates; got {bad}.")
        lr = self.log_responses
        if isinstance(lr, str) and lr not in ("csf", "all"):
            raise ValueError(f"Got log_responses={lr!r}; expected 'csf', 'all', None or a list of "
                             "response names.")
        if self.n_jobs is not None and (isinstance(self.n_jobs, bool)
                                        or not isinstance(self.n_jobs, numbers.Integral)
                                        or self.n_jobs < 1):
            raise ValueError(f"Got n_jobs={self.n_jobs!r}; expected None (all cores) or an integer >= 1.")
        if int(self.age_df) < 3 or int(self.scale_age_df) < 3:
            raise ValueError("age_df and scale_age_df must be >= 3 (cubic B-spline columns).")

    # --------------------------------------------------------------- helpers
    def _who(self, method):
        return f"NormativeModel.{method}"

    def _resolve_responses(self, df):
        if self.responses is not None:
            resp = list(self.responses)
            if len(set(resp)) != len(resp):
                raise ValueError("NormativeModel: responses contain duplicates.")
            return resp
        skip = set(VOLUME_META_COLUMNS) | set(self.covariates) | {self.site_col}
        resp = [c for c in df.columns if c not in skip and np.issubdtype(df[c].dtype, np.number)]
        if not resp:
            raise ColumnContractError(
                "NormativeModel.fit: responses=None found no numeric region columns. "
                "Pass responses=[...] explicitly.")
        return resp

    def _needed_columns(self):
        cols = list(self.covariates)
        if self.site_col is not None:
            cols.append(self.site_col)
        return cols

    def _check_covariates(self, df, who):
        checks.require_dataframe(df, who)
        checks.require_columns(df, self._needed_columns(), who)
        num = [c for c in self.covariates if c != "sex"]
        checks.check_numeric(df, num, who)
        if self.site_col is not None and df[self.site_col].isna().any():
            i = int(np.flatnonzero(df[self.site_col].isna().to_numpy())[0])
            raise ColumnContractError(f"{who}: column {self.site_col!r} is missing at row {df.index[i]!r}.")

    def _check_volume_kind(self, df, who, fitting):
        """One volume kind per table, and the same kind as the reference after fit."""
        if "volume_kind" not in df.columns:
            return None
        from normative.freesurfer import require_single_volume_kind

        kind = require_single_volume_kind(df, who=who)
        if not fitting and self.volume_kind_ is not None and kind != self.volume_kind_:
            raise VolumeKindError(
                f"{who}: the model was fitted on {self.volume_kind_!r} volumes but the data hold "
                f"{kind!r} volumes. Use volumes of the same kind as the reference.")
        return kind

    def _xp(self):
        from normfuse.device import resolve_device

        if self.device == "torch:cpu":          # the torch code path on the CPU (for checks)
            import torch

            return torch, "cpu"
        dev = resolve_device(self.device)
        if dev.startswith("cuda"):
            import torch

            return torch, dev
        return np, "cpu"

    def _to_xp(self, xp, dev, a):
        if xp is np:
            return np.asarray(a, dtype=np.float64)
        return xp.as_tensor(np.asarray(a), dtype=xp.float64, device=dev)

    @staticmethod
    def _to_np(a):
        if isinstance(a, np.ndarray):
            return a
        return a.detach().cpu().numpy()

    def _responses_matrix(self, df, who, allow_missing_cols=False):
        checks.check_columns_match(self.responses_, list(df.columns), who)
        return checks.check_numeric(df, self.responses_, who, allow_nan=True)   # inf is refused

    def _resolve_log_mask(self, Y, index, who, strict=True):
        """Boolean mask of the responses modelled on the log scale (set at fit)."""
        R = len(self.responses_)
        lr = self.log_responses
        if lr is not None and not isinstance(lr, str):
            lr = [str(r) for r in lr]            # any sequence of names (list, tuple, array, Index)
        if lr is None or (not isinstance(lr, str) and len(lr) == 0):
            return np.zeros(R, bool)
        if self.backend != "native":
            if lr == "csf":
                return np.zeros(R, bool)
            raise ValueError(f"{who}: log_responses={lr!r} applies to the native backend only "
                             "(pcntoolkit warps the responses itself).")
        nonpos = np.any(np.isfinite(Y) & (Y <= 0), axis=0)
        if lr == "csf":
            mask = np.array([bool(CSF_PATTERN.search(r)) for r in self.responses_])
            kept = mask & nonpos
            if kept.any():
                names = [r for r, k in zip(self.responses_, kept, strict=True) if k]
                log.info("%s: %d CSF column(s) hold zeros or negative values and stay on the "
                         "original scale: %s", who, len(names), names[:10])
            return mask & ~nonpos
        if lr == "all":
            mask = np.ones(R, bool)
        else:
            names = list(lr)
            unknown = [r for r in names if r not in self.responses_]
            if unknown and strict:
                raise ValueError(f"{who}: log_responses names {unknown[:10]} are not among the "
                                 "responses; check the spelling (FreeSurfer 7 names).")
            mask = np.isin(np.asarray(self.responses_, dtype=object), np.asarray(names, dtype=object))
        self._check_positive(Y, mask, index, who)
        return mask

    def _check_positive(self, Y, mask, index, who):
        bad = np.isfinite(Y) & (Y <= 0) & mask[None, :]
        if bad.any():
            i, j = (int(v[0]) for v in np.nonzero(bad))
            raise ColumnContractError(
                f"{who}: column {self.responses_[j]!r} is modelled on the log scale but holds "
                f"{Y[i, j]!r} at row {index[i]!r}. A volume of 0 usually means the structure was "
                "not segmented: set it to NaN to leave it out, or fit with log_responses=None.")

    def _model_units(self, Y, index, who):
        """Responses in the units the engine models (log for ``log_responses_``)."""
        mask = self.log_mask_
        if not mask.any():
            return Y
        self._check_positive(Y, mask, index, who)
        out = np.array(Y, dtype=np.float64, copy=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:, mask] = np.log(out[:, mask])
        return out

    @property
    def log_responses_(self) -> list[str]:
        checks.check_is_fitted(self, ["responses_"])
        return [r for r, m in zip(self.responses_, self.log_mask_, strict=True) if m]

    @property
    def adapted_sites_(self) -> list[str]:
        """Sites added by :meth:`adapt` (after the reference sites in ``sites_``)."""
        checks.check_is_fitted(self, ["responses_"])
        return list(self.sites_[self.n_reference_sites_:])

    # ------------------------------------------------------------------- fit
    def fit(self, controls, y=None) -> NormativeModel:
        """Fit on a ``volumes``-like DataFrame of healthy controls (one row per scan).

        Missing response values (NaN) are left out of that region's fit only.
        Returns ``self``.
        """
        return self._fit(controls, strict_log_names=True)

    def _fit(self, controls, strict_log_names):
        who = self._who("fit")
        self._validate_params()
        self._check_covariates(controls, who)
        self.responses_ = self._resolve_responses(controls)
        checks.require_columns(controls, self.responses_, who)
        Y = checks.check_numeric(controls, self.responses_, who, allow_nan=True)
        self.volume_kind_ = None
        self.volume_kind_ = self._check_volume_kind(controls, who, fitting=True)
        M = np.isfinite(Y).astype(float)
        n_obs = M.sum(0)
        self.log_mask_ = self._resolve_log_mask(Y, controls.index, who, strict=strict_log_names)
        Yr = np.where(M > 0, Y, 0.0)
        self.y_raw_mean_ = (Yr * M).sum(0) / np.maximum(n_obs, 1)
        self.y_raw_sd_ = np.sqrt((((Yr - self.y_raw_mean_) ** 2) * M).sum(0) / np.maximum(n_obs, 1))
        Y = self._model_units(Y, controls.index, who)
        if (n_obs < 10).any():
            bad = [r for r, k in zip(self.responses_, n_obs, strict=True) if k < 10]
            raise ColumnContractError(f"{who}: fewer than 10 observed values for {bad[:10]}; cannot fit.")
        self.design_ = DesignSpec.learn(controls, self.covariates, self.site_col,
                                        int(self.age_df), int(self.scale_age_df), who,
                                        site_scale=self.site_scale,
                                        scale_covariates=self.scale_covariates)
        if self.site_col is not None:
            counts = controls[self.site_col].astype("string").value_counts()
            small = counts[counts < 5]
            if len(small):
                warnings.warn(
                    f"{who}: sites with fewer than 5 controls: {({str(k): int(v) for k, v in small.items()})}; their site effects are "
                    "shrunk strongly toward the average site. Silence with warnings.filterwarnings("
                    "'ignore', category=SmallReferenceGroupWarning).", SmallReferenceGroupWarning,
                    stacklevel=3)
        Yz = np.where(M > 0, Y, 0.0)
        self.y_mean_ = (Yz * M).sum(0) / n_obs
        self.y_sd_ = np.sqrt((((Yz - self.y_mean_) ** 2) * M).sum(0) / n_obs)
        if (self.y_sd_ <= 0).any():
            bad = [r for r, s in zip(self.responses_, self.y_sd_, strict=True) if s <= 0]
            raise ColumnContractError(
                f"{who}: responses {bad[:10]} are constant; they cannot be modelled. Drop them; "
                "for vertex arrays (a template surface's medial wall is constant), "
                "normative.many.fit_chunked leaves such responses out with NaN Z.")
        if self.backend == "pcntoolkit":
            return self._fit_pcntoolkit(controls)
        Ys = np.where(M > 0, (Yz - self.y_mean_) / self.y_sd_, 0.0)
        X, Zs, codes_fit, _ = self.design_.build(controls, who)
        S = self.design_.n_site_cols()
        site_loc = np.r_[np.zeros(X.shape[1] - S, bool), np.ones(S, bool)]
        S_sc = S if self.design_.site_scale else 0
        site_sc = np.r_[np.zeros(Zs.shape[1] - S_sc, bool), np.ones(S_sc, bool)]
        xp, dev = self._xp()
        from normative import _engine

        t = lambda a: self._to_xp(xp, dev, a)  # noqa: E731
        args = (t(X), t(Zs), t(Ys), t(M), site_loc, site_sc)
        prior = dict(scale_prior_cols=np.r_[False, ~site_sc[1:]], n_jobs=self.n_jobs)
        # a normal heteroscedastic fit first gives the SHASH fit a good start; on large
        # samples it runs on an evenly spaced subsample (it only provides the start)
        if self.likelihood == "shash" and len(controls) > 2 * _WARM_START_ROWS:
            stride = slice(None, None, int(np.ceil(len(controls) / _WARM_START_ROWS)))
            sub = (t(X[stride]), t(Zs[stride]), t(Ys[stride]), t(M[stride]), site_loc, site_sc)
            res = _engine.fit(xp, *sub, shape=False, max_iter=self.max_iter, eb_rounds=2, **prior)
        else:
            res = _engine.fit(xp, *args, shape=False, max_iter=self.max_iter, **prior)
        if self.likelihood == "shash":
            init = (res.beta, res.gamma, res.eps, res.tau)
            res2 = _engine.fit(xp, *args, shape=True, max_iter=self.max_iter, init=init,
                               init_prior_sd=(res.tau_loc, res.tau_scale), **prior)
            n_iter = res.n_iter + res2.n_iter
            res = res2
        else:
            n_iter = res.n_iter
        self.beta_ = self._to_np(res.beta)
        self.gamma_ = self._to_np(res.gamma)
        p, q = X.shape[1], Zs.shape[1]
        V = _engine.posterior_cov(np, self._to_np(res.neg_hessian))
        self.cov_beta_ = np.ascontiguousarray(V[:, :p, :p])
        self.cov_gamma_ = np.ascontiguousarray(V[:, p:p + q, p:p + q])
        self.eps_ = self._to_np(res.eps)
        self.tau_ = self._to_np(res.tau)
        self.site_prior_sd_ = np.vstack([self._to_np(res.tau_loc), self._to_np(res.tau_scale)])
        self.converged_ = self._to_np(res.converged).astype(bool)
        self.modelled_ = np.ones(len(self.responses_), bool)
        self.n_iter_ = int(n_iter)
        R = len(self.responses_)
        self.adapted_offset_ = np.zeros((0, R))
        self.adapted_offset_var_ = np.zeros((0, R))
        self.adapted_log_scale_ = np.zeros((0, R))
        self.adapted_log_scale_var_ = np.zeros((0, R))
        if not self.design_.site_scale and S >= 2:
            self.site_prior_sd_[1] = self._between_site_log_scale_sd(X, Zs, Ys, M, codes_fit)
        self.sites_ = list(self.design_.sites)
        self.n_reference_sites_ = len(self.sites_)
        if not self.converged_.all():
            bad = [r for r, c in zip(self.responses_, self.converged_, strict=True) if not c]
            warnings.warn(
                f"{who}: the fit did not converge for {bad[:10]} within max_iter={self.max_iter}. "
                "Increase max_iter, or check those columns for outliers or unit errors.",
                ConvergenceWarning, stacklevel=3)
        if self.verbose:
            log.info("fitted %d responses on %d controls in %d iterations", len(self.responses_),
                     len(controls), self.n_iter_)
        return self

    def _between_site_log_scale_sd(self, X, Zs, Ys, M, codes):
        """Method-of-moments sd of per-site log residual scales (the prior for new sites)."""
        z = _shash.zscore(np, Ys, X @ self.beta_, np.exp(Zs @ self.gamma_), self.eps_[None, :],
                          np.exp(self.tau_)[None, :]) * M
        S = int(codes.max()) + 1
        cnt = np.zeros((S, Ys.shape[1]))
        ss = np.zeros((S, Ys.shape[1]))
        np.add.at(cnt, codes, M)
        np.add.at(ss, codes, z * z)
        ok = cnt >= 5
        logsd = 0.5 * np.log(np.where(ok, ss / np.maximum(cnt, 1), 1.0))
        w = np.where(ok, cnt, 0.0)
        wsum = np.maximum(w.sum(0), 1.0)
        mean = (w * logsd).sum(0) / wsum
        var = (w * (logsd - mean) ** 2).sum(0) / wsum
        samp = (w * (1.0 / (2.0 * np.maximum(cnt - 1, 1)))).sum(0) / wsum
        # floor: a moment estimate from a handful of sites is unreliable, and scanners
        # plausibly differ by ~10 % in noise; a tighter prior would pin new sites' scale
        return np.sqrt(np.clip(var - samp, _MIN_SITE_LOG_SCALE_SD ** 2, None))

    def _fit_pcntoolkit(self, controls):
        from normative._pcn import PcnBackend

        batch = ["sex"] if "sex" in self.covariates else []
        if self.site_col is not None:
            batch.append(self.site_col)
        covs = [c for c in self.covariates if c != "sex"]
        self._pcn = PcnBackend(self.responses_, covariates=tuple(covs), batch_effects=tuple(batch),
                               **(self.backend_options or {}))
        self._pcn.fit(controls)
        self.sites_ = list(self.design_.sites)
        self.n_reference_sites_ = len(self.sites_)
        self.converged_ = np.ones(len(self.responses_), bool)
        self.modelled_ = np.ones(len(self.responses_), bool)
        self.n_iter_ = 0
        return self

    # ------------------------------------------------------- distributional
    def _params(self, df, who):
        """Per-row, per-response (mu, sigma, eps, delta) in original units, plus flags."""
        checks.check_is_fitted(self, ["responses_"])
        self._check_covariates(df, who)
        self._check_volume_kind(df, who, fitting=False)
        X, Zs, codes, out = self.design_.build(df, who)
        if out.any():
            lo, hi = self.design_.age_range
            warnings.warn(
                f"{who}: {int(out.sum())} rows have ages outside the reference range "
                f"[{lo:g}, {hi:g}]; their age curves are held constant at the boundary and the "
                "rows are flagged (column 'age_out_of_range' in deviations()). Silence with "
                "warnings.filterwarnings('ignore', category=OutOfRangeWarning).",
                OutOfRangeWarning, stacklevel=3)
        mu_std = X @ self.beta_
        ls = Zs @ self.gamma_
        n_ref = len(self.design_.sites)
        new = (codes >= n_ref) if self.design_.site_col is not None else np.zeros(len(codes), bool)
        if new.any():          # adapted sites: their own shrunk offset and log-scale
            k = codes[new] - n_ref
            mu_std[new] += self.adapted_offset_[k]
            ls[new] += self.adapted_log_scale_[k]
        if self.predictive == "posterior":
            # Laplace posterior predictive: parameter uncertainty widens the scale
            # (location: x'Vx added to the variance; log-scale: lognormal mean of sigma^2)
            xvx = _quad_forms(X, self.cov_beta_)
            zvz = _quad_forms(Zs, self.cov_gamma_)
            if new.any():
                k = codes[new] - n_ref
                xvx[new] += self.adapted_offset_var_[k]
                zvz[new] += self.adapted_log_scale_var_[k]
            sig_std = np.sqrt(np.exp(2.0 * ls + 2.0 * zvz) + xvx)
        else:
            sig_std = np.exp(ls)
        mu = self.y_mean_ + self.y_sd_ * mu_std
        sigma = self.y_sd_ * sig_std
        modelled = getattr(self, "modelled_", None)
        if modelled is not None and not modelled.all():
            mu[:, ~modelled] = np.nan
            sigma[:, ~modelled] = np.nan
        return mu, sigma, self.eps_[None, :], np.exp(self.tau_)[None, :], out

    def transform(self, data):
        """Deviation scores Z (standard normal in healthy controls), one column per response.

        Rows with a missing response value get NaN for that response. The output keeps
        the input's index and row order; columns are ``responses_``.
        """
        import pandas as pd

        who = self._who("transform")
        checks.check_is_fitted(self, ["responses_"])
        Y = self._responses_matrix(data, who)
        if self.backend == "pcntoolkit":
            self._check_covariates(data, who)
            Z = self._pcn.transform(data)
        else:
            mu, sigma, eps, delta, _ = self._params(data, who)
            Z = _shash.zscore(np, self._model_units(Y, data.index, who), mu, sigma, eps, delta)
        return pd.DataFrame(Z, index=data.index, columns=list(self.responses_))

    def predict(self, data):
        """Predictive mean and standard deviation: returns ``(mean, sd)`` DataFrames."""
        import pandas as pd

        who = self._who("predict")
        checks.check_is_fitted(self, ["responses_"])
        if self.backend == "pcntoolkit":
            self._check_covariates(data, who)
            m, s = self._pcn.predict(data)
        else:
            mu, sigma, eps, delta, _ = self._params(data, who)
            m1, sd1 = _shash.moments(self.eps_, np.exp(self.tau_))
            m, s = mu + sigma * m1[None, :], sigma * sd1[None, :]
            if self.log_mask_.any():
                j = self.log_mask_
                m[:, j], s[:, j] = _exp_moments(mu[:, j], sigma[:, j], eps[:, j], delta[:, j])
        cols = list(self.responses_)
        return (pd.DataFrame(m, index=data.index, columns=cols),
                pd.DataFrame(s, index=data.index, columns=cols))

    def centiles(self, data, q: Sequence[float] = (0.05, 0.25, 0.5, 0.75, 0.95)):
        """Centiles of every response at the covariates of ``data``.

        Returns a DataFrame with the input's index and MultiIndex columns
        ``(response, q)``. Use a grid of ages (with sex, icv and site) to draw curves.
        """
        import pandas as pd
        from scipy.stats import norm

        who = self._who("centiles")
        qs = np.asarray(q, dtype=float)
        if ((qs <= 0) | (qs >= 1)).any():
            raise ValueError(f"{who}: centiles q must lie strictly between 0 and 1; got {list(q)}.")
        if self.backend == "pcntoolkit":
            self._check_covariates(data, who)
            arr = np.moveaxis(self._pcn.centiles(data, qs), 0, -1)   # (Q, n, R) -> (n, R, Q)
        else:
            mu, sigma, eps, delta, _ = self._params(data, who)
            zq = norm.ppf(qs)
            arr = _shash.quantile(np, zq[None, None, :], mu[:, :, None], sigma[:, :, None],
                                  eps[:, :, None], delta[:, :, None])
            arr[:, self.log_mask_, :] = np.exp(arr[:, self.log_mask_, :])
        cols = pd.MultiIndex.from_product([list(self.responses_), list(qs)], names=["response", "q"])
        return pd.DataFrame(arr.reshape(len(data), -1), index=data.index, columns=cols)

    def logpdf(self, data):
        """Log predictive density of each observed value, per original unit (NaN where missing)."""
        import pandas as pd

        who = self._who("logpdf")
        checks.check_is_fitted(self, ["responses_"])
        Y = self._responses_matrix(data, who)
        if self.backend == "pcntoolkit":
            self._check_covariates(data, who)
            return pd.DataFrame(self._pcn.logpdf(data), index=data.index,
                                columns=list(self.responses_))
        mu, sigma, eps, delta, _ = self._params(data, who)
        Ym = self._model_units(Y, data.index, who)
        lp = _shash.logpdf(np, Ym, mu, np.log(sigma), eps, np.log(delta))
        lp[:, self.log_mask_] -= Ym[:, self.log_mask_]       # Jacobian of log: density per original unit
        return pd.DataFrame(lp, index=data.index, columns=list(self.responses_))

    def age_out_of_range(self, data):
        """Boolean Series: rows whose age lies outside the reference range."""
        import pandas as pd

        checks.check_is_fitted(self, ["responses_"])
        if self.design_.age_col is None:
            return pd.Series(False, index=data.index, name="age_out_of_range")
        age = data[self.design_.age_col].to_numpy(float)
        lo, hi = self.design_.age_range
        return pd.Series((age < lo) | (age > hi), index=data.index, name="age_out_of_range")

    # ------------------------------------------------------------ evaluation
    def score(self, data):
        """Per-response held-out quality and Z calibration (see :func:`normative.metrics.evaluate`)."""
        from normative.metrics import evaluate

        Y = self._responses_matrix(data, self._who("score"))
        mean, sd = self.predict(data)
        z = self.transform(data)
        return evaluate(Y, mean.to_numpy(), sd.to_numpy(), z.to_numpy(),
                        train_mean=self.y_raw_mean_, train_sd=self.y_raw_sd_,
                        responses=self.responses_)

    def deviations(self, data, *, threshold: float = 1.96, tail: str = "both"):
        """The ``deviations`` table: keys, one Z column per response, n_crit counts and flags."""
        from normative.deviations import deviation_table

        z = self.transform(data)
        return deviation_table(data, z, threshold=threshold, tail=tail,
                               age_out_of_range=self.age_out_of_range(data))

    # --------------------------------------------------------------- adapt
    def adapt(self, local_controls, **kwargs) -> NormativeModel:
        """Return a copy adapted to new sites from a few local healthy controls.

        See :func:`normative.adapt.adapt_sites`.
        """
        from normative.adapt import adapt_sites

        return adapt_sites(self, local_controls, **kwargs)

    # ------------------------------------------------------------ persistence
    def save(self, path):
        """Save to the folder ``path`` (JSON + npz, no pickle)."""
        checks.check_is_fitted(self, ["responses_"])
        if self.backend != "native":
            raise ValueError("NormativeModel.save: only the native backend can be saved; "
                             "pcntoolkit models are saved with pcntoolkit's own tools.")
        meta = {"params": self.get_params(), "responses": self.responses_,
                "design": self.design_.to_dict(), "sites": self.sites_,
                "n_reference_sites": self.n_reference_sites_, "volume_kind": self.volume_kind_,
                "n_iter": self.n_iter_}
        arrays = {"beta": self.beta_, "gamma": self.gamma_, "eps": self.eps_, "tau": self.tau_,
                  "cov_beta": self.cov_beta_, "cov_gamma": self.cov_gamma_,
                  "site_prior_sd": self.site_prior_sd_, "converged": self.converged_,
                  "adapted_offset": self.adapted_offset_, "adapted_offset_var": self.adapted_offset_var_,
                  "adapted_log_scale": self.adapted_log_scale_,
                  "adapted_log_scale_var": self.adapted_log_scale_var_,
                  "y_mean": self.y_mean_, "y_sd": self.y_sd_, "y_raw_mean": self.y_raw_mean_,
                  "y_raw_sd": self.y_raw_sd_, "log_mask": self.log_mask_,
                  "modelled": self.modelled_}
        return persist.save_state(path, kind="NormativeModel", meta=meta, arrays=arrays)

    @classmethod
    def load(cls, path) -> NormativeModel:
        """Load a model saved with :meth:`save` (verifies schema version and checksums)."""
        return persist.load(path, kind="NormativeModel")

    @classmethod
    def _from_state(cls, meta, arrays, files):
        obj = cls(**meta["params"])
        obj.responses_ = list(meta["responses"])
        obj.design_ = DesignSpec.from_dict(meta["design"])
        obj.sites_ = list(meta["sites"])
        obj.n_reference_sites_ = int(meta["n_reference_sites"])
        obj.volume_kind_ = meta["volume_kind"]
        obj.n_iter_ = int(meta["n_iter"])
        for k in ("beta", "gamma", "eps", "tau", "site_prior_sd", "y_mean", "y_sd", "cov_beta",
                  "cov_gamma", "y_raw_mean", "y_raw_sd"):
            setattr(obj, k + "_", np.asarray(arrays[k], dtype=float))
        obj.converged_ = np.asarray(arrays["converged"], dtype=bool)
        obj.log_mask_ = np.asarray(arrays["log_mask"], dtype=bool)
        # saves from before responses could be left out modelled every response
        obj.modelled_ = (np.asarray(arrays["modelled"], dtype=bool) if "modelled" in arrays
                         else np.ones(len(obj.responses_), bool))
        for k in ("adapted_offset", "adapted_offset_var", "adapted_log_scale", "adapted_log_scale_var"):
            setattr(obj, k + "_", np.asarray(arrays[k], dtype=float).reshape(-1, len(meta["responses"])))
        R = len(obj.responses_)
        if (obj.beta_.shape[1] != R or obj.gamma_.shape[1] != R or obj.log_mask_.shape != (R,)
                or obj.modelled_.shape != (R,)
                or len(obj.sites_) != len(obj.design_.sites) + len(obj.design_.extra_sites)):
            from normfuse.errors import SchemaError

            raise SchemaError("NormativeModel.load: array shapes do not match the saved metadata.")
        return obj
