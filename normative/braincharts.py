"""Pre-trained braincharts lifespan models (Rutherford et al. 2022) as native models.

The braincharts models were trained on ~58,800 healthy people from 82 sites and are
published as pcntoolkit-0.x pickles (one Bayesian linear regression per measure).
:func:`import_braincharts` reads them from the published zip *in place* with a
restricted unpickler that builds plain arrays only (it never imports pcntoolkit and
never runs code from the file) and returns a :class:`BrainchartsModel`, which
predicts with braincharts' own equations and saves in normfuse's JSON + npz format.

The model of one measure (in braincharts' notation)::

    x   = [1, age, sex, site_1 .. site_82, B_1(age) .. B_7(age)]   (92 columns)
    w   = sinh(b * asinh(y) + eps * b),  b = exp(log_delta)        (SinhArcsinh warp)
    w | x ~ Normal(x'm, s2(x)),  s2(x) = b^2 / exp(log_beta) + x' A^-1 x
    Z   = (w - x'm) / sqrt(s2(x))

with ``sex`` 1 for male and 0 for female, site dummies in the order of
:data:`BRAINCHARTS_82_SITES`, ``B_j`` the cubic B-spline basis on knots
``linspace(-5, 110, 5)`` with the end knots repeated (pcntoolkit's
``create_bspline_basis``), and ``m``, ``A`` and ``hyp = [log_beta, eps, log_delta,
log_alpha]`` read from the pickle (the noise precision is divided by ``b^2``:
pcntoolkit's ``warp_reparam``). Responses are not rescaled (``inscaler`` and
``outscaler`` are ``'None'`` in the published files).

New scanners are handled as braincharts recommends, with a few local healthy
controls: :meth:`BrainchartsModel.adapt` estimates for each new site a location
offset and a log-scale in the warped space, shrunk toward the average of the 82
training sites with a prior whose spread is the between-site spread of the 82
site coefficients of each measure (empirical Bayes), and widens predictions by the
remaining uncertainty (Laplace), with the code :meth:`NormativeModel.adapt` uses
(:func:`normative.adapt.fit_site_effects`).

References
----------
Rutherford S, Fraza C, Dinga R, et al. (2022). Charting brain growth and aging at high
spatial precision. eLife 11:e72904.
Rutherford S, Kia SM, Wolfers T, et al. (2022). The normative modeling framework for
computational psychiatry. Nature Protocols 17:1711-1734.
Jones MC, Pewsey A (2009). Sinh-arcsinh distributions. Biometrika 96(4):761-780.
"""
from __future__ import annotations

import copy
import logging
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from normfuse import checks, persist
from normfuse.errors import (
    ColumnContractError,
    InputFormatError,
    OutOfRangeWarning,
    SchemaError,
    UnknownSiteError,
)

__all__ = ["import_braincharts", "braincharts_measures", "close_measure_names",
           "BrainchartsModel", "BRAINCHARTS_82_SITES",
           "braincharts_design", "sinh_arcsinh_warp", "sinh_arcsinh_unwarp"]

log = logging.getLogger("normfuse.normative")

# site order of the design of lifespan_57K_82sites (site_ids_ct_82sites.txt)
BRAINCHARTS_82_SITES: tuple[str, ...] = (
    "ABCD_01", "ABCD_02", "ABCD_03", "ABCD_04", "ABCD_05", "ABCD_06", "ABCD_07", "ABCD_08",
    "ABCD_09", "ABCD_10", "ABCD_11", "ABCD_12", "ABCD_13", "ABCD_14", "ABCD_15", "ABCD_16",
    "ABCD_17", "ABCD_18", "ABCD_19", "ABCD_20", "ABCD_21", "ABIDE_GU", "ABIDE_KKI", "ABIDE_NYU",
    "ABIDE_USM", "ADD200_KKI", "ADD200_NYU", "AOMIC_1000", "AOMIC_PIPO2", "ATV", "CIN",
    "CMI_CBIC", "CMI_RU", "CMI_SI", "CNP-35343.0", "CNP-35426.0", "COI", "HCP_A_MGH",
    "HCP_A_UCLA", "HCP_A_UM", "HCP_A_WU", "HCP_D_MGH", "HCP_D_UCLA", "HCP_D_UM", "HCP_D_WU",
    "HCP_EP_BWH", "HCP_EP_IU", "HCP_EP_MGH", "HCP_EP_McL", "HKH", "HRC", "HUH", "KCL", "KTT",
    "KUT", "Oasis2", "Oasis3", "SWA", "SWU_SLIM_ses1", "UCDavis", "UMich_CWS", "UMich_IMPs",
    "UMich_MLS", "UMich_MTwins", "UMich_SAD", "UMich_SZG", "UTO", "cam", "delta", "ds001734",
    "ds002236", "ds002330", "ds002345", "ds002731", "ds002837", "hcp_ya", "ixi", "nki", "pnc",
    "top", "ukb-11025.0", "ukb-11027.0",
)
# age basis of the published design and the age span of its training sample
_BASIS = {"xmin": -5.0, "xmax": 110.0, "nknots": 5, "degree": 3}
_TRAINING_AGE_RANGE = (2.0, 100.0)
_MODEL_FILE = "NM_0_0_estimate.pkl"
_META_FILE = "meta_data.md"
_SCHEMA = 1
_GH_NODES = 48
_MIN_SITE_SD = 1e-3


