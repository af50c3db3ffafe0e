"""pcntoolkit 1.3 warped Bayesian linear regression as a normfuse backend.

This private module wraps the field's reference implementation, PCNtoolkit's
:class:`pcntoolkit.BLR`, behind the small interface the native engine
(:class:`normative.model.NormativeModel`) delegates to when called with
``backend="pcntoolkit"`` (install with ``pip install 'normfuse[pcn]'``). It is also
what the benchmarks and tests compare the native engine against.

The configuration is the one measured in ``../shared/data/PROVENANCE.md`` ("BLR +
SinhArcsinh warp"): covariates and responses standardised (pcntoolkit's
``"standardize"`` scalers), a cubic B-spline on the first covariate (age) plus the
other covariates (ICV) linearly, an intercept, one fixed-effect intercept per level
of each batch effect (sex, site), homoscedastic noise, a sinh-arcsinh warp of the
response, hyperparameters by L-BFGS-B on the penalised marginal likelihood
(pcntoolkit's defaults).

pcntoolkit is imported only inside the methods (its import takes 6-9 s). Its fit and
transfer normally save models, results and plots; here they run through the
underlying regression models without those side effects, with its printing silenced
(captured and logged at DEBUG) and every file it might write confined to a temporary
folder that is removed afterwards.
"""
from __future__ import annotations

import contextlib
import copy
import io
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from normfuse.checks import (
    check_is_fitted,
    check_numeric,
    get_logger,
    optional_import,
    require_columns,
    require_dataframe,
)
from normfuse.contracts import SEXES
from normfuse.errors import ColumnContractError, UnknownSiteError

__all__ = ["PcnBackend"]

_log = get_logger("normative.pcn")

#: Standard-normal grid and weights pcntoolkit uses for ``Yhat``
#: (``RegressionModel.compute_yhat``): 200 points on [-4, 4], weights phi(z)/sum(phi).
_N_GRID = 200
_WARPS = {"SinhArcsinh": "WarpSinhArcsinh", None: None}


