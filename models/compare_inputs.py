"""Inputs of the model comparison: validation, sequence alignment, fold featurizers, planted data.

* :class:`FoldFeaturizer` -- a ``preprocessors`` hook for :func:`models.compare.compare_models`
  that fits the note embedder and the EHR featurizer on the *training* rows of each fold
  and adds their ``txt__``/``ehr__`` columns to both parts;
* :func:`simulate_comparison_table` -- an analysis table with planted informativeness.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.special import expit

from normfuse.checks import check_numeric, get_logger
from normfuse.contracts import MODALITY_PREFIXES
from normfuse.errors import ColumnContractError

__all__ = ["FoldFeaturizer", "simulate_comparison_table"]

_log = get_logger("models.compare")


# =========================================================================== inputs
def _check_table(table: pd.DataFrame, who: str) -> dict[str, list[str]]:
    """Feature columns per modality; non-numeric or infinite cells raise naming the column."""
    cols: dict[str, list[str]] = {}
    for m, pre in MODALITY_PREFIXES.items():
        cols[m] = [c for c in table.columns if isinstance(c, str) and c.startswith(pre)]
    feats = [c for cs in cols.values() for c in cs]
    if not feats:
        raise ColumnContractError(
            f"{who}: no feature column carries a modality prefix {sorted(MODALITY_PREFIXES.values())}.\n"
            f"Present: {list(map(str, table.columns))[:20]}\n"
            "Build the analysis table with features.cohort.build_cohort_table, or rename feature "
            "columns with their modality prefix (e.g. 'dev__Left-Hippocampus')."
        )
    # non-numeric cells and +-inf raise naming column, row and value; NaN is handled downstream
    check_numeric(table, feats, who, allow_nan=True)
    return cols


def _sequences(sequences, table: pd.DataFrame, keep: np.ndarray, id_col: str, who: str) -> dict:
    """Validate and align the EHR sequences to the table's rows; return name -> (X, mask)."""
    from models.fusion_data import _align_ids

    if sequences is None:
        return {}
    if hasattr(sequences, "X") and hasattr(sequences, "mask"):
        sequences = {"ehr": (sequences.X, sequences.mask, getattr(sequences, "patient_id", None))}
    if not isinstance(sequences, Mapping):
        raise TypeError(f"{who}: sequences must be a mapping table name -> (X, mask[, ids]) or an "
                        f"EHRSequences, got {type(sequences).__name__}.")
    pid = table[id_col].to_numpy() if id_col in table.columns else table.index.to_numpy()
    out = {}
    for name, tup in sequences.items():
        if not (isinstance(name, str) and name.isidentifier()) or name in ("dev", "txt", "demo"):
            raise ValueError(f"{who}: sequence name {name!r} must be an identifier other than "
                             "'dev', 'txt', 'demo' (e.g. 'lab', 'vital', 'med' or 'ehr').")
        if not isinstance(tup, (tuple, list)) or len(tup) not in (2, 3):
            raise TypeError(f"{who}: sequences[{name!r}] must be (X, mask) or (X, mask, patient_ids).")
        x, rm = np.asarray(tup[0]), np.asarray(tup[1])
        ids = tup[2] if len(tup) == 3 else None
        if x.ndim != 3 or rm.shape != x.shape[:2]:
            raise ValueError(f"{who}: sequences[{name!r}] needs X of shape (n, T, V) and mask (n, T); "
                             f"got {x.shape} and {rm.shape}.")
        if ids is not None:
            pos = _align_ids(pid, np.asarray(ids), name, who)
            x, rm = x[pos], rm[pos]
        elif len(x) != len(table):
            raise ColumnContractError(
                f"{who}: sequences[{name!r}] has {len(x)} rows, the table {len(table)}. Pass "
                "(X, mask, patient_ids) so rows can be matched, or build the sequences from the "
                "table's own index rows (EHRFeaturizer.sequences(table[['patient_id', 'index_date']]))."
            )
        out[name] = (x[keep], rm[keep].astype(bool))
    return out


def _available(t: pd.DataFrame, cols: dict[str, list[str]], seqs: dict) -> tuple[dict, dict]:
    """Split modalities into available (some value present) and missing for everyone (reason)."""
    avail, missing = {}, {}
    for m, cs in cols.items():
        if not cs:
            missing[m] = f"no column starts with {MODALITY_PREFIXES[m]!r}"
        elif not t[cs].notna().to_numpy().any():
            missing[m] = f"every {MODALITY_PREFIXES[m]}* value is missing"
        else:
            avail[m] = cs
    if seqs:
        present = any(rm.any() for _, rm in seqs.values())
        if present:
            missing.pop("ehr", None)
        elif "ehr" not in avail:
            missing["ehr"] = "no observed row in any EHR sequence"
    return avail, missing