# ----------------------------------------------------------------- equations
def sinh_arcsinh_warp(y, eps, log_delta):
    """pcntoolkit's ``WarpSinArcsinh.f``: ``sinh(b * asinh(y) + eps * b)``, ``b = exp(log_delta)``."""
    b = np.exp(log_delta)
    return np.sinh(b * (np.arcsinh(y) + eps))


def sinh_arcsinh_unwarp(w, eps, log_delta):
    """Inverse of :func:`sinh_arcsinh_warp`: ``sinh(asinh(w) / b - eps)``."""
    b = np.exp(log_delta)
    return np.sinh(np.arcsinh(w) / b - eps)


def _bspline_knots(xmin, xmax, nknots, degree):
    inner = np.linspace(xmin, xmax, nknots)
    return np.r_[[xmin] * degree, inner, [xmax] * degree]


def braincharts_design(age, male, site_index, n_sites: int, *, xmin=-5.0, xmax=110.0,
                       nknots=5, degree=3) -> np.ndarray:
    """The braincharts design matrix ``[1, age, sex, site dummies, B-spline(age)]``.

    Parameters
    ----------
    age : (n,) ages in years, within ``[xmin, xmax]``.
    male : (n,) 1.0 for male, 0.0 for female.
    site_index : (n,) integer index into the site list, or -1 for a site outside it
        (all dummies zero, as pcntoolkit's ``create_design_matrix`` does).
    n_sites : number of site dummy columns.

    Returns
    -------
    ndarray of shape (n, 3 + n_sites + nknots + degree - 1)
    """
    from scipy.interpolate import BSpline

    age = np.asarray(age, dtype=float)
    n = age.shape[0]
    t = _bspline_knots(xmin, xmax, nknots, degree)
    # the last basis interval is closed on the right, as in pcntoolkit's bspline package
    xa = np.minimum(age, np.nextafter(xmax, -np.inf))
    B = BSpline.design_matrix(xa, t, degree).toarray()
    S = np.zeros((n, n_sites))
    site_index = np.asarray(site_index, dtype=np.int64)
    known = site_index >= 0
    S[np.flatnonzero(known), site_index[known]] = 1.0
    return np.column_stack([np.ones(n), age, np.asarray(male, dtype=float), S, B])


# ----------------------------------------------------------------- import
def _measure_entries(zf: zipfile.ZipFile) -> dict[str, str]:
    """{measure: folder inside the zip} for every ``<measure>/Models/NM_0_0_estimate.pkl``."""
    out = {}
    for name in zf.namelist():
        parts = name.split("/")
        if len(parts) >= 3 and parts[-1] == _MODEL_FILE and parts[-2] == "Models":
            out[parts[-3]] = "/".join(parts[:-2])
    return out


def _read_measure(zf, folder, measure, n_sites, zip_path):
    from normative._safe_unpickle import safe_loads, to_plain

    where = f"{zip_path}!{folder}/Models/{_MODEL_FILE}"
    try:
        nm = to_plain(safe_loads(zf.read(f"{folder}/Models/{_MODEL_FILE}")))
    except SchemaError as exc:
        raise SchemaError(f"{where}: {exc}") from exc
    meta = {}
    if f"{folder}/Models/{_META_FILE}" in zf.namelist():
        meta = to_plain(safe_loads(zf.read(f"{folder}/Models/{_META_FILE}")))
    for key in ("inscaler", "outscaler"):
        if str(meta.get(key, "None")) != "None":
            raise SchemaError(
                f"{where}: the model was trained with {key}={meta.get(key)!r}; only unscaled "
                "braincharts models (inscaler/outscaler 'None') are supported.")
    blr = nm.get("blr") if isinstance(nm, dict) else None
    if not isinstance(blr, dict) or not str(blr.get("__class__", "")).endswith("BLR"):
        raise SchemaError(f"{where}: not a pcntoolkit BLR model (found {nm.get('__class__')!r}).")
    warp = blr.get("warp")
    if not isinstance(warp, dict) or not str(warp.get("__class__", "")).endswith("WarpSinArcsinh"):
        raise SchemaError(f"{where}: expected a WarpSinArcsinh likelihood warp, found {warp!r}.")
    if blr.get("var_groups") is not None or blr.get("hetero_var"):
        raise SchemaError(f"{where}: heteroscedastic/variance-group BLR models are not supported.")
    D = 3 + n_sites + _BASIS["nknots"] + _BASIS["degree"] - 1
    m = np.asarray(blr.get("m"), dtype=float).ravel()
    A = np.asarray(blr.get("A"), dtype=float)
    hyp = np.asarray(blr.get("hyp"), dtype=float).ravel()
    if m.shape != (D,) or A.shape != (D, D) or hyp.shape != (4,):
        raise SchemaError(
            f"{where}: expected m ({D},), A ({D}, {D}) and 4 hyperparameters for a design with "
            f"{n_sites} sites; found m {m.shape}, A {A.shape}, hyp {hyp.shape}. Pass the site "
            "list the model was trained with (site_ids=...).")
    reparam = bool(blr.get("warp_reparam", False))
    log_beta, eps, log_delta = hyp[0], hyp[1], hyp[2]
    noise_var = np.exp(-log_beta) * (np.exp(2.0 * log_delta) if reparam else 1.0)
    L = np.linalg.cholesky(A)
    Linv = np.linalg.solve(L, np.eye(D))
    cov = Linv.T @ Linv
    mean_resp = np.asarray(meta.get("mean_resp", [np.nan]), dtype=float).ravel()
    std_resp = np.asarray(meta.get("std_resp", [np.nan]), dtype=float).ravel()
    return dict(m=m, cov=0.5 * (cov + cov.T), noise_var=noise_var, eps=eps, log_delta=log_delta,
                y_mean=float(mean_resp[0]) if mean_resp.size else np.nan,
                y_sd=float(std_resp[0]) if std_resp.size else np.nan, n_train=int(blr.get("N", 0)))