def _import_pcntoolkit():
    """Import pcntoolkit quietly, or raise MissingDependencyError naming the extra."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # arviz's refactor notice
        warnings.simplefilter("ignore", DeprecationWarning)
        with contextlib.redirect_stdout(io.StringIO()):
            return optional_import("pcntoolkit", "pcn", "PcnBackend (backend='pcntoolkit')")


class PcnBackend:
    """pcntoolkit's warped Bayesian linear regression, one model per response.

    Parameters
    ----------
    responses : sequence of str
        Response columns (regional volumes), one BLR each.
    covariates : sequence of str, default ("age", "icv")
        Covariate columns. The first one (age) is expanded in a B-spline basis; the
        others enter linearly.
    batch_effects : sequence of str, default ("sex", "site")
        Batch-effect columns, each modelled as a fixed-effect intercept per level.
        ``sex`` must hold ``"F"``/``"M"`` (the volumes contract); other batch effects
        are used as strings.
    warp : {"SinhArcsinh", None}, default "SinhArcsinh"
        Response warp. ``None`` gives pcntoolkit's Gaussian BLR.
    spline_order : int, default 3
        Degree of the B-spline on the first covariate (3 = cubic).
    n_knots : int, default 5
        Number of knots of that B-spline (pcntoolkit's default), spread uniformly over
        the covariate's training range widened by 5 % on each side.
    optimizer : {"l-bfgs-b", "powell"}, default "l-bfgs-b"
        pcntoolkit's hyperparameter optimiser. ``"l-bfgs-b"`` is pcntoolkit's default:
        it minimises the negative log marginal likelihood plus an L2 penalty of 0.1 on
        the (log) hyperparameters, with finite-difference gradients of step 0.1, and on
        the fcon1000 benchmark it stops near its starting values in several regions
        (e.g. left hippocampus: training log-likelihood 0.11 nats per subject below the
        optimum). ``"powell"`` minimises the unpenalised objective to convergence: about
        twice the fit time, the fit pcntoolkit's model is meant to have, and the
        reference the native engine is checked against (README, "Normative models").
    random_state : int, default 0
        Seeds numpy's global generator while pcntoolkit code runs (restored
        afterwards). The BLR fit itself is deterministic.
    workdir : str or Path, optional
        Folder under which the temporary working folder is made (default: the
        system's temporary folder). The working folder is removed after each call.

    Attributes
    ----------
    model_ : pcntoolkit.NormativeModel
        The fitted pcntoolkit model (its ``regression_models`` hold one BLR each).
    responses_ : list of str
        Responses, in the column order of every returned array.
    levels_ : dict of str -> list of str
        Levels of each batch effect known to the model.
    cells_ : set of tuple, or None
        For a transferred model, the batch-effect combinations (cells) it was adapted
        to; only these can be predicted. ``None`` for a model fitted with ``fit``.
    fit_seconds_ : dict of str -> float
        Wall time of each response's fit (or transfer).
    n_fit_ : int
        Rows used by ``fit`` or ``transfer``.

    Notes
    -----
    **Predictive mean and sd in original units.** For each subject pcntoolkit's BLR
    gives a Gaussian predictive distribution N(mu, s2) in the warped, standardised
    space (``BLR.ys_s2``: mu = Phi m, s2 = 1/beta + Phi A^-1 Phi^T). A response value is
    y = m_y + s_y * w^-1(mu + sqrt(s2) z), z ~ N(0, 1), with w the sinh-arcsinh warp
    and m_y, s_y the training mean and sd. pcntoolkit's ``Yhat``
    (``RegressionModel.compute_yhat``) is E[y] approximated on 200 equally spaced z in
    [-4, 4] with weights phi(z)/sum(phi(z)); it computes no sd. :meth:`predict`
    returns that same ``Yhat`` and the sd from the same rule,
    sd = sqrt(sum_k w_k (y_k - Yhat)^2). Without a warp they equal m_y + s_y mu and
    s_y sqrt(s2) up to the grid's truncation (sd about 0.05 % low).

    **Transfer** (:meth:`transfer`) is pcntoolkit's ``BLR.transfer``: predictions at a
    reference batch (the first level of each batch effect seen in fit) are shifted by
    the mean warped-space residual of the adaptation controls in each batch-effect
    cell and scaled by the ratio of their residual sd to the mean predictive sd.

    Examples
    --------
    >>> pcn = PcnBackend(["Left-Hippocampus"]).fit(train)          # doctest: +SKIP
    >>> mean, sd = pcn.predict(test)                                 # doctest: +SKIP
    >>> z = pcn.transform(test)                                      # doctest: +SKIP
    """

    def __init__(
        self,
        responses: Sequence[str],
        covariates: Sequence[str] = ("age", "icv"),
        batch_effects: Sequence[str] = ("sex", "site"),
        warp: Literal["SinhArcsinh"] | None = "SinhArcsinh",
        spline_order: int = 3,
        n_knots: int = 5,
        optimizer: Literal["l-bfgs-b", "powell"] = "l-bfgs-b",
        random_state: int = 0,
        workdir: str | os.PathLike | None = None,
    ) -> None:
        self.responses = responses
        self.covariates = covariates
        self.batch_effects = batch_effects
        self.warp = warp
        self.spline_order = spline_order
        self.n_knots = n_knots
        self.optimizer = optimizer
        self.random_state = random_state
        self.workdir = workdir

    # ------------------------------------------------------------------ public API
    def fit(self, df) -> PcnBackend:
        """Fit one warped BLR per response on the controls in ``df``.

        Parameters
        ----------
        df : pandas.DataFrame
            Controls with the covariate, batch-effect and response columns.

        Returns
        -------
        PcnBackend
            ``self``, fitted.

        Raises
        ------
        ColumnContractError
            A column is missing, non-numeric or non-finite, or ``sex`` is not F/M.
        """
        who = "PcnBackend.fit"
        self._check_params(who)
        responses = list(self.responses)
        frame = self._frame(df, who, with_responses=True)
        pcn = _import_pcntoolkit()
        with self._pcn_context() as workdir:
            data = self._normdata(pcn, frame, responses, "fit")
            nm = pcn.NormativeModel(
                self._template(pcn),
                savemodel=False,
                evaluate_model=False,
                saveresults=False,
                saveplots=False,
                save_dir=str(workdir),
                inscaler="standardize",
                outscaler="standardize",
            )
            # NormativeModel.fit without its model saving and training-set prediction.
            nm.register_data_info(data)
            nm.preprocess(data)
            seconds = {}
            for r in responses:
                t0 = time.perf_counter()
                X, be, be_maps, Y, _ = nm.extract_data(data.sel({"response_vars": r}))
                nm[r].fit(X, be, be_maps, Y)
                seconds[r] = time.perf_counter() - t0
                _log.debug("fitted %s in %.2f s", r, seconds[r])
            nm.is_fitted = True
        self.model_ = nm
        self.responses_ = responses
        self.levels_ = {k: list(v) for k, v in nm.unique_batch_effects.items()}
        self.cells_ = None
        self.fit_seconds_ = seconds
        self.n_fit_ = len(frame)
        return self

    def predict(self, df) -> tuple[np.ndarray, np.ndarray]:
        """Predictive mean and sd of each response, in the responses' original units.

        Parameters
        ----------
        df : pandas.DataFrame
            Rows with the covariate and batch-effect columns (responses not needed).

        Returns
        -------
        mean, sd : numpy.ndarray, shape (n_rows, n_responses)
            pcntoolkit's ``Yhat`` and the matching sd (see Notes of the class), rows in
            the order of ``df``, columns in ``responses_`` order.
        """
        out = self._evaluate(df, "PcnBackend.predict", need_y=False, what=("mean", "sd"))
        return out["mean"], out["sd"]

    def transform(self, df) -> np.ndarray:
        """Z-scores of the responses in ``df``: (w(y) - mu) / sqrt(s2), pcntoolkit's ``Z``.

        Returns
        -------
        numpy.ndarray, shape (n_rows, n_responses)
        """
        return self._evaluate(df, "PcnBackend.transform", need_y=True, what=("z",))["z"]

    def logpdf(self, df) -> np.ndarray:
        """Log predictive density of each observed response, in its original units.

        pcntoolkit's ``logp`` (Gaussian log density in the warped space plus the log
        Jacobian of the warp, on standardised responses) minus ``log(s_y)``, the
        Jacobian of the standardisation.

        Returns
        -------
        numpy.ndarray, shape (n_rows, n_responses)
        """
        return self._evaluate(df, "PcnBackend.logpdf", need_y=True, what=("logp",))["logp"]

    def centiles(self, df, q: Sequence[float] | float) -> np.ndarray:
        """Response values at predictive quantiles ``q`` (probabilities in (0, 1)).

        pcntoolkit's ``backward`` at z = Phi^-1(q): m_y + s_y w^-1(mu + sqrt(s2) z).

        Returns
        -------
        numpy.ndarray, shape (len(q), n_rows, n_responses)
            One (n_rows, n_responses) slice per requested quantile.
        """
        from scipy.stats import norm

        qa = np.atleast_1d(np.asarray(q, dtype=np.float64))
        if qa.ndim != 1 or qa.size == 0 or not np.all((qa > 0) & (qa < 1)):
            raise ValueError(
                f"PcnBackend.centiles: q must hold probabilities strictly between 0 and 1, "
                f"got {q!r}. Use e.g. q=[0.05, 0.5, 0.95]."
            )
        out = self._evaluate(
            df, "PcnBackend.centiles", need_y=False, what=("centiles",), zq=norm.ppf(qa)
        )
        return out["centiles"]

    def transfer(self, df_new_site_controls) -> PcnBackend:
        """Adapt the fitted model to new sites with a few local controls (pcntoolkit's transfer).

        Parameters
        ----------
        df_new_site_controls : pandas.DataFrame
            Controls from the new site(s), with the covariate, batch-effect and
            response columns; at least 2 per batch-effect cell (site x sex).

        Returns
        -------
        PcnBackend
            A new, fitted backend that predicts only for the adapted cells; ``self``
            is unchanged.

        Raises
        ------
        ColumnContractError
            A cell has fewer than 2 controls (its residual sd is undefined).
        """
        who = "PcnBackend.transfer"
        check_is_fitted(self, ["model_"])
        frame = self._frame(df_new_site_controls, who, with_responses=True)
        cells = frame.groupby(list(self.batch_effects), sort=True).size()
        small = cells[cells < 2]
        if len(small):
            raise ColumnContractError(
                f"{who}: every batch-effect cell needs at least 2 adaptation controls to "
                f"estimate its residual sd; these have fewer: "
                f"{[(tuple(map(str, k)) if isinstance(k, tuple) else str(k), int(v)) for k, v in small.items()]}. "
                "Add controls to those cells or drop their rows."
            )
        pcn = _import_pcntoolkit()
        old = self.model_
        with self._pcn_context() as workdir:
            data = self._normdata(pcn, frame, self.responses_, "transfer")
            # NormativeModel.transfer without its model saving and prediction/plots.
            new = pcn.NormativeModel(
                copy.deepcopy(old.template_regression_model),
                savemodel=False,
                evaluate_model=False,
                saveresults=False,
                saveplots=False,
                save_dir=str(workdir),
                inscaler=old.inscaler,
                outscaler=old.outscaler,
            )
            new.covariates = copy.deepcopy(old.covariates)
            new.inscalers = copy.deepcopy(old.inscalers)
            new.outscalers = copy.deepcopy(old.outscalers)
            new.response_vars = list(self.responses_)
            new.preprocess(data)
            new.register_batch_effects(data)
            seconds = {}
            for r in self.responses_:
                t0 = time.perf_counter()
                X, be, be_maps, Y, _ = new.extract_data(data.sel({"response_vars": r}))
                new[r] = old[r].transfer(X, be, be_maps, Y)
                seconds[r] = time.perf_counter() - t0
            new.is_fitted = True
        out = copy.copy(self)
        out.model_ = new
        out.responses_ = list(self.responses_)
        out.levels_ = {k: list(v) for k, v in new.unique_batch_effects.items()}
        out.cells_ = set(cells.index.map(lambda k: tuple(map(str, k)) if isinstance(k, tuple) else (str(k),)))
        out.fit_seconds_ = seconds
        out.n_fit_ = len(frame)
        return out

    # ------------------------------------------------------------------ internals
    def _check_params(self, who: str) -> None:
        if self.warp not in _WARPS:
            raise ValueError(f"{who}: warp={self.warp!r}; expected 'SinhArcsinh' or None.")
        if self.optimizer not in ("l-bfgs-b", "powell"):
            raise ValueError(f"{who}: optimizer={self.optimizer!r}; expected 'l-bfgs-b' or 'powell'.")
        if isinstance(self.responses, str) or len(list(self.responses)) == 0:
            raise ValueError(
                f"{who}: responses must be a non-empty list of column names, got {self.responses!r}."
            )
        if len(list(self.covariates)) == 0:
            raise ValueError(f"{who}: covariates must name at least one column (age first).")
        if len(list(self.batch_effects)) == 0:
            raise ValueError(f"{who}: batch_effects must name at least one column, e.g. ('site',).")
        if int(self.spline_order) < 1 or int(self.n_knots) < 2:
            raise ValueError(
                f"{who}: spline_order={self.spline_order!r} and n_knots={self.n_knots!r}; "
                "need spline_order >= 1 and n_knots >= 2."
            )

    def _template(self, pcn):
        basis = pcn.BsplineBasisFunction(
            basis_column=0, degree=int(self.spline_order), nknots=int(self.n_knots)
        )
        return pcn.BLR(
            name="template",
            fixed_effect=True,
            heteroskedastic=False,
            warp_name=_WARPS[self.warp],
            basis_function_mean=basis,
            optimizer=self.optimizer,
        )

    def _frame(self, df, who: str, *, with_responses: bool):
        """Validated copy: float covariates/responses, string batch effects (sex F/M)."""
        import pandas as pd

        require_dataframe(df, who)
        resp = list(self.responses_ if hasattr(self, "responses_") else self.responses)
        cov, bes = list(self.covariates), list(self.batch_effects)
        need = cov + bes + (resp if with_responses else [])
        require_columns(
            df, need, who,
            hint="Volumes must follow the contract: age, sex ('F'/'M'), site, icv and one "
            "column per region in FreeSurfer 7 names.",
        )
        cols: dict[str, Any] = {}
        xs = check_numeric(df, cov, who)
        for j, c in enumerate(cov):
            cols[c] = xs[:, j]
        if with_responses:
            ys = check_numeric(df, resp, who)
            for j, c in enumerate(resp):
                cols[c] = ys[:, j]
        for c in bes:
            col = df[c]
            if col.isna().any():
                i = int(np.flatnonzero(col.isna().to_numpy())[0])
                raise ColumnContractError(
                    f"{who}: batch-effect column {c!r} is missing at row {df.index[i]!r} "
                    f"({int(col.isna().sum())} missing cells). Fill or drop those rows."
                )
            vals = col.astype(str).to_numpy(dtype=object)
            if c == "sex":
                bad = ~np.isin(vals, np.array(SEXES, dtype=object))
                if bad.any():
                    i = int(np.flatnonzero(bad)[0])
                    raise ColumnContractError(
                        f"{who}: column 'sex' must hold 'F' or 'M'; row {df.index[i]!r} holds "
                        f"{col.iloc[i]!r} ({int(bad.sum())} such rows). Recode, e.g. "
                        "df.assign(sex=df['sex'].map({0: 'F', 1: 'M'})) for 0=female/1=male."
                    )
            cols[c] = vals
        return pd.DataFrame(cols, index=pd.RangeIndex(len(df)))

    def _normdata(self, pcn, frame, responses: list[str], name: str):
        """A pcntoolkit NormData built from the validated frame (responses optional)."""
        import pandas as pd

        frame = frame.copy()
        for r in responses:
            if r not in frame.columns:  # predict/centiles: Y is not used, only present
                frame[r] = 0.0
        cols = list(self.covariates) + responses + list(self.batch_effects)
        return pcn.NormData.from_dataframe(
            name=name,
            dataframe=pd.DataFrame({c: frame[c].to_numpy() for c in cols}),
            covariates=list(self.covariates),
            batch_effects=list(self.batch_effects),
            response_vars=list(responses),
        )

    def _check_known(self, frame, who: str) -> None:
        bes = list(self.batch_effects)
        for c in bes:
            unknown = sorted(set(frame[c]) - set(self.levels_[c]))
            if unknown:
                hint = (
                    "Adapt the model to the new site(s) first with .transfer(local_controls)."
                    if c == "site"
                    else "Fit on data that contain these levels."
                )
                raise UnknownSiteError(
                    f"{who}: {c!r} levels {unknown} were not seen in fit/transfer "
                    f"(known: {self.levels_[c]}). {hint}"
                )
        if self.cells_ is not None:
            have = set(map(tuple, frame[bes].to_numpy(dtype=object).astype(str)))
            missing = sorted(have - self.cells_)
            if missing:
                raise UnknownSiteError(
                    f"{who}: this transferred model was adapted to cells {sorted(self.cells_)} of "
                    f"{bes}; the data also hold {missing}. Transfer again with controls from "
                    "those cells."
                )

    def _evaluate(self, df, who: str, *, need_y: bool, what: tuple[str, ...], zq=None):
        """All per-response quantities in one pass over pcntoolkit's regression models."""
        import xarray as xr

        check_is_fitted(self, ["model_"])
        frame = self._frame(df, who, with_responses=need_y)
        self._check_known(frame, who)
        n, R = len(frame), len(self.responses_)
        out = {k: np.empty((n, R)) for k in what if k != "centiles"}
        if "centiles" in what:
            out["centiles"] = np.empty((len(zq), n, R))
        if n == 0:
            return out
        pcn = _import_pcntoolkit()
        nm = self.model_
        if "mean" in what or "sd" in what:
            from scipy.stats import norm

            grid = np.linspace(-4.0, 4.0, _N_GRID)
            weights = norm.pdf(grid) / norm.pdf(grid).sum()
        with self._pcn_context():
            data = self._normdata(pcn, frame, self.responses_, "predict")
            nm.preprocess(data)  # scales X and Y in place (our own NormData)
            for j, r in enumerate(self.responses_):
                X, be, _, Y, _ = nm.extract_data(data.sel({"response_vars": r}))
                reg = nm[r]
                scaler = nm.outscalers[r]
                if "z" in what:
                    out["z"][:, j] = np.asarray(reg.forward(X, be, Y).values, dtype=np.float64)
                if "logp" in what:
                    lp = np.asarray(reg.elemwise_logp(X, be, Y).values, dtype=np.float64)
                    out["logp"][:, j] = lp - np.log(float(np.asarray(scaler.s)))
                zs = []
                if "mean" in what or "sd" in what:
                    zs.append(("grid", grid))
                if "centiles" in what:
                    zs.append(("centiles", np.asarray(zq, dtype=np.float64)))
                for kind, zvals in zs:
                    G = len(zvals)
                    Xt = xr.DataArray(np.repeat(X.values, G, axis=0), dims=X.dims)
                    bet = xr.DataArray(
                        np.repeat(be.values, G, axis=0),
                        dims=be.dims,
                        coords={"batch_effect_dims": be.batch_effect_dims.values},
                    )
                    Zt = xr.DataArray(np.tile(zvals, n), dims=("observations",))
                    ys = np.asarray(reg.backward(Xt, bet, Zt).values, dtype=np.float64)
                    ys = scaler.inverse_transform(ys).reshape(n, G)
                    if kind == "grid":
                        mean = ys @ weights
                        out["mean"][:, j] = mean
                        if "sd" in what:
                            out["sd"][:, j] = np.sqrt(((ys - mean[:, None]) ** 2) @ weights)
                    else:
                        out["centiles"][:, :, j] = ys.T
        return out

    @contextlib.contextmanager
    def _pcn_context(self) -> Iterator[Path]:
        """Silence pcntoolkit, confine its files to a temporary folder, seed numpy."""
        _import_pcntoolkit()
        from pcntoolkit.util.output import Output

        base = Path(self.workdir) if self.workdir is not None else None
        if base is not None:
            base.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix="normfuse-pcn-", dir=base))
        env_keys = ("PCN_HOME_DIR", "PCN_SAVE_DIR", "PCN_TEMP_DIR", "PCN_LOG_DIR")
        old_env = {k: os.environ.get(k) for k in env_keys}
        old_show = Output.get_show_messages()
        old_rng = np.random.get_state()
        buf = io.StringIO()
        try:
            for k in env_keys:
                os.environ[k] = str(tmp)
            Output.set_show_messages(False)
            np.random.seed(int(self.random_state))
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                with contextlib.redirect_stdout(buf):
                    yield tmp
            for w in caught:
                _log.debug("pcntoolkit %s: %s", w.category.__name__, str(w.message).strip())
            if caught:
                _log.debug("pcntoolkit emitted %d warnings (logged at DEBUG)", len(caught))
        finally:
            np.random.set_state(old_rng)
            Output.set_show_messages(old_show)
            for k, v in old_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            text = buf.getvalue().strip()
            if text:
                _log.debug("pcntoolkit output:\n%s", text)
            shutil.rmtree(tmp, ignore_errors=True)
