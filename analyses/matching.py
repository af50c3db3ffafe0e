"""1:1 nearest-neighbour propensity matching of controls to patients, with a balance table.

Follows MatchIt's defaults (Ho, Imai, King & Stuart 2011): a logistic propensity score
on the matching covariates, distance on the logit scale, greedy 1:1 matching without
replacement taking patients from the largest propensity down, and an optional caliper
in standard deviations of the distance. Matched controls must not have been used to
fit the normative reference model: pass ``reference_ids`` and any overlap is refused.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from normfuse.checks import (
    check_numeric,
    get_logger,
    log_dropped,
    require_columns,
    require_dataframe,
)
from normfuse.errors import ColumnContractError, ConvergenceWarning, DataDroppedWarning
from normfuse.results import ResultMixin

__all__ = ["MatchResult", "match_controls", "smd"]
_log = get_logger("analyses.matching")


@dataclass(frozen=True)
class MatchResult(ResultMixin):
    """Matched pairs and covariate balance.

    Attributes
    ----------
    pairs : DataFrame
        One row per matched pair: ``patient_id``, ``control_id``, ``distance``
        (|logit difference|), ``pair``.
    balance : DataFrame
        Per covariate (and ``distance``): mean_patients, mean_controls_before,
        mean_controls_after, smd_before, smd_after (pooled SD of the unmatched samples
        as denominator for both).
    unmatched : tuple
        Patient ids left without a control (caliper), counted in a warning.
    """

    pairs: pd.DataFrame
    balance: pd.DataFrame
    unmatched: tuple
    caliper: float | None
    n_patients: int
    n_controls: int
    _title = "1:1 nearest-neighbour propensity matching"

    def summary(self) -> pd.DataFrame:
        """The balance table (standardised mean differences before/after)."""
        return self.balance.copy()

    def _header_lines(self) -> list[str]:
        cal = "no caliper" if self.caliper is None else f"caliper {self.caliper:g} SD of logit"
        return [f"{len(self.pairs)} pairs from {self.n_patients} patients and {self.n_controls} "
                f"controls; {len(self.unmatched)} patients unmatched; {cal}"]

    def matched(self, patients: pd.DataFrame, controls: pd.DataFrame, id_col: str | None = None,
                group_col: str = "group") -> pd.DataFrame:
        """Stack matched patients and controls (group 'patient'/'control', with ``pair``)."""
        def take(df, ids, label):
            key = df.index if id_col is None else pd.Index(df[id_col])
            out = df.iloc[key.get_indexer(ids)].copy()
            out[group_col] = label
            out["pair"] = self.pairs["pair"].to_numpy()
            return out
        return pd.concat([take(patients, self.pairs["patient_id"], "patient"),
                          take(controls, self.pairs["control_id"], "control")])

    def plot(self, ax=None, **kwargs):
        """Balance (Love) plot of |SMD| before and after (see :func:`analyses.plotting.balance_plot`)."""
        from analyses.plotting import balance_plot

        return balance_plot(self, ax=ax, **kwargs)


def smd(x_t: np.ndarray, x_c: np.ndarray, sd: float | None = None) -> float:
    """Standardised mean difference (mean_t - mean_c) / sd, sd defaulting to the pooled SD."""
    if sd is None:
        sd = np.sqrt((np.var(x_t, ddof=1) + np.var(x_c, ddof=1)) / 2)
    return float((np.mean(x_t) - np.mean(x_c)) / sd) if sd > 0 else 0.0


def _encode(df: pd.DataFrame, on: Sequence[str], who: str) -> np.ndarray:
    cols = []
    for c in on:
        s = df[c]
        if c == "sex" or not pd.api.types.is_numeric_dtype(s):
            vals = s.astype("string")
            bad = ~vals.isin(["F", "M"]) | vals.isna()
            if bad.any():
                i = int(np.flatnonzero(bad.to_numpy())[0])
                raise ColumnContractError(
                    f"{who}: column {c!r} must hold 'F'/'M' (or be numeric); row {df.index[i]!r} "
                    f"holds {s.iloc[i]!r}. Recode it, or drop rows with missing sex first.")
            cols.append((vals == "M").to_numpy(dtype=float))
        else:
            cols.append(check_numeric(df, [c], who)[:, 0])
    return np.column_stack(cols)


def _logistic(X: np.ndarray, y: np.ndarray, names: Sequence[str], who: str,
              max_iter: int = 50) -> np.ndarray:
    """Unpenalised logistic regression by IRLS (R's glm binomial); refuses separation.

    Warns (:class:`~normfuse.errors.ConvergenceWarning`) when the Newton steps have not
    fallen below 1e-10 within ``max_iter`` iterations.
    """
    A = np.column_stack([np.ones(len(y)), (X - X.mean(0)) / np.where(X.std(0) > 0, X.std(0), 1)])
    b = np.zeros(A.shape[1])
    converged = False
    for _ in range(max_iter):
        eta = A @ b
        p = 1 / (1 + np.exp(-eta))
        w = p * (1 - p)
        H = A.T @ (A * w[:, None])
        step = np.linalg.solve(H + 1e-12 * np.eye(len(b)), A.T @ (y - p))
        b = b + step
        if np.max(np.abs(step)) < 1e-10:
            converged = True
            break
    eta = A @ b
    if np.max(np.abs(eta)) > 25:
        # find the covariate that separates
        sep = [n for j, n in enumerate(names)
               if X[y == 1, j].min() > X[y == 0, j].max() or X[y == 1, j].max() < X[y == 0, j].min()]
        raise ColumnContractError(
            f"{who}: the propensity model separates patients from controls"
            + (f" (no overlap in {sep})" if sep else "")
            + "; no control is comparable to some patients. Restrict both groups to the "
            "common range of the covariates, or match on fewer covariates.")
    if not converged:
        warnings.warn(
            f"{who}: the propensity model (logistic IRLS on {list(names)}) did not converge "
            f"within {max_iter} iterations (last step {float(np.max(np.abs(step))):.3g}); the "
            "scores and hence the matches may be off. Check for near-collinear covariates or "
            "match on fewer of them; silence with warnings.simplefilter('ignore', "
            "normfuse.errors.ConvergenceWarning).", ConvergenceWarning, stacklevel=3)
    return eta


def _find(parent: list, r: int) -> int:
    """Union-find root with path compression (``parent[r] == r`` marks a live slot)."""
    root = r
    while parent[root] != root:
        root = parent[root]
    while parent[r] != root:
        parent[r], r = root, parent[r]
    return root


def _greedy_match(ep: np.ndarray, ec: np.ndarray, seq: np.ndarray,
                  cal_abs: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy nearest-neighbour matching without replacement on sorted control scores.

    Patients ``seq[0], seq[1], ...`` in turn take the unused control with the smallest
    ``|ec - ep[i]|`` (ties: the smallest control position), unless that distance exceeds
    ``cal_abs``. Identical to scanning all unused controls per patient, in
    O((n_p + n_c) log n_c): controls are grouped by distinct score (runs, sorted), a run
    hands out its members in input order, and two union-find arrays skip exhausted runs to
    the left and right of each patient's ``np.searchsorted`` position. Greedy choice is
    sequential by definition (each pick depends on the earlier ones), so one cheap scalar
    step per patient remains.

    Returns patient positions, control positions (pairs in ``seq`` order) and the
    positions of unmatched patients.
    """
    order = np.argsort(ec, kind="stable")        # equal scores keep input order
    u, start, size = np.unique(ec[order], return_index=True, return_counts=True)
    m = len(u)
    ins = np.searchsorted(u, ep[seq], side="left").tolist()
    u_l, start_l, size_l, order_l = u.tolist(), start.tolist(), size.tolist(), order.tolist()
    ep_l = ep[seq].tolist()
    taken = [0] * m
    right = list(range(m + 1))     # right[r]: next live run >= r (m: none)
    left = list(range(m + 1))      # left[k]: next live run <= k - 1, stored as run + 1 (0: none)
    inf = float("inf")
    pi, ci, unmatched = [], [], []
    for i, x, k in zip(seq.tolist(), ep_l, ins, strict=True):
        r = _find(right, k)
        lk = _find(left, k) - 1
        d_r = abs(u_l[r] - x) if r < m else inf
        d_l = abs(u_l[lk] - x) if lk >= 0 else inf
        d = min(d_r, d_l)
        if not d < inf or (cal_abs is not None and d > cal_abs):
            unmatched.append(i)
            continue
        cands = []
        # every live run at exactly distance d (distinct scores can round to one distance)
        while r < m and abs(u_l[r] - x) == d:
            cands.append(r)
            r = _find(right, r + 1)
        while lk >= 0 and abs(u_l[lk] - x) == d:
            cands.append(lk)
            lk = _find(left, lk) - 1
        best = min(cands, key=lambda q: order_l[start_l[q] + taken[q]])
        pi.append(i)
        ci.append(order_l[start_l[best] + taken[best]])
        taken[best] += 1
        if taken[best] == size_l[best]:
            right[best] = best + 1
            left[best + 1] = best
    return np.array(pi, int), np.array(ci, int), np.array(unmatched, int)


def match_controls(patients: pd.DataFrame, controls: pd.DataFrame,
                   on: Sequence[str] = ("age", "sex", "icv"), caliper: float | None = None,
                   reference_ids: Sequence | None = None, id_col: str | None = None,
                   order: Literal["largest", "smallest", "data", "random"] = "largest",
                   random_state: int | None = None) -> MatchResult:
    """Match one control to each patient on a logistic propensity score (no replacement).

    Parameters
    ----------
    patients, controls : DataFrame
        One row per subject with the ``on`` columns (``sex`` as 'F'/'M'); ids are the
        index, or the ``id_col`` column. Not modified.
    on : sequence of str
        Matching covariates (default age, sex, ICV).
    caliper : float, optional
        Maximum |logit difference| in SDs of the logit propensity (MatchIt's
        ``std.caliper``); patients without a control inside it stay unmatched (counted
        in a :class:`~normfuse.errors.DataDroppedWarning`).
    reference_ids : sequence, optional
        Ids of the controls used to fit the normative reference model. Any candidate
        control among them raises: a control in the reference fit has Z-scores shrunk
        toward 0, which biases every patient-control comparison.
    order : {"largest", "smallest", "data", "random"}
        Order in which patients pick controls (MatchIt's ``m.order``).

    Returns
    -------
    MatchResult
    """
    who = "match_controls"
    require_dataframe(patients, who, "patients")
    require_dataframe(controls, who, "controls")
    need = list(on) + ([id_col] if id_col else [])
    require_columns(patients, need, who + " (patients)")
    require_columns(controls, need, who + " (controls)")
    pid = patients.index if id_col is None else pd.Index(patients[id_col])
    cid = controls.index if id_col is None else pd.Index(controls[id_col])
    for name, ids in (("patients", pid), ("controls", cid)):
        if ids.has_duplicates:
            raise ColumnContractError(f"{who}: {name} ids must be unique; duplicated: "
                                      f"{ids[ids.duplicated()].unique()[:10].tolist()}")
    if reference_ids is not None:
        overlap = cid.intersection(pd.Index(reference_ids))
        if len(overlap):
            raise ColumnContractError(
                f"{who}: {len(overlap)} candidate controls were used to fit the normative "
                f"reference model: {overlap[:10].tolist()}. Their deviations are not "
                "out-of-sample. Remove them from controls (controls.drop(index=...)) or refit "
                "the normative model without them.")
    if len(controls) < len(patients):
        warnings.warn(f"{who}: fewer controls ({len(controls)}) than patients ({len(patients)}); "
                      "some patients will stay unmatched.", DataDroppedWarning, stacklevel=2)
    Xp, Xc = _encode(patients, on, who), _encode(controls, on, who)
    X = np.vstack([Xp, Xc])
    y = np.r_[np.ones(len(Xp)), np.zeros(len(Xc))]
    eta = _logistic(X, y, list(on), who)
    ep, ec = eta[: len(Xp)], eta[len(Xp):]
    cal_abs = None if caliper is None else float(caliper) * float(np.std(eta, ddof=1))
    if order == "largest":
        seq = np.argsort(-ep, kind="stable")
    elif order == "smallest":
        seq = np.argsort(ep, kind="stable")
    elif order == "random":
        seq = np.random.default_rng(random_state).permutation(len(ep))
    elif order == "data":
        seq = np.arange(len(ep))
    else:
        raise ValueError(f"{who}: order={order!r}; expected 'largest', 'smallest', 'data' or 'random'.")
    pi, ci, um = _greedy_match(ep, ec, seq, cal_abs)
    unmatched = pid[um].tolist()
    keep = np.argsort(pi, kind="stable")           # pairs in patients' input order
    pi, ci = pi[keep], ci[keep]
    pairs = pd.DataFrame({"patient_id": pid[pi].to_numpy(), "control_id": cid[ci].to_numpy(),
                          "distance": np.abs(ep[pi] - ec[ci]), "pair": np.arange(len(pi))})
    if unmatched:
        log_dropped(_log, len(unmatched), "patients", f"{who}: no control left or none within the caliper")
        why = "no control left" if caliper is None else f"no control within the caliper ({caliper} SD)"
        warnings.warn(f"{who}: {len(unmatched)} of {len(ep)} patients have {why} and stay "
                      f"unmatched: {unmatched[:10]}.",
                      DataDroppedWarning, stacklevel=2)
    rows = []
    names = list(on) + ["distance"]
    Xp2, Xc2 = np.column_stack([Xp, ep]), np.column_stack([Xc, ec])
    for j in range(len(names)):
        sd = np.sqrt((np.var(Xp2[:, j], ddof=1) + np.var(Xc2[:, j], ddof=1)) / 2)
        after_c = Xc2[ci, j] if len(ci) else np.array([np.nan])
        after_p = Xp2[pi, j] if len(pi) else np.array([np.nan])
        rows.append({"mean_patients": Xp2[:, j].mean(), "mean_controls_before": Xc2[:, j].mean(),
                     "mean_controls_after": after_c.mean(),
                     "smd_before": smd(Xp2[:, j], Xc2[:, j], sd),
                     "smd_after": smd(after_p, after_c, sd)})
    bal = pd.DataFrame(rows, index=pd.Index([("sex (M)" if n == "sex" else n) for n in names],
                                            name="covariate"))
    return MatchResult(pairs=pairs, balance=bal, unmatched=tuple(unmatched), caliper=caliper,
                       n_patients=len(patients), n_controls=len(controls))