def _open_zip(zip_path, who):
    """The zip opened for reading, and ``{measure: folder}`` of its models; errors name it."""
    zip_path = Path(zip_path)
    if not zip_path.is_file():
        raise FileNotFoundError(f"{who}: no such file: {zip_path}")
    try:
        zf = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile:
        raise InputFormatError(
            "not a zip archive. Pass the braincharts model zip as downloaded (e.g. "
            "lifespan_57K_82sites.zip), not an extracted file.", path=zip_path) from None
    entries = _measure_entries(zf)
    if not entries:
        zf.close()
        raise SchemaError(f"{zip_path}: no '<measure>/Models/{_MODEL_FILE}' entries; "
                          "not a braincharts model zip.")
    return zf, entries


def _fs7_names(available):
    from normative.freesurfer import harmonise_region_names

    return dict(zip(available, harmonise_region_names(list(available)), strict=True))


def _measures_table(available, fs7):
    """``measure`` (braincharts' name) and ``freesurfer7`` columns, one row per measure."""
    import pandas as pd

    return pd.DataFrame({"measure": list(available), "freesurfer7": [fs7[m] for m in available]})


def close_measure_names(name: str, measures, n: int = 3) -> list[str]:
    """Up to ``n`` measures whose braincharts or FreeSurfer 7 name resembles ``name``.

    ``measures`` is a table from :func:`braincharts_measures`. The comparison ignores
    case; each measure is named once, by the spelling that matched (FS7 name first).
    """
    import difflib

    cands: dict[str, str] = {}
    for bc_name, fs7 in zip(measures["measure"], measures["freesurfer7"], strict=True):
        cands.setdefault(str(fs7).lower(), str(fs7))
        cands.setdefault(str(bc_name).lower(), str(bc_name))
    same = {str(f): str(b) for b, f in zip(measures["measure"], measures["freesurfer7"], strict=True)}
    out, seen = [], set()
    for low in difflib.get_close_matches(str(name).lower(), list(cands), n=3 * n, cutoff=0.6):
        shown = cands[low]
        model = same.get(shown, shown)
        if model not in seen:
            seen.add(model)
            out.append(shown)
    return out[:n]


def braincharts_measures(zip_path):
    """The measures of a braincharts model zip, without reading the models.

    Parameters
    ----------
    zip_path : path to the braincharts zip (read in place).

    Returns
    -------
    DataFrame
        One row per measure, sorted: ``measure`` (braincharts' name, e.g.
        ``Left-Thalamus-Proper``) and ``freesurfer7`` (the name normfuse uses, e.g.
        ``Left-Thalamus``; equal to ``measure`` where nothing changes).

    Raises
    ------
    FileNotFoundError, InputFormatError, normfuse.errors.SchemaError
        When the file is missing, not a zip, or holds no braincharts models.

    Examples
    --------
    >>> t = braincharts_measures("../shared/data/braincharts/lifespan_57K_82sites.zip")  # doctest: +SKIP
    >>> len(t), t.loc[t.measure == "Left-Thalamus-Proper", "freesurfer7"].item()  # doctest: +SKIP
    (188, 'Left-Thalamus')
    """
    zf, entries = _open_zip(zip_path, "braincharts_measures")
    zf.close()
    available = sorted(entries)
    return _measures_table(available, _fs7_names(available))


def _resolve_measures(measures, available, fs7, zip_name):
    """Zip names of the requested measures (braincharts or FS7 names), in request order."""
    from normative.freesurfer import harmonise_region_names

    by_fs7 = {v: k for k, v in fs7.items()}
    chosen, missing = [], []
    for mname in measures:
        key = mname if mname in fs7 else by_fs7.get(harmonise_region_names(str(mname)))
        (chosen if key is not None else missing).append(key if key is not None else mname)
    if missing:
        table = _measures_table(available, fs7)
        hints = "; ".join(f"{mm!r}: {close_measure_names(mm, table) or 'none'}" for mm in missing)
        raise ColumnContractError(
            f"import_braincharts: {len(missing)} measure(s) not in {zip_name}: {missing}.\n"
            f"Close names: {hints}.\nThe zip holds {len(available)} measures (list them with "
            "braincharts_measures(zip_path)); pass measures=None to import them all.",
            missing=missing, present=available)
    if len(set(chosen)) != len(chosen):
        dup = sorted({c for c in chosen if chosen.count(c) > 1})
        raise ValueError(f"import_braincharts: measures name the same model twice: {dup} "
                         f"(from {list(measures)}); list each once.")
    return chosen


