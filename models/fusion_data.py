"""Inputs of the fusion network: a validated, frozen container of per-modality arrays.

:class:`FusionData` holds, for ``n`` patients (rows, in a fixed order):

* **static modalities** -- ``(n, d)`` float32 arrays, one per modality, e.g. ``dev``
  (normative Z vector + critical-deviation counts), ``txt`` (a note embedding),
  ``demo`` (demographics);
* **sequence modalities** -- one per EHR table (``lab``, ``vital``, ``med``): padded
  ``(n, T, v)`` float32 arrays with ``(n, T)`` boolean row masks (True = a real time
  window), as produced by the EHR sequencer;
* a ``(n, M)`` boolean **presence** mask over the ``M`` modalities (static first, then
  sequences, in the order given);
* ``patient_id`` -- one id per row (ids may repeat when a patient has several index
  dates; the inner validation split of the network groups by it).

Missing data rules (documented contract, applied on construction):

* a static row that is entirely NaN means the patient lacks that modality
  (presence becomes False); a row with *some* NaN or any infinity is an error naming
  the modality, column and patient (impute first, or pass ``impute="zero"``);
* a sequence with no True row-mask entry means the patient lacks that table; values in
  masked-out rows are ignored (non-finite ones are set to 0); NaN inside an observed
  row is an error (or 0 with ``impute="zero"``, counted and logged);
* values of absent modalities are kept when finite (the network never reads them),
  non-finite ones are replaced by 0;
* a modality absent for every patient is dropped with a
  :class:`~normfuse.errors.DataDroppedWarning` (``drop_empty=True``);
* a patient with no modality at all is an error naming the patient ids.

This module imports numpy and pandas only, so building inputs never loads torch.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from normfuse import checks
from normfuse.contracts import MODALITY_PREFIXES
from normfuse.errors import ColumnContractError, DataDroppedWarning

__all__ = ["FusionData", "simulate_fusion_data", "SEQUENCE_TABLES"]

_log = checks.get_logger("models.fusion")

#: The EHR tables the sequencer produces, in their default order.
SEQUENCE_TABLES = ("lab", "vital", "med")

Impute = Literal["raise", "zero"]


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def _py(v):
    """A numpy scalar as the Python value it holds (for readable messages)."""
    return v.item() if isinstance(v, np.generic) else v


def _fmt_ids(ids: np.ndarray, limit: int = 10) -> str:
    ids = list(ids)
    more = f" ... and {len(ids) - limit} more" if len(ids) > limit else ""
    return repr([_py(x) for x in ids[:limit]]) + more


@dataclass(frozen=True, eq=False)
class FusionData:
    """Validated per-modality arrays for the fusion network (see the module docstring).

    Parameters
    ----------
    patient_id : array-like of shape (n,)
        One id per row; the row order is the order of every output.
    static : mapping of str to array of shape (n, d)
        Static modalities by name. Entirely-NaN rows mark an absent modality.
    sequences : mapping of str to array of shape (n, T, v)
        Sequence modalities (EHR tables) by name, padded along T.
    row_masks : mapping of str to bool array of shape (n, T)
        For each sequence modality, True where a time row holds data. Defaults to
        "every row whose values are not all NaN".
    presence : bool array of shape (n, M), optional
        Extra presence information (False = absent), combined with what the NaN rows
        and row masks imply. Columns follow ``modalities`` (static, then sequences).
    feature_names : mapping of str to sequence of str, optional
        Column (static) or variable (sequence) names per modality, used in messages
        and attributions. Default ``"<modality>_<j>"``.
    impute : {"raise", "zero"}
        What to do with NaN inside a present static row or an observed sequence row.
    drop_empty : bool
        Drop (with a DataDroppedWarning) modalities that no patient has.

    Attributes
    ----------
    modalities : tuple of str
        Modality names, static first, then sequences.
    presence : ndarray of bool, shape (n, M)
        The combined presence mask.

    Examples
    --------
    >>> import numpy as np
    >>> d = FusionData(patient_id=np.array(["p1", "p2"]),
    ...                static={"dev": np.array([[0.5, -1.0], [np.nan, np.nan]]),
    ...                        "demo": np.array([[34.0], [51.0]])})
    >>> d.modalities, d.presence.tolist()
    (('dev', 'demo'), [[True, True], [False, True]])
    """

    patient_id: np.ndarray
    static: Mapping[str, np.ndarray] = field(default_factory=dict)
    sequences: Mapping[str, np.ndarray] = field(default_factory=dict)
    row_masks: Mapping[str, np.ndarray] | None = None
    presence: np.ndarray | None = None
    feature_names: Mapping[str, Sequence[str]] | None = None
    impute: Impute = "raise"
    drop_empty: bool = True

    # ------------------------------------------------------------------ validation
    def __post_init__(self) -> None:
        who = "FusionData"
        if self.impute not in ("raise", "zero"):
            raise ValueError(f"{who}: got impute={self.impute!r}; expected 'raise' or 'zero'.")
        pid = np.asarray(self.patient_id)
        if pid.ndim != 1:
            raise ValueError(f"{who}: patient_id must be 1-D, got shape {pid.shape}.")
        n = len(pid)
        if n == 0:
            raise ValueError(f"{who}: no patients (patient_id is empty).")
        if pid.dtype.kind == "f" and np.isnan(pid).any():
            raise ValueError(f"{who}: patient_id holds NaN at row {int(np.flatnonzero(np.isnan(pid))[0])}.")
        overlap = set(self.static) & set(self.sequences)
        if overlap:
            raise ValueError(f"{who}: modality names used both as static and sequence: {sorted(overlap)}.")
        if not self.static and not self.sequences:
            raise ValueError(f"{who}: no modality given; pass static=... and/or sequences=....")
        names_in = dict(self.feature_names or {})
        row_masks_in = dict(self.row_masks or {})
        unknown = set(row_masks_in) - set(self.sequences)
        if unknown:
            raise ValueError(f"{who}: row_masks given for unknown sequence modalities {sorted(unknown)}.")

        static: dict[str, np.ndarray] = {}
        sequences: dict[str, np.ndarray] = {}
        masks: dict[str, np.ndarray] = {}
        pres: dict[str, np.ndarray] = {}
        fnames: dict[str, tuple[str, ...]] = {}

        for m, arr in self.static.items():
            x = np.array(arr, dtype=np.float64, copy=True)
            if x.ndim == 1:
                x = x[:, None]
            if x.ndim != 2 or x.shape[0] != n:
                raise ValueError(
                    f"{who}: static modality {m!r} must have shape (n_patients={n}, d), got {np.shape(arr)}."
                )
            cols = self._names(names_in, m, x.shape[1])
            nan = np.isnan(x)
            absent = nan.all(axis=1)
            checks.check_no_inf(x, cols, f"{who} (modality {m!r})", pid, at="for patient {!r}",
                                hint="Replace infinities (e.g. clip) or set the row to NaN to "
                                     "mark the modality absent.")
            partial = nan & ~absent[:, None]
            if partial.any():
                if self.impute == "raise":
                    i, j = (int(v[0]) for v in np.nonzero(partial))
                    raise ColumnContractError(
                        f"{who}: modality {m!r}, column {cols[j]!r} is NaN for patient {_py(pid[i])!r} "
                        f"({int(partial.sum())} NaN cells in rows that are otherwise present). "
                        "Try 1) imputing them, 2) FusionData(..., impute='zero'), or 3) setting "
                        "the whole row to NaN to mark the modality absent for that patient."
                    )
                _log.info("%s: imputed %d NaN cells of modality %r with 0", who, int(partial.sum()), m)
            x[nan] = 0.0
            static[m] = _readonly(x.astype(np.float32))
            pres[m] = ~absent
            fnames[m] = cols

        for m, arr in self.sequences.items():
            x = np.array(arr, dtype=np.float64, copy=True)
            if x.ndim != 3 or x.shape[0] != n:
                raise ValueError(
                    f"{who}: sequence modality {m!r} must have shape (n_patients={n}, T, v), "
                    f"got {np.shape(arr)}."
                )
            cols = self._names(names_in, m, x.shape[2])
            if m in row_masks_in:
                rm = np.asarray(row_masks_in[m])
                if rm.shape != x.shape[:2]:
                    raise ValueError(
                        f"{who}: row mask of {m!r} must have shape {x.shape[:2]}, got {rm.shape}."
                    )
                if rm.dtype != bool:
                    if not np.isin(rm, (0, 1)).all():
                        raise ValueError(f"{who}: row mask of {m!r} must be boolean (or 0/1).")
                    rm = rm.astype(bool)
                rm = rm.copy()
            else:
                rm = ~np.isnan(x).all(axis=2)
            observed = np.broadcast_to(rm[:, :, None], x.shape)
            checks.check_no_inf(x, cols, f"{who} (modality {m!r})", pid, mask=observed,
                                at="for patient {!r} at time row {}",
                                hint="Replace infinities in observed rows (e.g. clip), or set "
                                     "the row mask False for those rows.")
            bad = np.isnan(x) & observed
            if bad.any():
                if self.impute == "raise":
                    i, t, j = (int(v[0]) for v in np.nonzero(bad))
                    raise ColumnContractError(
                        f"{who}: modality {m!r}, variable {cols[j]!r} is NaN for patient {_py(pid[i])!r} "
                        f"at time row {t} ({int(bad.sum())} NaN cells in observed rows). Try 1) "
                        "imputing (e.g. carry forward) in the sequencer, 2) FusionData(..., "
                        "impute='zero'), or 3) setting the row mask False for those rows."
                    )
                _log.info("%s: imputed %d NaN cells of modality %r with 0", who, int(bad.sum()), m)
            x[~np.isfinite(x)] = 0.0
            sequences[m] = _readonly(x.astype(np.float32))
            masks[m] = _readonly(rm)
            pres[m] = rm.any(axis=1)
            fnames[m] = cols

        order = [*static, *sequences]
        presence = np.column_stack([pres[m] for m in order])
        if self.presence is not None:
            given = np.asarray(self.presence)
            if given.shape != (n, len(order)):
                raise ValueError(
                    f"{who}: presence must have shape (n_patients, n_modalities) = {(n, len(order))} "
                    f"with columns {order}, got {given.shape}."
                )
            presence &= given.astype(bool)

        if self.drop_empty:
            empty = [m for k, m in enumerate(order) if not presence[:, k].any()]
            if empty:
                msg = (
                    f"{who}: dropped {len(empty)} modalities absent for every patient: {empty}. "
                    "Silence with warnings.filterwarnings('ignore', category=DataDroppedWarning)."
                )
                warnings.warn(msg, DataDroppedWarning, stacklevel=3)
                checks.log_dropped(_log, len(empty), "modalities", f"absent for every patient: {empty}")
                keep = [k for k, m in enumerate(order) if m not in empty]
                presence = presence[:, keep]
                for m in empty:
                    static.pop(m, None)
                    sequences.pop(m, None)
                    masks.pop(m, None)
                    fnames.pop(m, None)
                order = [*static, *sequences]
                if not order:
                    raise ValueError(f"{who}: every modality is absent for every patient.")

        none = ~presence.any(axis=1)
        if none.any():
            raise ValueError(
                f"{who}: {int(none.sum())} patients have no modality at all: {_fmt_ids(pid[none])}. "
                "Remove them before building FusionData (the network needs at least one input)."
            )

        set_ = object.__setattr__
        set_(self, "patient_id", _readonly(pid.copy()))
        set_(self, "static", static)
        set_(self, "sequences", sequences)
        set_(self, "row_masks", masks)
        set_(self, "presence", _readonly(presence))
        set_(self, "feature_names", fnames)

    @staticmethod
    def _names(names: Mapping[str, Sequence[str]], m: str, d: int) -> tuple[str, ...]:
        if m not in names:
            return tuple(f"{m}_{j}" for j in range(d))
        cols = tuple(str(c) for c in names[m])
        if len(cols) != d:
            raise ValueError(f"FusionData: feature_names[{m!r}] has {len(cols)} names for {d} columns.")
        return cols

    # ------------------------------------------------------------------ views
    @property
    def modalities(self) -> tuple[str, ...]:
        """Modality names: static first, then sequences (the columns of ``presence``)."""
        return (*self.static, *self.sequences)

    @property
    def n_patients(self) -> int:
        """Number of rows."""
        return len(self.patient_id)

    def __len__(self) -> int:
        return self.n_patients

    def spec(self) -> dict[str, dict]:
        """Shapes per modality: ``{"dev": {"kind": "static", "dim": 40}, "lab": {...}}``."""
        out: dict[str, dict] = {}
        for m, x in self.static.items():
            out[m] = {"kind": "static", "dim": int(x.shape[1])}
        for m, x in self.sequences.items():
            out[m] = {"kind": "sequence", "dim": int(x.shape[2]), "length": int(x.shape[1])}
        return out

    def subset(self, rows) -> FusionData:
        """Rows ``rows`` (integer positions or a boolean mask), keeping every modality."""
        idx = np.arange(self.n_patients)[np.asarray(rows)]
        return FusionData(
            patient_id=self.patient_id[idx],
            static={m: x[idx] for m, x in self.static.items()},
            sequences={m: x[idx] for m, x in self.sequences.items()},
            row_masks={m: x[idx] for m, x in self.row_masks.items()},
            presence=self.presence[idx],
            feature_names=self.feature_names,
            drop_empty=False,
        )

    # ------------------------------------------------------------------ builders
    @classmethod
    def from_frames(
        cls,
        table,
        sequences: Mapping[str, tuple] | None = None,
        *,
        id_col: str = "patient_id",
        prefixes: Mapping[str, str] | None = None,
        sequence_ids=None,
        variable_names: Mapping[str, Sequence[str]] | None = None,
        impute: Impute = "raise",
        drop_empty: bool = True,
    ) -> FusionData:
        """Build from an analysis table with prefixed columns plus padded EHR arrays.

        Parameters
        ----------
        table : DataFrame
            One row per patient (row order is kept). Columns starting with a modality
            prefix (``dev__``, ``txt__``, ``demo__``, ``ehr__``; see
            :data:`normfuse.contracts.MODALITY_PREFIXES`) become static modalities named
            by the prefix key (``dev``, ``txt``, ...). Other columns are ignored. Patient
            ids come from column ``id_col`` or, if absent, from the index.
        sequences : mapping of table name to ``(values, row_mask)`` or ``(values, row_mask, ids)``
            The EHR sequencer's output per table: float32 ``(n, T, v)`` and bool ``(n, T)``.
            With ids (or ``sequence_ids``, shared by every table), rows are reordered to
            the table's order; ids must be the same set as the table's.
        prefixes : mapping, optional
            Modality name -> column prefix; default MODALITY_PREFIXES.
        variable_names : mapping, optional
            Variable names of each sequence table.

        Raises
        ------
        ColumnContractError
            No prefixed column, a non-numeric column, NaN/inf (see FusionData), or patient
            ids that differ between the table and a sequence modality.
        """
        who = "FusionData.from_frames"
        checks.require_dataframe(table, who, "table")
        if id_col in table.columns:
            pid = table[id_col].to_numpy()
        else:
            pid = table.index.to_numpy()
        prefixes = dict(MODALITY_PREFIXES if prefixes is None else prefixes)
        static: dict[str, np.ndarray] = {}
        names: dict[str, tuple[str, ...]] = {}
        for m, pre in prefixes.items():
            cols = [c for c in table.columns if isinstance(c, str) and c.startswith(pre)]
            if not cols:
                continue
            static[m] = checks.check_numeric(table, cols, who, allow_nan=True)
            names[m] = tuple(cols)
        if not static and not sequences:
            raise ColumnContractError(
                f"{who}: no column carries a modality prefix {sorted(prefixes.values())} and no "
                f"sequences were given. Present: {list(map(str, table.columns))[:20]}. Rename "
                "feature columns with their modality prefix, e.g. 'dev__Left-Hippocampus'."
            )
        seqs: dict[str, np.ndarray] = {}
        masks: dict[str, np.ndarray] = {}
        for m, tup in (sequences or {}).items():
            if not isinstance(tup, (tuple, list)) or len(tup) not in (2, 3):
                raise TypeError(
                    f"{who}: sequences[{m!r}] must be (values, row_mask) or (values, row_mask, ids)."
                )
            vals, rm = np.asarray(tup[0]), np.asarray(tup[1])
            ids = tup[2] if len(tup) == 3 else sequence_ids
            if ids is not None:
                pos = _align_ids(pid, np.asarray(ids), m, who)
                vals, rm = vals[pos], rm[pos]
            seqs[m], masks[m] = vals, rm
            if variable_names and m in variable_names:
                names[m] = tuple(variable_names[m])
        return cls(
            patient_id=pid, static=static, sequences=seqs, row_masks=masks,
            feature_names=names, impute=impute, drop_empty=drop_empty,
        )


def _align_ids(target: np.ndarray, ids: np.ndarray, m: str, who: str) -> np.ndarray:
    """Positions ``pos`` such that ``ids[pos]`` equals ``target`` (error when sets differ)."""
    if ids.shape == target.shape and np.array_equal(ids.astype(str), target.astype(str)):
        return np.arange(len(ids))
    t_s, i_s = target.astype(str), ids.astype(str)
    missing = np.setdiff1d(t_s, i_s)
    extra = np.setdiff1d(i_s, t_s)
    if len(missing) or len(extra) or len(ids) != len(target):
        raise ColumnContractError(
            f"{who}: patient ids of modality {m!r} do not match the table's.\n"
            f"Missing from {m!r}: {_fmt_ids(missing)}\nUnexpected in {m!r}: {_fmt_ids(extra)}\n"
            "Build the sequences for exactly the table's patients (a patient without events "
            "gets an all-False row mask)."
        )
    if len(np.unique(i_s)) != len(i_s) or len(np.unique(t_s)) != len(t_s):
        raise ColumnContractError(
            f"{who}: patient ids of modality {m!r} repeat and are ordered differently from the "
            "table's, so rows cannot be aligned. Pass the sequences in the table's row order."
        )
    order = np.argsort(i_s, kind="stable")
    return order[np.searchsorted(i_s[order], t_s)].astype(np.int64)


def simulate_fusion_data(
    n_patients: int = 362,
    *,
    signal: str = "dev",
    effect: float = 1.5,
    n_dev: int = 40,
    n_txt: int = 64,
    n_demo: int = 5,
    tables: Sequence[str] = SEQUENCE_TABLES,
    n_steps: int = 64,
    n_vars: int = 10,
    missing_rate: float = 0.15,
    prevalence: float = 0.35,
    random_state: int = 0,
) -> tuple[FusionData, np.ndarray]:
    """Simulate fusion inputs with a planted signal in one modality.

    The outcome is ``y ~ Bernoulli(sigmoid(b0 + effect * s))`` with ``s`` a standardised
    linear score of the first 5 features of modality ``signal`` (for a sequence table: the
    mean over observed rows of its first 3 variables); every other modality is pure noise.
    Static modalities and tables other than ``signal`` are absent for a random
    ``missing_rate`` share of patients (never all of them for one patient); sequence
    lengths vary from 4 to ``n_steps`` rows. Shapes mimic the real pipeline: ``dev`` =
    Z vector + 3 counts, ``txt`` a note embedding, ``demo`` demographics.

    Returns
    -------
    data : FusionData
    y : ndarray of int, shape (n_patients,)
    """
    rng = np.random.default_rng(random_state)
    n = int(n_patients)
    z = rng.standard_normal((n, n_dev - 3))
    counts = np.column_stack([
        (np.abs(z) > 1.96).sum(1), (z < -1.96).sum(1), (z > 1.96).sum(1),
    ]).astype(float)
    static = {
        "dev": np.column_stack([z, counts]),
        "txt": rng.standard_normal((n, n_txt)),
        "demo": np.column_stack([
            rng.normal(40, 10, n), rng.integers(0, 2, n), rng.normal(0, 1, (n, n_demo - 2)),
        ]),
    }
    seqs: dict[str, np.ndarray] = {}
    masks: dict[str, np.ndarray] = {}
    for tname in tables:
        length = rng.integers(4, n_steps + 1, n)
        rm = np.arange(n_steps)[None, :] < length[:, None]
        x = rng.standard_normal((n, n_steps, n_vars)) + rng.standard_normal((n, 1, n_vars))
        x[~rm] = 0.0
        seqs[tname], masks[tname] = x.astype(np.float32), rm
    names = [*static, *seqs]
    absent = rng.random((n, len(names))) < missing_rate
    sig_k = names.index(signal)
    absent[:, sig_k] = False  # the signal carrier is always observed
    if signal in static:
        score = static[signal][:, :5].sum(1)
    else:
        x, rm = seqs[signal], masks[signal]
        score = (x[:, :, :3].sum(2) * rm).sum(1) / rm.sum(1)
    score = (score - score.mean()) / score.std()
    b0 = np.log(prevalence / (1 - prevalence))
    y = (rng.random(n) < 1 / (1 + np.exp(-(b0 + effect * score)))).astype(int)
    for k, m in enumerate(names):
        if m in static:
            static[m][absent[:, k]] = np.nan
        else:
            masks[m] = masks[m] & ~absent[:, k][:, None]
    data = FusionData(
        patient_id=np.array([f"P{i:05d}" for i in range(n)]),
        static=static, sequences=seqs, row_masks=masks,
    )
    return data, y