# =========================================================================== planted data
def simulate_comparison_table(
    n_patients: int = 362,
    *,
    signal: Sequence[str] = ("dev", "txt"),
    effect: float = 1.5,
    n_dev: int = 30,
    n_ehr: int = 20,
    n_txt: int = 16,
    prevalence: float = 0.35,
    missing_rate: float = 0.1,
    random_state: int = 0,
) -> pd.DataFrame:
    """An analysis table with planted informativeness: only the ``signal`` modalities predict ``y``.

    ``dev``: a latent disease burden ``b ~ Exponential(1)`` lowers 10 of ``n_dev``
    regional Z scores (``z = -b + e``); ``dev__n_crit`` counts ``|z| > 1.96`` over all
    regions (with ``dev__n_crit_neg``/``_pos``); its cue is ``b - 1`` (mean 0, SD 1). ``txt``: a note cue ``c ~ N(0, 1)`` loads on 4 of
    ``n_txt`` embedding dimensions. ``ehr``: ``n_ehr`` summary features, pure noise unless
    ``"ehr"`` is in ``signal`` (then a cue loads on 4 of them). ``demo``: age and sex, noise.
    ``logit P(y) = b0 + effect * sum of the signal cues``. A ``missing_rate`` share of
    patients lack their notes (``txt__`` all NaN) and, separately, their EHR summaries.

    Returns
    -------
    DataFrame with ``patient_id``, the features and ``y`` (0/1), one row per patient.
    """
    rng = np.random.default_rng(random_state)
    n = int(n_patients)
    burden = rng.exponential(1.0, n)  # >= 0: disease lowers volumes, never raises them
    cue = {"dev": burden - 1.0, "ehr": rng.standard_normal(n), "txt": rng.standard_normal(n)}
    z = rng.standard_normal((n, n_dev))
    if "dev" in signal:
        z[:, :10] -= burden[:, None]
    crit_neg, crit_pos = (z < -1.96).sum(1), (z > 1.96).sum(1)
    txt = rng.standard_normal((n, n_txt))
    if "txt" in signal:
        txt[:, :4] += 0.9 * cue["txt"][:, None]
    ehr = rng.standard_normal((n, n_ehr))
    if "ehr" in signal:
        ehr[:, :4] += 0.9 * cue["ehr"][:, None]
    lin = np.log(prevalence / (1 - prevalence)) + effect * sum(cue[m] for m in signal)
    y = (rng.random(n) < expit(lin)).astype(int)
    cols = {"patient_id": [f"P{i:05d}" for i in range(n)]}
    cols.update({f"dev__Z{j:02d}": z[:, j] for j in range(n_dev)})
    cols.update({"dev__n_crit": (crit_neg + crit_pos).astype(float), "dev__n_crit_neg": crit_neg.astype(float),
                 "dev__n_crit_pos": crit_pos.astype(float)})
    cols.update({f"ehr__v{j:02d}__mean_365d": ehr[:, j] for j in range(n_ehr)})
    cols.update({f"txt__{j}": txt[:, j] for j in range(n_txt)})
    cols.update({"demo__age": rng.normal(40, 10, n), "demo__sex": rng.integers(0, 2, n).astype(float)})
    out = pd.DataFrame(cols)
    no_txt = rng.random(n) < missing_rate
    no_ehr = rng.random(n) < missing_rate
    out.loc[no_txt, [f"txt__{j}" for j in range(n_txt)]] = np.nan
    out.loc[no_ehr, [f"ehr__v{j:02d}__mean_365d" for j in range(n_ehr)]] = np.nan
    out["y"] = y
    return out