def import_braincharts(zip_path, measures: Sequence[str] | None = None, *,
                       site_ids: Sequence[str] | str | Path | None = None,
                       verbose: int = 0) -> BrainchartsModel:
    """Read a published braincharts model zip into a :class:`BrainchartsModel`.

    Parameters
    ----------
    zip_path : path to the braincharts zip (e.g. ``lifespan_57K_82sites.zip``); read in
        place with :mod:`zipfile`, nothing is extracted.
    measures : measures to import, in braincharts names (``Left-Thalamus-Proper``,
        ``lh_G&S_frontomargin_thickness``) or FreeSurfer 7 names (``Left-Thalamus``,
        ``eTIV``). ``None`` imports every measure in the zip
        (:func:`braincharts_measures` lists them).
    site_ids : the training site list in design order (a sequence, or a path to a
        text file with one site per line). ``None`` uses :data:`BRAINCHARTS_82_SITES`,
        the sites of ``lifespan_57K_82sites``.
    verbose : log progress at INFO when > 0.

    Returns
    -------
    BrainchartsModel
        Fitted; ``responses_`` are FreeSurfer 7 names, ``measures_`` braincharts names.

    Raises
    ------
    FileNotFoundError
        When the zip does not exist.
    ColumnContractError
        When a requested measure is not in the zip (the message lists close names;
        ``missing`` holds the unknown names).
    normfuse.errors.SchemaError
        When a file is not a supported braincharts BLR model or names a class outside the
        restricted unpickler's allow-list (its code is never run).

    See Also
    --------
    braincharts_measures : the measures of a zip.
    normfuse.cli : ``normfuse normative import-braincharts ZIP -o MODEL`` does this and saves.

    Examples
    --------
    >>> bc = import_braincharts("../shared/data/braincharts/lifespan_57K_82sites.zip",
    ...                         measures=["Left-Thalamus", "Right-Thalamus"])  # doctest: +SKIP
    >>> bc.responses_  # doctest: +SKIP
    ['Left-Thalamus', 'Right-Thalamus']
    """
    zip_path = Path(zip_path)
    if site_ids is None:
        sites = list(BRAINCHARTS_82_SITES)
    elif isinstance(site_ids, (str, Path)):
        sites = [s.strip() for s in Path(site_ids).read_text().splitlines() if s.strip()]
    else:
        sites = [str(s) for s in site_ids]
    zf, entries = _open_zip(zip_path, "import_braincharts")
    with zf:
        available = sorted(entries)
        fs7 = _fs7_names(available)
        chosen = available if measures is None else _resolve_measures(
            [str(m) for m in measures], available, fs7, zip_path.name)
        parts = []
        for i, mname in enumerate(chosen):
            parts.append(_read_measure(zf, entries[mname], mname, len(sites), zip_path))
            if verbose and (i + 1) % 25 == 0:
                log.info("import_braincharts: read %d/%d measures", i + 1, len(chosen))
    model = BrainchartsModel()
    model.measures_ = list(chosen)
    model.responses_ = [fs7[mn] for mn in chosen]
    model.sites_ = list(sites)
    model.n_reference_sites_ = len(sites)
    model.basis_ = dict(_BASIS)
    model.age_range_ = tuple(_TRAINING_AGE_RANGE)
    model.m_ = np.stack([p["m"] for p in parts])                     # (R, D)
    model.cov_ = np.stack([p["cov"] for p in parts])                 # (R, D, D)
    model.noise_var_ = np.array([p["noise_var"] for p in parts])
    model.eps_ = np.array([p["eps"] for p in parts])
    model.log_delta_ = np.array([p["log_delta"] for p in parts])
    model.y_mean_ = np.array([p["y_mean"] for p in parts])
    model.y_sd_ = np.array([p["y_sd"] for p in parts])
    model.n_train_ = np.array([p["n_train"] for p in parts], dtype=np.int64)
    model.source_ = zip_path.name
    model._init_site_priors()
    model._reset_adapted()
    log.info("import_braincharts: %d measures from %s", len(chosen), zip_path.name)
    return model


# ----------------------------------------------------------------- the model
@persist.register("BrainchartsModel", schema=_SCHEMA)
class BrainchartsModel:
    """A braincharts reference model, predicting with braincharts' equations.

    Create it with :func:`import_braincharts` (or :meth:`load`). The input is a
    ``volumes`` table: ``age`` (years), ``sex`` (``F``/``M``), ``site``, and one column
    per measure. Measure columns may use FreeSurfer 7 names (``Left-Thalamus``,
    ``eTIV``) or older names that :func:`normative.freesurfer.harmonise_region_names`
    maps to them (``Left-Thalamus-Proper``, ``EstimatedTotalIntraCranialVol``); ``eTIV``
    falls back to the ``icv`` column.

    Attributes
    ----------
    responses_ : list of str
        Measures in FreeSurfer 7 names (columns of ``transform``'s output).
    measures_ : list of str
        The same measures in braincharts' names.
    sites_ : list of str
        The training sites (design order), then adapted sites.
    m_ : ndarray (R, D)
        Posterior mean weights of each measure's BLR (warped space).
    cov_ : ndarray (R, D, D)
        Posterior covariance ``A^-1`` of the weights.
    noise_var_, eps_, log_delta_ : ndarray (R,)
        Noise variance (warped space) and SinhArcsinh warp parameters.
    site_prior_ : ndarray (2, R)
        Mean and sd of the 82 site coefficients: the prior of a new site's offset.
    age_range_ : (float, float)
        Age span of the training sample; rows outside are flagged with a warning.
    """

    def __init__(self, *, verbose: int = 0):
        self.verbose = verbose

    # ------------------------------------------------------------- state
    def _init_site_priors(self):
        k = self.n_reference_sites_
        coefs = self.m_[:, 3:3 + k]
        sd = coefs.std(axis=1, ddof=1) if k > 1 else np.full(len(self.m_), np.nan)
        self.site_prior_ = np.vstack([coefs.mean(axis=1), np.maximum(sd, _MIN_SITE_SD)])

    def _reset_adapted(self):
        R = len(self.responses_)
        self.adapted_offset_ = np.zeros((0, R))
        self.adapted_offset_var_ = np.zeros((0, R))
        self.adapted_log_scale_ = np.zeros((0, R))
        self.adapted_log_scale_var_ = np.zeros((0, R))

    def get_params(self) -> dict:
        return {"verbose": self.verbose}

    # ------------------------------------------------------------- inputs
    def _who(self, method):
        return f"BrainchartsModel.{method}"

    def _check_fitted(self):
        checks.check_is_fitted(self, ["responses_", "m_"])

    def _site_codes(self, df, who):
        """Index into sites_ (reference then adapted); unknown sites raise UnknownSiteError."""
        import pandas as pd

        site = df["site"]
        if site.isna().any():
            i = int(np.flatnonzero(site.isna().to_numpy())[0])
            raise ColumnContractError(f"{who}: column 'site' is missing at row {df.index[i]!r}.")
        s = site.astype("string").to_numpy(dtype=object)
        lookup = {v: i for i, v in enumerate(self.sites_)}
        codes = pd.Series(s).map(lookup)
        unknown = codes.isna().to_numpy()
        if unknown.any():
            names = sorted(set(s[unknown].tolist()))
            raise UnknownSiteError(
                f"{who}: {int(unknown.sum())} rows come from sites the model neither was trained "
                f"on nor was adapted to: {names[:10]}{' ...' if len(names) > 10 else ''}.\n"
                f"Adapt the model to them with model.adapt(local_controls), using ~20 healthy "
                "controls per new site scanned with the same protocol. The training sites are "
                f"in BRAINCHARTS_82_SITES (e.g. {self.sites_[:3]}).",
                sites=names, n_rows=int(unknown.sum()), known=self.sites_)
        return codes.to_numpy(dtype=np.int64)

    def _covariates(self, df, who):
        """(age, male, out_of_range) after validating age and sex."""
        from normative._design import sex_indicator

        checks.require_dataframe(df, who)
        checks.require_columns(df, ["age", "sex", "site"], who,
                               hint="braincharts models need age (years), sex (F/M) and site.")
        age = checks.check_numeric(df, ["age"], who)[:, 0]
        lo, hi = self.basis_["xmin"], self.basis_["xmax"]
        bad = (age < lo) | (age > hi)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"{who}: {int(bad.sum())} rows have ages outside the model's age basis "
                f"[{lo:g}, {hi:g}] years (row {df.index[i]!r}: age {age[i]!r}). Check the unit "
                "(years, not months or days) or drop those rows.")
        male = sex_indicator(df["sex"].to_numpy(dtype=object), who)
        alo, ahi = self.age_range_
        out = (age < alo) | (age > ahi)
        if out.any():
            warnings.warn(
                f"{who}: {int(out.sum())} rows have ages outside the braincharts training range "
                f"[{alo:g}, {ahi:g}]; their predictions extrapolate the age curves and the rows "
                "are flagged (column 'age_out_of_range' in deviations()). Silence with "
                "warnings.filterwarnings('ignore', category=OutOfRangeWarning).",
                OutOfRangeWarning, stacklevel=3)
        return age, male, out

    def _column_map(self, df, who) -> list[str]:
        """Input column holding each response (FS7 name, older name, or icv for eTIV)."""
        from normative.freesurfer import harmonise_region_names

        cols = [c for c in df.columns if isinstance(c, str)]
        harm = dict(zip(cols, harmonise_region_names(cols), strict=True))
        by_fs7: dict[str, str] = {}
        for c in cols:
            by_fs7.setdefault(harm[c], c)
        for c in cols:                                   # exact FS7 names win
            if harm[c] == c:
                by_fs7[c] = c
        if "eTIV" not in by_fs7 and "icv" in df.columns:
            by_fs7["eTIV"] = "icv"
        found, missing = [], []
        for r, mname in zip(self.responses_, self.measures_, strict=True):
            c = by_fs7.get(r, mname if mname in df.columns else None)
            (found if c is not None else missing).append(c if c is not None else r)
        if missing:
            raise ColumnContractError(
                f"{who}: the data lack measures the model needs.\nMissing: {missing[:20]}"
                f"{' ...' if len(missing) > 20 else ''} ({len(missing)} of {len(self.responses_)})\n"
                "Rename columns to FreeSurfer 7 names, or import only the measures you have: "
                "import_braincharts(zip_path, measures=[...]).")
        return found

    def _responses_matrix(self, df, who):
        cols = self._column_map(df, who)
        return checks.check_numeric(df, cols, who, allow_nan=True)     # inf is refused

    # ------------------------------------------------------------- predictive
    def _design(self, age, male, codes):
        k = self.n_reference_sites_
        ref = np.where(codes < k, codes, -1)
        b = self.basis_
        return braincharts_design(age, male, ref, k, xmin=b["xmin"], xmax=b["xmax"],
                                  nknots=b["nknots"], degree=b["degree"])

    def _quad(self, X, site_index):
        """(n, R) ``x' A^-1 x`` per measure, using the one-hot site block of the design.

        ``x`` is dense on the intercept, age, sex and spline columns and has at most one
        site dummy, so ``x'Cx = d'C_dd d + 2 d'C_d,s + C_s,s``: O(n R p^2) with p = 10
        dense columns instead of O(n R D^2) with D = 92.
        """
        k = self.n_reference_sites_
        dense = np.r_[0:3, 3 + k:X.shape[1]]
        Xd = X[:, dense]
        Cdd = self.cov_[:, dense[:, None], dense[None, :]]              # (R, p, p)
        out = np.einsum("np,rpq,nq->nr", Xd, Cdd, Xd, optimize=True)
        known = np.flatnonzero(np.asarray(site_index) >= 0)
        if known.size:
            cols = 3 + np.asarray(site_index)[known]
            Cds = self.cov_[:, dense[:, None], cols[None, :]]          # (R, p, m)
            Css = self.cov_[:, cols, cols]                              # (R, m)
            out[known] += (2.0 * np.einsum("mp,rpm->mr", Xd[known], Cds) + Css.T)
        return out

    def _warped_params(self, df, who):
        """Warped-space predictive mean and variance (n, R), and the out-of-range flags."""
        self._check_fitted()
        age, male, out = self._covariates(df, who)
        codes = self._site_codes(df, who)
        X = self._design(age, male, codes)
        mu = X @ self.m_.T
        new = codes >= self.n_reference_sites_
        var = self.noise_var_[None, :] + self._quad(X, np.where(new, -1, codes))
        if new.any():
            k = codes[new] - self.n_reference_sites_
            mu[new] += self.adapted_offset_[k]
            var[new] = (var[new] * np.exp(2.0 * self.adapted_log_scale_[k]
                                          + 2.0 * self.adapted_log_scale_var_[k])
                        + self.adapted_offset_var_[k])
        return mu, var, out

    def transform(self, data):
        """Deviation scores Z, one column per measure (``responses_``), NaN where missing.

        ``Z = (warp(y) - x'm) / sqrt(s2(x))`` in braincharts' warped space; the output
        keeps the input's index and row order.
        """
        import pandas as pd

        who = self._who("transform")
        self._check_fitted()
        Y = self._responses_matrix(data, who)
        mu, var, _ = self._warped_params(data, who)
        w = sinh_arcsinh_warp(Y, self.eps_[None, :], self.log_delta_[None, :])
        Z = (w - mu) / np.sqrt(var)
        return pd.DataFrame(Z, index=data.index, columns=list(self.responses_))

    def predict(self, data):
        """Predictive mean and sd in original units: returns ``(mean, sd)`` DataFrames.

        The moments of ``unwarp(W)``, ``W ~ Normal(x'm, s2(x))``, by Gauss-Hermite
        quadrature. (braincharts' own point prediction is the median, ``centiles(q=[.5])``.)
        """
        import pandas as pd

        who = self._who("predict")
        mu, var, _ = self._warped_params(data, who)
        z, wts = np.polynomial.hermite_e.hermegauss(_GH_NODES)
        wts = wts / wts.sum()
        sd = np.sqrt(var)
        m1 = np.zeros_like(mu)
        m2 = np.zeros_like(mu)
        for zk, wk in zip(z, wts, strict=True):                  # fixed number of nodes; rows vectorised
            y = sinh_arcsinh_unwarp(mu + sd * zk, self.eps_[None, :], self.log_delta_[None, :])
            m1 += wk * y
            m2 += wk * y * y
        s = np.sqrt(np.clip(m2 - m1 * m1, 0.0, None))
        cols = list(self.responses_)
        return (pd.DataFrame(m1, index=data.index, columns=cols),
                pd.DataFrame(s, index=data.index, columns=cols))

    def centiles(self, data, q: Sequence[float] = (0.05, 0.25, 0.5, 0.75, 0.95)):
        """Centiles in original units: DataFrame with MultiIndex columns ``(response, q)``.

        ``unwarp(x'm + sqrt(s2(x)) * Phi^-1(q))``, braincharts' centile curves.
        """
        import pandas as pd
        from scipy.stats import norm

        who = self._who("centiles")
        qs = np.asarray(q, dtype=float)
        if qs.ndim != 1 or ((qs <= 0) | (qs >= 1)).any():
            raise ValueError(f"{who}: centiles q must lie strictly between 0 and 1; got {list(np.atleast_1d(q))}.")
        mu, var, _ = self._warped_params(data, who)
        w = mu[:, :, None] + np.sqrt(var)[:, :, None] * norm.ppf(qs)[None, None, :]
        arr = sinh_arcsinh_unwarp(w, self.eps_[None, :, None], self.log_delta_[None, :, None])
        cols = pd.MultiIndex.from_product([list(self.responses_), list(qs)], names=["response", "q"])
        return pd.DataFrame(arr.reshape(len(data), -1), index=data.index, columns=cols)

    def age_out_of_range(self, data):
        """Boolean Series: rows whose age lies outside the training age range."""
        import pandas as pd

        self._check_fitted()
        age = checks.check_numeric(data, ["age"], self._who("age_out_of_range"))[:, 0]
        lo, hi = self.age_range_
        return pd.Series((age < lo) | (age > hi), index=data.index, name="age_out_of_range")

    def deviations(self, data, *, threshold: float = 1.96, tail: str = "both"):
        """The ``deviations`` table: keys, one Z column per measure, n_crit counts, flags."""
        from normative.deviations import deviation_table

        z = self.transform(data)
        return deviation_table(data, z, threshold=threshold, tail=tail,
                               age_out_of_range=self.age_out_of_range(data))

    def score(self, data):
        """Per-measure EXPV, SMSE, MSLL, Rho and Z calibration (:func:`normative.metrics.evaluate`).

        MSLL uses the training mean and sd stored with the braincharts models.
        """
        from normative.metrics import evaluate

        Y = self._responses_matrix(data, self._who("score"))
        mean, sd = self.predict(data)
        z = self.transform(data)
        return evaluate(Y, mean.to_numpy(), sd.to_numpy(), z.to_numpy(),
                        train_mean=self.y_mean_, train_sd=self.y_sd_, responses=self.responses_)

    # ------------------------------------------------------------- adapt
    def adapt(self, local_controls, *, min_controls: int = 5, scale_prior_sd: float = 0.4,
              max_iter: int = 50) -> BrainchartsModel:
        """Return a copy adapted to new sites from a few local healthy controls.

        Each new site gets, per measure, a location offset ``b`` and log-scale ``c`` in
        the warped space: ``W ~ Normal(x0'm + b, exp(2c) s2(x0))`` with ``x0`` the design
        without site dummies. ``b`` has the prior ``Normal(mean, sd^2)`` of the 82 training
        sites' coefficients (``site_prior_``), ``c`` the prior ``Normal(0,
        scale_prior_sd^2)``; the MAP estimates are used and their Laplace variances widen
        the predictive distribution, so Z stay calibrated with few controls.

        This is the estimator of :meth:`NormativeModel.adapt
        <normative.model.NormativeModel.adapt>`, and the same code
        (:func:`normative.adapt.fit_site_effects`, :func:`normative.adapt.new_site_codes`):
        braincharts' likelihood is Gaussian after the SinhArcsinh warp, the SHASH engine's
        special case ``eps = 0, delta = 1`` applied to warped volumes. The inputs differ:
        the offset prior is centred on the mean of the 82 site coefficients (``x0`` has no
        site dummy, so the average site lies there, not at 0), and the log-scale prior sd
        is set, not learned (braincharts has no site scale terms). The optimum is found to machine
        precision (tolerance 1e-16, no ridge).

        Parameters
        ----------
        local_controls : DataFrame of healthy controls from the new sites (age, sex, site,
            measures). Sites the model already knows (training or adapted) are refused.
        min_controls : warn (``SmallReferenceGroupWarning``) when a new site has fewer.
        scale_prior_sd : prior sd of a new site's log-scale. braincharts has no site
            scale terms, so this prior is not learned from the 82 sites; 0.4 was chosen on
            fcon1000 and COBRE controls (benchmarks/RESULTS.md, "braincharts import"),
            where within-site spread is 10-30 % below braincharts' pooled noise.
        max_iter : Newton iterations (about 10 are needed).

        Returns
        -------
        BrainchartsModel
            A new model; the input model is unchanged. The new sites are appended to
            ``sites_`` (and listed by ``adapted_sites_``), their effects (warped units) to
            ``adapted_offset_``, ``adapted_log_scale_`` and their variances.

        Raises
        ------
        ColumnContractError
            When local_controls is empty, lacks a column, has a row without a site, or
            includes a site the model already knows.
        ValueError
            When ``min_controls`` is not a positive integer or ``scale_prior_sd`` not a
            positive number.
        """
        from normative.adapt import fit_site_effects, new_site_codes

        who = self._who("adapt")
        self._check_fitted()
        checks.require_dataframe(local_controls, who, "local_controls")
        sps = float(scale_prior_sd) if isinstance(scale_prior_sd, (int, float, np.number)) else np.nan
        if not (np.isfinite(sps) and sps > 0):
            raise ValueError(f"{who}: scale_prior_sd must be a positive number; got {scale_prior_sd!r}.")
        age, male, _ = self._covariates(local_controls, who)
        Y = self._responses_matrix(local_controls, who)
        new_sites, code = new_site_codes(local_controls, "site", self.sites_,
                                         min_controls=min_controls, who=who,
                                         prior_name="the average training site")
        X0 = braincharts_design(age, male, np.full(len(age), -1), self.n_reference_sites_,
                                **{k: self.basis_[k] for k in ("xmin", "xmax", "nknots", "degree")})
        v = self.noise_var_[None, :] + self._quad(X0, np.full(len(age), -1))                      # (n, R)
        r = sinh_arcsinh_warp(Y, self.eps_[None, :], self.log_delta_[None, :]) - X0 @ self.m_.T
        M = np.isfinite(r)
        n_missing = int((~M).sum())
        if n_missing:
            log.info("adapt: %d missing measure values ignored", n_missing)
        # in units of each measure's warped noise sd, so the Newton steps are well scaled
        u = np.sqrt(self.noise_var_)
        b_mean, b_sd = self.site_prior_
        eff = fit_site_effects(np.where(M, r, 0.0) / u, M.astype(float), code, len(new_sites),
                               loc=np.zeros_like(r), log_scale=0.5 * np.log(v / u ** 2),
                               loc_prior_mean=b_mean / u, loc_prior_sd=b_sd / u,
                               scale_prior_sd=np.full(len(u), sps), max_iter=max_iter,
                               tol=1e-16, ridge=0.0)
        if not bool(np.all(eff.converged)):
            log.warning("adapt: optimisation did not fully converge for some measures")
        new = copy.deepcopy(self)
        new.sites_ = list(self.sites_) + new_sites
        new.adapted_offset_ = np.vstack([self.adapted_offset_, eff.offset * u])
        new.adapted_log_scale_ = np.vstack([self.adapted_log_scale_, eff.log_scale])
        new.adapted_offset_var_ = np.vstack([self.adapted_offset_var_, eff.offset_var * u ** 2])
        new.adapted_log_scale_var_ = np.vstack([self.adapted_log_scale_var_, eff.log_scale_var])
        log.info("adapted %d new site(s) from %d local controls", len(new_sites), len(local_controls))
        return new

    # ------------------------------------------------------------- subset
    def subset(self, responses: Sequence[str]) -> BrainchartsModel:
        """Return a copy restricted to ``responses`` (FreeSurfer 7 or braincharts names).

        Each measure's model is independent, so the copy predicts exactly as the full
        model does on those measures (adapted sites included), and its data need only
        those columns. The input model is unchanged.

        Raises
        ------
        ColumnContractError
            When a name is not one of the model's measures (the message lists them all).
        """
        from normative.freesurfer import harmonise_region_names

        self._check_fitted()
        pos = {r: i for i, r in enumerate(self.responses_)}
        for i, mname in enumerate(self.measures_):
            pos.setdefault(mname, i)
        want = [str(r) for r in responses]
        idx, missing = [], []
        for r in want:
            i = pos.get(r, pos.get(harmonise_region_names(r)))
            (idx.append(i) if i is not None else missing.append(r))
        if missing:
            raise ColumnContractError(
                f"BrainchartsModel.subset: {len(missing)} of {len(want)} requested measures are "
                f"not in the model.\nMissing: {missing[:20]}{' ...' if len(missing) > 20 else ''}\n"
                f"The model holds {len(self.responses_)}: {list(self.responses_)[:20]}"
                f"{' ...' if len(self.responses_) > 20 else ''}. Import them with "
                "import_braincharts(zip_path, measures=[...]), or leave them out.")
        if len(set(idx)) != len(idx):
            raise ValueError(f"BrainchartsModel.subset: responses name the same measure twice: {want}")
        ix = np.asarray(idx, dtype=np.int64)
        new = copy.copy(self)
        new.responses_ = [self.responses_[i] for i in idx]
        new.measures_ = [self.measures_[i] for i in idx]
        for k in ("m", "cov", "noise_var", "eps", "log_delta", "y_mean", "y_sd", "n_train"):
            setattr(new, k + "_", np.array(getattr(self, k + "_")[ix]))
        for k in ("site_prior", "adapted_offset", "adapted_offset_var", "adapted_log_scale",
                  "adapted_log_scale_var"):
            setattr(new, k + "_", np.array(getattr(self, k + "_")[:, ix]))
        new.sites_ = list(self.sites_)
        return new

    @property
    def adapted_sites_(self) -> list[str]:
        """Sites added by :meth:`adapt` (after the training sites in ``sites_``)."""
        self._check_fitted()
        return list(self.sites_[self.n_reference_sites_:])

    # ------------------------------------------------------------- persistence
    def save(self, path):
        """Save to the folder ``path`` (JSON + npz, no pickle)."""
        self._check_fitted()
        meta = {"params": self.get_params(), "responses": self.responses_,
                "measures": self.measures_, "sites": self.sites_,
                "n_reference_sites": self.n_reference_sites_, "basis": self.basis_,
                "age_range": list(self.age_range_), "source": self.source_}
        arrays = {k: getattr(self, k + "_") for k in (
            "m", "cov", "noise_var", "eps", "log_delta", "y_mean", "y_sd", "n_train",
            "site_prior", "adapted_offset", "adapted_offset_var", "adapted_log_scale",
            "adapted_log_scale_var")}
        return persist.save_state(path, kind="BrainchartsModel", meta=meta, arrays=arrays)

    @classmethod
    def load(cls, path) -> BrainchartsModel:
        """Load a model saved with :meth:`save` (verifies schema version and checksums)."""
        return persist.load(path, kind="BrainchartsModel")

    @classmethod
    def _from_state(cls, meta, arrays, files):
        obj = cls(**meta["params"])
        obj.responses_ = list(meta["responses"])
        obj.measures_ = list(meta["measures"])
        obj.sites_ = list(meta["sites"])
        obj.n_reference_sites_ = int(meta["n_reference_sites"])
        obj.basis_ = dict(meta["basis"])
        obj.age_range_ = tuple(float(a) for a in meta["age_range"])
        obj.source_ = meta["source"]
        R = len(obj.responses_)
        for k, v in arrays.items():
            a = np.asarray(v)
            if k.startswith("adapted_"):
                a = a.reshape(-1, R)
            setattr(obj, k + "_", a)
        D = 3 + obj.n_reference_sites_ + obj.basis_["nknots"] + obj.basis_["degree"] - 1
        n_adapted = len(obj.sites_) - obj.n_reference_sites_
        if (obj.m_.shape != (R, D) or obj.cov_.shape != (R, D, D)
                or obj.adapted_offset_.shape != (n_adapted, R)):
            raise SchemaError("BrainchartsModel.load: array shapes do not match the saved metadata.")
        return obj

    def __repr__(self) -> str:
        if not hasattr(self, "responses_"):
            return "BrainchartsModel(unfitted)"
        return (f"BrainchartsModel({len(self.responses_)} measures, {self.n_reference_sites_} "
                f"training sites + {len(self.sites_) - self.n_reference_sites_} adapted)")