# =========================================================================== fold featurizers
class FoldFeaturizer:
    """A ``preprocessors`` hook fitting the note and EHR featurizers inside each training fold.

    Called by :func:`models.compare.compare_models` as ``hook(train_rows, test_rows)``:
    fits a fresh clone of ``note_embedder`` (default ``NoteEmbedder("tfidf")``) on the
    notes of the training patients dated strictly before their index dates, and a fresh
    clone of ``ehr_featurizer`` (default ``EHRFeaturizer()``) on the training patients'
    events dated before their latest index date; then adds the ``txt__`` embedding and
    the ``ehr__`` summaries to both parts (replacing columns of those prefixes already
    in the table). Test patients' notes and events are only ever *transformed*.

    Parameters
    ----------
    notes : DataFrame, optional
        ``patient_id``, ``time``, ``text`` (all patients); None leaves ``txt__`` as is.
    events : DataFrame, optional
        EHR events (``patient_id``, ``encounter_id``, ``time``, ``table``, ``variable``,
        ``value``); None leaves ``ehr__`` as is.
    encounters : DataFrame, optional
        Encounters for the EHR windows.
    note_embedder, ehr_featurizer : unfitted estimators, optional
        Templates; cloned per fold (scikit-learn ``clone``), never fitted themselves.
    index_cols : (str, str)
        Patient id and index-date columns of the analysis table.

    Attributes
    ----------
    fitted_ : list of dict
        Per call, ``{"train_ids", "note_embedder", "ehr_featurizer"}`` (for audits: the
        fitted vocabulary and kept variables come from the training patients only).

    Notes
    -----
    Padded EHR *sequences* for the fusion network are passed to ``compare_models`` whole
    (``sequences=``): their per-variable min-max scaling may come from all patients, which
    leaks nothing into the network because the network re-standardises every input with
    training-fold means and SDs (an affine rescaling fitted anywhere is undone).
    """

    def __init__(self, *, notes: pd.DataFrame | None = None, events: pd.DataFrame | None = None,
                 encounters: pd.DataFrame | None = None, note_embedder=None, ehr_featurizer=None,
                 index_cols: tuple[str, str] = ("patient_id", "index_date")):
        if notes is None and events is None:
            raise ValueError("FoldFeaturizer: pass notes=... and/or events=...; with neither there is "
                             "nothing to fit inside the folds.")
        self.notes = notes
        self.events = events
        self.encounters = encounters
        self.note_embedder = note_embedder
        self.ehr_featurizer = ehr_featurizer
        self.index_cols = tuple(index_cols)
        self.fitted_: list[dict] = []
        self.__name__ = "FoldFeaturizer"

    def _index(self, rows: pd.DataFrame) -> pd.DataFrame:
        from normfuse.checks import require_columns

        pid, idate = self.index_cols
        require_columns(rows, [pid, idate], "FoldFeaturizer",
                        hint="The analysis table needs the patient id and index date of each row.")
        return pd.DataFrame({"patient_id": rows[pid].to_numpy(), "index_date": rows[idate].to_numpy()},
                            index=rows.index)

    def __call__(self, train_rows: pd.DataFrame, test_rows: pd.DataFrame):
        from sklearn.base import clone

        itr, ite = self._index(train_rows), self._index(test_rows)
        train_ids = pd.unique(itr["patient_id"].to_numpy())
        rec: dict = {"train_ids": train_ids, "note_embedder": None, "ehr_featurizer": None}
        out_tr, out_te = train_rows, test_rows
        if self.notes is not None:
            from features.notes import NoteEmbedder

            emb = clone(self.note_embedder) if self.note_embedder is not None else NoteEmbedder()
            nt = self.notes.loc[self.notes["patient_id"].isin(train_ids)]
            emb.fit(nt, index=itr)  # only notes dated before the training index dates
            out_tr = _replace(out_tr, emb.transform(self.notes, itr), "txt__")
            out_te = _replace(out_te, emb.transform(self.notes, ite), "txt__")
            rec["note_embedder"] = emb
        if self.events is not None:
            from features.ehr import EHRFeaturizer

            fz = clone(self.ehr_featurizer) if self.ehr_featurizer is not None else EHRFeaturizer()
            ev = self.events.loc[self.events["patient_id"].isin(train_ids)]
            last = itr.groupby("patient_id")["index_date"].max()
            t_ev = pd.to_datetime(ev["time"])
            lim = pd.to_datetime(ev["patient_id"].map(last))
            ev = ev.loc[(t_ev < lim).to_numpy()]
            enc = self.encounters
            fz.fit(ev, encounters=enc)
            out_tr = _replace(out_tr, fz.summaries(itr, events=self.events, encounters=enc), "ehr__")
            out_te = _replace(out_te, fz.summaries(ite, events=self.events, encounters=enc), "ehr__")
            rec["ehr_featurizer"] = fz
        self.fitted_.append(rec)
        return out_tr, out_te


def _replace(rows: pd.DataFrame, feats: pd.DataFrame, prefix: str) -> pd.DataFrame:
    """``rows`` without its ``prefix`` columns, plus ``feats`` (indexed like ``rows``)."""
    keep = [c for c in rows.columns if not (isinstance(c, str) and c.startswith(prefix))]
    feats = feats.set_axis(rows.index, axis=0)
    return pd.concat([rows[keep], feats], axis=1)
