"""The torch fusion network: one encoder per modality, four fusion strategies, a wrapper.

Network (:class:`FusionNet`, an ``nn.Module``)
-----------------------------------------------
* **Static encoders** (deviations = Z vector + counts, note embedding, demographics):
  standardise with training means/SDs (buffers), then ``Linear -> GELU -> Dropout ->
  Linear`` to an ``embed_dim`` vector.
* **Sequence encoders** (one per EHR table): the attention encoder of the MS multimodal
  paper. Each time row is embedded (``Linear -> GELU``); a 1-D convolution over the
  rows (kernel 3, then a 1x1 convolution) gives one score per row; a softmax over the
  observed rows turns the scores into weights and the embedding is the weighted sum of
  row embeddings (then ``Dropout -> Linear``). Padded rows get weight 0 and contribute
  nothing.
* **Fusion** (``strategy``):

  ``concat``
      joint fusion: embeddings of absent modalities are set to 0 and the presence
      indicators are appended; an MLP gives the logit.
  ``lstm``
      MedFuse: the modality embeddings (plus a learned modality-type vector) form a
      token sequence; absent modalities are *left out* of the sequence (present tokens
      are moved first and the batch is packed with ``pack_padded_sequence``), and the
      LSTM's last hidden state gives the logit.
  ``bigru_attention``
      the MS paper's decoder: a bidirectional GRU over the present modality rows (packed
      as for ``lstm``), a 1-D convolutional attention (1x1 kernels) giving one weight per
      row, softmax over present rows only, and a linear head on the weighted sum.
  ``late``
      one logistic head per modality; the logit is a weighted mean of the per-modality
      logits over the present modalities, with learned weights (softmax of learned
      scores, renormalised over what each patient has).

Training (:class:`FusionClassifier`)
------------------------------------
Mini-batches of tensors (no per-patient Python loop), AdamW, ``BCEWithLogitsLoss`` with
``pos_weight = n_neg / n_pos`` (``class_weight="balanced"``), modality dropout (each
present modality of a training row is hidden with probability ``modality_dropout``; at
least one always stays), early stopping on an inner validation split grouped by patient
and stratified by outcome, restoring the best epoch. CPU runs are seeded and
deterministic (``torch.use_deterministic_algorithms``; the global torch RNG state is
restored afterwards); on CUDA, training uses ``torch.autocast`` float16 with a gradient
scaler.

References
----------
Hayat N, Geras KJ, Shamout FE. MedFuse: Multi-modal fusion with clinical time-series data
and chest X-ray images. MLHC 2022 (PMLR 182).
Sundararajan M, Taly A, Yan Q. Axiomatic attribution for deep networks. ICML 2017.
"""
from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from sklearn.base import BaseEstimator
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from models.fusion_data import FusionData
from normfuse import checks, persist
from normfuse.device import resolve_device
from normfuse.errors import (
    ColumnContractError,
    ConvergenceWarning,
    DataDroppedWarning,
    SchemaError,
)
from normfuse.results import ResultMixin

__all__ = [
    "STRATEGIES",
    "FusionNet",
    "FusionClassifier",
    "FusionAttributions",
    "FusionData",
]

_log = checks.get_logger("models.fusion")

Strategy = Literal["concat", "lstm", "bigru_attention", "late"]
STRATEGIES: tuple[str, ...] = ("concat", "lstm", "bigru_attention", "late")
_MASK = -1e9


# ============================================================================ network
class StaticEncoder(nn.Module):
    """Standardise a static vector and map it to an embedding."""

    def __init__(self, dim: int, embed_dim: int, dropout: float):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))
        self.net = nn.Sequential(
            nn.Linear(dim, embed_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(embed_dim, embed_dim)
        )

    def forward(self, x: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        z = torch.where(present[:, None], (x - self.mean) / self.scale, 0.0)
        return self.net(z)


class SequenceAttentionEncoder(nn.Module):
    """Rows -> one embedding by convolutional attention over the observed rows."""

    def __init__(self, dim: int, embed_dim: int, dropout: float, kernel_size: int = 3):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))
        hidden = max(1, embed_dim // 2)
        self.row = nn.Sequential(nn.Linear(dim, embed_dim), nn.GELU())
        self.drop = nn.Dropout(dropout)  # on the pooled embedding: T times cheaper than per row
        self.score = nn.Sequential(
            nn.Conv1d(embed_dim, hidden, kernel_size, padding=kernel_size // 2),
            nn.Tanh(),
            nn.Conv1d(hidden, 1, 1),
        )
        self.out = nn.Linear(embed_dim, embed_dim)

    def forward(self, x, row_mask, present):
        valid = row_mask & present[:, None]  # (B, T)
        z = torch.where(valid[..., None], (x - self.mean) / self.scale, 0.0)
        h = self.row(z) * valid[..., None].to(z.dtype)  # (B, T, E)
        s = self.score(h.transpose(1, 2)).squeeze(1).float()  # (B, T)
        a = torch.softmax(s.masked_fill(~valid, _MASK), dim=1) * valid  # empty rows -> 0
        e = torch.einsum("bt,bte->be", a.to(h.dtype), h)
        return self.out(self.drop(e)), a


def _pack_present(tokens: torch.Tensor, presence: torch.Tensor):
    """Move present tokens first (stable) and pack them; absent ones are truly left out."""
    order = torch.argsort((~presence).to(torch.uint8), dim=1, stable=True)
    sorted_tokens = torch.gather(tokens, 1, order[..., None].expand(-1, -1, tokens.shape[2]))
    lengths = presence.sum(1)
    packed = pack_padded_sequence(
        sorted_tokens, lengths.cpu(), batch_first=True, enforce_sorted=False
    )
    return packed, order, lengths


class FusionNet(nn.Module):
    """Per-modality encoders plus one fusion strategy (see the module docstring).

    Parameters
    ----------
    spec : dict
        ``FusionData.spec()``: modality name -> ``{"kind": "static"|"sequence", "dim": d}``.
    strategy : {"concat", "lstm", "bigru_attention", "late"}
    embed_dim : int
        Size of every modality embedding.
    dropout : float
        Dropout inside encoders and heads.

    The forward pass takes lists of tensors in ``spec`` order and returns the logit
    ``(B,)`` and, for ``bigru_attention``/``late``, weights over modalities ``(B, M)``.
    """

    def __init__(self, spec: dict, strategy: Strategy = "lstm", embed_dim: int = 32,
                 dropout: float = 0.1):
        super().__init__()
        if strategy not in STRATEGIES:
            raise ValueError(f"Got strategy={strategy!r}; expected one of {STRATEGIES}.")
        bad = [m for m in spec if not m.isidentifier()]
        if bad:
            raise ValueError(f"FusionNet: modality names must be identifiers, got {bad}.")
        self.strategy = strategy
        self.static_names = [m for m in spec if spec[m]["kind"] == "static"]
        self.seq_names = [m for m in spec if spec[m]["kind"] == "sequence"]
        self.modalities = [*self.static_names, *self.seq_names]
        E, M = int(embed_dim), len(self.modalities)
        enc = {}
        for m in self.static_names:
            enc[m] = StaticEncoder(spec[m]["dim"], E, dropout)
        for m in self.seq_names:
            enc[m] = SequenceAttentionEncoder(spec[m]["dim"], E, dropout)
        self.encoders = nn.ModuleDict(enc)
        if strategy == "concat":
            self.head = nn.Sequential(
                nn.Linear(M * E + M, E), nn.GELU(), nn.Dropout(dropout), nn.Linear(E, 1)
            )
        elif strategy == "lstm":
            self.modality_embed = nn.Parameter(0.02 * torch.randn(M, E))
            self.rnn = nn.LSTM(E, E, batch_first=True)
            self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(E, 1))
        elif strategy == "bigru_attention":
            h = max(1, E // 2)
            self.modality_embed = nn.Parameter(0.02 * torch.randn(M, E))
            self.rnn = nn.GRU(E, h, batch_first=True, bidirectional=True)
            self.attention = nn.Sequential(nn.Conv1d(2 * h, h, 1), nn.Tanh(), nn.Conv1d(h, 1, 1))
            self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * h, 1))
        else:  # late
            self.late_weight = nn.Parameter(torch.randn(M, E) / math.sqrt(E))
            self.late_bias = nn.Parameter(torch.zeros(M))
            self.late_scores = nn.Parameter(torch.zeros(M))

    def embed(self, static, seqs, masks, presence) -> torch.Tensor:
        """Modality embeddings stacked as ``(B, M, E)`` in ``self.modalities`` order."""
        toks = []
        k = 0
        for m, x in zip(self.static_names, static, strict=True):
            toks.append(self.encoders[m](x, presence[:, k]))
            k += 1
        for m, x, rm in zip(self.seq_names, seqs, masks, strict=True):
            toks.append(self.encoders[m](x, rm, presence[:, k])[0])
            k += 1
        return torch.stack(toks, dim=1)

    def forward(self, static: Sequence[torch.Tensor], seqs: Sequence[torch.Tensor],
                masks: Sequence[torch.Tensor], presence: torch.Tensor):
        tok = self.embed(static, seqs, masks, presence)
        B, M, _ = tok.shape
        if self.strategy == "concat":
            pf = presence.to(tok.dtype)
            z = torch.cat([(tok * pf[..., None]).reshape(B, -1), pf], dim=1)
            return self.head(z).squeeze(1), None
        if self.strategy == "late":
            logits = torch.einsum("bme,me->bm", tok, self.late_weight.to(tok.dtype)).float()
            logits = logits + self.late_bias
            w = torch.softmax(self.late_scores.expand(B, M).masked_fill(~presence, _MASK), dim=1)
            w = w * presence
            return (w * torch.where(presence, logits, 0.0)).sum(1), w
        # the recurrent part is tiny (M tokens): run it in float32, outside autocast
        tok = tok.float() + self.modality_embed
        packed, order, lengths = _pack_present(tok, presence)
        with torch.autocast(device_type=tok.device.type, enabled=False):
            if self.strategy == "lstm":
                _, (h_n, _) = self.rnn(packed)
                return self.head(h_n[-1]).squeeze(1), None
            out, _ = self.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=M)  # (B, M, 2h)
        valid = torch.arange(M, device=tok.device)[None, :] < lengths.to(tok.device)[:, None]
        s = self.attention(out.transpose(1, 2)).squeeze(1).float()
        a = torch.softmax(s.masked_fill(~valid, _MASK), dim=1) * valid
        ctx = torch.einsum("bm,bmh->bh", a.to(out.dtype), out)
        w = torch.zeros_like(a).scatter(1, order, a)  # back to modality order
        return self.head(ctx).squeeze(1), w


# ============================================================================ results
@dataclass(frozen=True)
class FusionAttributions(ResultMixin):
    """Integrated Gradients attributions of the logit to every input feature.

    Attributes
    ----------
    values : dict of str to ndarray
        Per modality, an array shaped like the input: ``(n, d)`` or ``(n, T, v)``.
        Absent modalities and padded rows get 0.
    feature_names : dict of str to tuple of str
    patient_id : ndarray
    convergence_delta : ndarray of shape (n,)
        Completeness error: sum of attributions minus (logit(x) - logit(baseline)).
    method : str
    baseline : str
    """

    values: dict
    feature_names: dict
    patient_id: np.ndarray
    convergence_delta: np.ndarray
    method: str = "integrated_gradients"
    baseline: str = "training mean of each feature (standardised input 0)"
    _title = "Fusion network attributions (logit scale)"

    def summary(self):
        """Per patient, the signed total attribution of each modality, plus ``delta``."""
        import pandas as pd

        cols = {}
        for m, v in self.values.items():
            cols[m] = v.reshape(v.shape[0], -1).sum(1)
        out = pd.DataFrame(cols, index=pd.Index(self.patient_id, name="patient_id"))
        out["delta"] = self.convergence_delta
        return out

    def feature_importance(self):
        """Mean absolute attribution per feature (sequences: summed over time rows)."""
        import pandas as pd

        rows = []
        for m, v in self.values.items():
            a = np.abs(v).sum(1) if v.ndim == 3 else np.abs(v)
            for name, val in zip(self.feature_names[m], a.mean(0), strict=True):
                rows.append((m, name, float(val)))
        df = pd.DataFrame(rows, columns=["modality", "feature", "mean_abs_attribution"])
        return df.sort_values("mean_abs_attribution", ascending=False, ignore_index=True)

    def _header_lines(self) -> list[str]:
        return [f"method: {self.method}; baseline: {self.baseline}",
                f"n = {len(self.patient_id)}; max |delta| = {np.abs(self.convergence_delta).max():.3g}"]


# ============================================================================ wrapper
@persist.register("FusionClassifier", schema=1)
class FusionClassifier(BaseEstimator):
    """scikit-learn-style wrapper training a :class:`FusionNet` on :class:`FusionData`.

    Parameters
    ----------
    strategy : {"concat", "lstm", "bigru_attention", "late"}, default "lstm"
    embed_dim : int, default 32
    epochs : int, default 100
        Maximum number of passes over the training rows.
    batch_size : int, default 64
    lr, weight_decay : float
        AdamW learning rate and decoupled weight decay.
    dropout : float, default 0.1
    modality_dropout : float, default 0.1
        Probability of hiding each present modality of a training row (>= 1 kept).
    class_weight : "balanced", float or None, default "balanced"
        ``pos_weight`` of the loss: ``n_neg / n_pos``, a given number, or 1.
    patience : int, default 10
        Epochs without improvement of the validation loss before stopping.
    validation_fraction : float, default 0.2
        Share of patients (grouped by ``patient_id``, stratified by outcome) held out for
        early stopping; 0 trains for ``epochs`` without a validation split.
    mixed_precision : bool, default True
        Use float16 autocast with a gradient scaler when the device is CUDA.
    num_threads : int or None, default 1
        CPU threads torch may use inside ``fit``/``predict`` (the previous setting is
        restored afterwards). The network is small, so one thread is usually fastest
        (on a loaded 2-core machine, 10-20x faster than two) and leaves cores for
        parallel folds; None keeps torch's current setting.
    random_state : int, default 0
    device : {"auto", "cpu", "cuda", "cuda:N"}, default "auto"
    verbose : int, default 0
        > 0 logs one line per epoch at INFO on ``normfuse.models.fusion``.

    Attributes
    ----------
    net_ : FusionNet
    classes_ : ndarray of shape (2,)
    modalities_ : tuple of str
    spec_ : dict
    history_ : list of dict
        ``epoch``, ``train_loss``, ``val_loss`` per epoch.
    best_epoch_ : int

    Examples
    --------
    400 simulated patients whose outcome depends on 5 deviation features only (every other
    modality is noise); fit on 300, held-out AUROC on the other 100:

    >>> import numpy as np
    >>> from sklearn.metrics import roc_auc_score
    >>> from models.fusion_data import simulate_fusion_data
    >>> data, y = simulate_fusion_data(400, effect=3.0, n_dev=12, n_txt=8, n_demo=3, tables=("lab",),
    ...                                n_steps=8, n_vars=4, random_state=0)
    >>> train, test = np.arange(300), np.arange(300, 400)
    >>> clf = FusionClassifier("concat", embed_dim=16, epochs=40, lr=3e-3, device="cpu")
    >>> clf = clf.fit(data.subset(train), y[train])
    >>> p = clf.predict_proba(data.subset(test))
    >>> p.shape
    (100, 2)
    >>> round(float(roc_auc_score(y[test], p[:, 1])), 1)
    0.9
    """

    def __init__(self, strategy: Strategy = "lstm", *, embed_dim: int = 32, epochs: int = 100,
                 batch_size: int = 64, lr: float = 1e-3, weight_decay: float = 1e-4,
                 dropout: float = 0.1, modality_dropout: float = 0.1,
                 class_weight: Literal["balanced"] | float | None = "balanced",
                 patience: int = 10, validation_fraction: float = 0.2,
                 mixed_precision: bool = True, num_threads: int | None = 1,
                 random_state: int = 0, device: str = "auto", verbose: int = 0):
        self.strategy = strategy
        self.embed_dim = embed_dim
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.dropout = dropout
        self.modality_dropout = modality_dropout
        self.class_weight = class_weight
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.mixed_precision = mixed_precision
        self.num_threads = num_threads
        self.random_state = random_state
        self.device = device
        self.verbose = verbose

    # ------------------------------------------------------------------ checks
    def _check_params(self) -> None:
        who = type(self).__name__
        if self.strategy not in STRATEGIES:
            raise ValueError(f"{who}: got strategy={self.strategy!r}; expected one of {STRATEGIES}.")
        for name in ("embed_dim", "epochs", "batch_size", "patience"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{who}: got {name}={v!r}; expected a positive integer.")
        for name in ("dropout", "modality_dropout"):
            v = getattr(self, name)
            if not 0 <= v < 1:
                raise ValueError(f"{who}: got {name}={v!r}; expected 0 <= {name} < 1.")
        nt = self.num_threads
        if nt is not None and (not isinstance(nt, (int, np.integer)) or nt < 1):
            raise ValueError(f"{who}: got num_threads={nt!r}; expected a positive integer or None.")
        if not 0 <= self.validation_fraction < 1:
            raise ValueError(
                f"{who}: got validation_fraction={self.validation_fraction!r}; expected 0 <= v < 1."
            )
        cw = self.class_weight
        if not (cw is None or cw == "balanced" or (isinstance(cw, (int, float)) and cw > 0)):
            raise ValueError(f"{who}: got class_weight={cw!r}; expected 'balanced', a positive number or None.")

    @staticmethod
    def _check_data(data, who: str) -> FusionData:
        if not isinstance(data, FusionData):
            raise TypeError(
                f"{who}: data must be a FusionData, got {type(data).__name__}. Build it with "
                "FusionData(...) or FusionData.from_frames(table, sequences)."
            )
        return data

    def _check_y(self, y, n: int) -> np.ndarray:
        who = f"{type(self).__name__}.fit"
        y = np.asarray(y)
        if y.ndim != 1 or len(y) != n:
            raise ValueError(f"{who}: y must be 1-D with one label per patient row ({n}), got shape {y.shape}.")
        if y.dtype.kind == "f" and np.isnan(y).any():
            raise ValueError(
                f"{who}: y holds {int(np.isnan(y).sum())} NaN labels (first at row "
                f"{int(np.flatnonzero(np.isnan(y))[0])}). Drop unlabelled patients first."
            )
        classes, counts = np.unique(y, return_counts=True)
        if len(classes) != 2:
            detail = (f"only class {classes.tolist()[0]!r} ({counts[0]} rows)" if len(classes) == 1
                      else f"{len(classes)} classes {classes.tolist()[:10]}")
            raise ValueError(
                f"{who}: y must hold exactly two classes (binary outcome); got {detail}. A "
                "classifier cannot be fitted on one class: check the label definition or the "
                "fold (use a stratified split)."
            )
        self.classes_ = classes
        return (y == classes[1]).astype(np.float32)

    # ------------------------------------------------------------------ tensors
    def _tensors(self, data: FusionData, dev: str, who: str) -> dict:
        """Tensors of ``data`` in the fitted modality order (absent -> presence False)."""
        spec = self.spec_
        unknown = [m for m in data.modalities if m not in spec and m not in self.dropped_modalities_]
        wrong = [
            f"{m}: {data.spec()[m]['kind']} dim {data.spec()[m]['dim']} (fit: {spec[m]['kind']} dim {spec[m]['dim']})"
            for m in data.modalities
            if m in spec and (data.spec()[m]["kind"], data.spec()[m]["dim"]) != (spec[m]["kind"], spec[m]["dim"])
        ]
        if unknown or wrong:
            raise ColumnContractError(
                f"{who}: modalities must match those seen in fit {list(spec)}.\n"
                f"Unexpected: {unknown}\nDifferent shape: {wrong}\n"
                "Build the data with the same modalities and feature columns as in fit."
            )
        n = data.n_patients
        lacking = [m for m in spec if m not in data.modalities]
        if lacking:
            _log.info("%s: modalities %s not in data; treated as absent for every patient", who, lacking)
        pres = np.zeros((n, len(spec)), dtype=bool)
        static, seqs, masks = [], [], []
        for k, m in enumerate(spec):
            if m in data.modalities:
                pres[:, k] = data.presence[:, data.modalities.index(m)]
            if spec[m]["kind"] == "static":
                x = data.static.get(m, np.zeros((n, spec[m]["dim"]), np.float32))
                static.append(torch.tensor(x, device=dev))
            else:
                x = data.sequences.get(m, np.zeros((n, 1, spec[m]["dim"]), np.float32))
                rm = data.row_masks.get(m, np.zeros((n, 1), bool))
                seqs.append(torch.tensor(x, device=dev))
                masks.append(torch.tensor(rm, device=dev))
        return {"static": static, "seqs": seqs, "masks": masks,
                "presence": torch.as_tensor(pres, device=dev)}

    @staticmethod
    def _take(t: dict, idx: torch.Tensor) -> dict:
        return {
            "static": [x[idx] for x in t["static"]],
            "seqs": [x[idx] for x in t["seqs"]],
            "masks": [x[idx] for x in t["masks"]],
            "presence": t["presence"][idx],
        }

    def _fit_scalers(self, data: FusionData, rows: np.ndarray) -> None:
        """Training-row means/SDs (present rows only) into the encoders' buffers."""
        for m in self.modalities_:
            present = data.presence[rows, data.modalities.index(m)]
            if self.spec_[m]["kind"] == "static":
                x = data.static[m][rows][present].astype(np.float64)
            else:
                x3 = data.sequences[m][rows][present]
                rm = data.row_masks[m][rows][present]
                x = x3[rm].astype(np.float64)
            if len(x) == 0:
                mu, sd = np.zeros(x.shape[1]), np.ones(x.shape[1])
            else:
                mu, sd = x.mean(0), x.std(0)
                sd = np.where(sd > 1e-8, sd, 1.0)
            enc = self.net_.encoders[m]
            enc.mean.copy_(torch.as_tensor(mu, dtype=torch.float32))
            enc.scale.copy_(torch.as_tensor(sd, dtype=torch.float32))

    # ------------------------------------------------------------------ fit
    def fit(self, data: FusionData, y, groups=None) -> FusionClassifier:
        """Train the network on ``data`` with binary labels ``y``.

        Parameters
        ----------
        data : FusionData
        y : array-like of shape (n,)
            Two classes; ``classes_[1]`` is the positive one.
        groups : array-like of shape (n,), optional
            Grouping of the inner validation split; default ``data.patient_id``.

        Returns
        -------
        self
        """
        who = f"{type(self).__name__}.fit"
        self._check_params()
        data = self._check_data(data, who)
        yy = self._check_y(y, data.n_patients)
        groups = data.patient_id if groups is None else np.asarray(groups)
        if len(groups) != data.n_patients:
            raise ValueError(f"{who}: groups has {len(groups)} entries for {data.n_patients} rows.")
        dev = resolve_device(self.device)
        amp = bool(self.mixed_precision) and dev.startswith("cuda")
        rng = np.random.default_rng(self.random_state)
        tr, va = _grouped_split(yy, groups, self.validation_fraction, rng)

        spec = data.spec()
        empty = [m for k, m in enumerate(data.modalities) if not data.presence[tr, k].any()]
        if empty:
            warnings.warn(
                f"{who}: dropped {len(empty)} modalities absent for every training row: {empty}. "
                "Silence with warnings.filterwarnings('ignore', category=DataDroppedWarning).",
                DataDroppedWarning, stacklevel=2,
            )
            checks.log_dropped(_log, len(empty), "modalities", f"absent in every training row: {empty}")
        self.spec_ = {m: spec[m] for m in data.modalities if m not in empty}
        self.dropped_modalities_ = tuple(empty)
        self.modalities_ = tuple(self.spec_)

        cpu_det = dev == "cpu"
        prev_det = torch.are_deterministic_algorithms_enabled()
        fork = [torch.device(dev).index or 0] if dev.startswith("cuda") else []
        with torch.random.fork_rng(devices=fork), _threads(self.num_threads):
            torch.manual_seed(int(self.random_state))
            if cpu_det:
                torch.use_deterministic_algorithms(True)
            try:
                self._train(data, yy, tr, va, dev, amp)
            finally:
                torch.use_deterministic_algorithms(prev_det)
        return self

    def _train(self, data, yy, tr, va, dev, amp) -> None:
        g = torch.Generator().manual_seed(int(self.random_state))
        self.net_ = FusionNet(self.spec_, self.strategy, self.embed_dim, self.dropout)
        self._fit_scalers(data, tr)
        net = self.net_.to(dev)
        t = self._tensors(data, dev, "FusionClassifier.fit")
        y_t = torch.as_tensor(yy, device=dev)
        pos, neg = float(yy[tr].sum()), float(len(tr) - yy[tr].sum())
        if self.class_weight == "balanced":
            pw = neg / max(pos, 1.0)
        elif self.class_weight is None:
            pw = 1.0
        else:
            pw = float(self.class_weight)
        self.pos_weight_ = pw
        loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pw, device=dev))
        opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        scaler = torch.amp.GradScaler("cuda", enabled=amp)
        tr_t = torch.as_tensor(tr, device=dev)
        va_t = torch.as_tensor(va, device=dev)
        best, best_state, best_epoch, waited = math.inf, None, 0, 0
        history = []
        for epoch in range(1, self.epochs + 1):
            net.train()
            perm = tr_t[torch.randperm(len(tr), generator=g).to(dev)]
            total = 0.0
            for start in range(0, len(perm), self.batch_size):
                idx = perm[start:start + self.batch_size]
                b = self._take(t, idx)
                if self.modality_dropout > 0:
                    b["presence"] = _drop_modalities(b["presence"], self.modality_dropout, g)
                with torch.autocast(device_type="cuda" if amp else "cpu", dtype=torch.float16,
                                    enabled=amp):
                    logit, _ = net(b["static"], b["seqs"], b["masks"], b["presence"])
                    loss = loss_fn(logit.float(), y_t[idx])
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                total += float(loss.detach()) * len(idx)
            rec = {"epoch": epoch, "train_loss": total / len(tr), "val_loss": float("nan")}
            if len(va):
                with torch.no_grad():
                    lv = self._logits(net, t, va_t, amp)
                    rec["val_loss"] = float(loss_fn(lv, y_t[va_t]))
                if rec["val_loss"] < best - 1e-6:
                    best, best_epoch, waited = rec["val_loss"], epoch, 0
                    best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
                else:
                    waited += 1
            history.append(rec)
            if self.verbose:
                _log.info("epoch %d: train loss %.4f, validation loss %.4f",
                          epoch, rec["train_loss"], rec["val_loss"])
            if len(va) and waited >= self.patience:
                break
        if best_state is not None:
            net.load_state_dict(best_state)
        else:
            best_epoch = len(history)
        if len(va) and best_epoch == len(history) == self.epochs:
            warnings.warn(
                f"FusionClassifier.fit: the validation loss was still improving at the last of "
                f"epochs={self.epochs}; increase epochs (early stopping will pick the best).",
                ConvergenceWarning, stacklevel=3,
            )
        net.eval()
        self.history_ = history
        self.best_epoch_ = best_epoch
        self.n_train_, self.n_val_ = len(tr), len(va)

    @staticmethod
    def _logits(net, t, idx, amp=False, chunk: int = 4096, weights: bool = False):
        net.eval()
        outs, ws = [], []
        for s in range(0, len(idx), chunk):
            b = FusionClassifier._take(t, idx[s:s + chunk])
            with torch.autocast(device_type="cuda" if amp else "cpu", dtype=torch.float16,
                                enabled=amp):
                lo, w = net(b["static"], b["seqs"], b["masks"], b["presence"])
            outs.append(lo.float())
            ws.append(w)
        lo = torch.cat(outs)
        if weights:
            return lo, (None if ws[0] is None else torch.cat(ws))
        return lo

    # ------------------------------------------------------------------ predict
    def _run(self, data, who, weights=False):
        checks.check_is_fitted(self, ["net_"])
        data = self._check_data(data, who)
        dev = resolve_device(self.device)
        amp = bool(self.mixed_precision) and dev.startswith("cuda")
        net = self.net_.to(dev)
        t = self._tensors(data, dev, who)
        idx = torch.arange(data.n_patients, device=dev)
        with torch.no_grad(), _threads(self.num_threads):
            return self._logits(net, t, idx, amp, weights=weights)

    def decision_function(self, data: FusionData) -> np.ndarray:
        """The logit of the positive class, shape (n,)."""
        return self._run(data, f"{type(self).__name__}.decision_function").cpu().numpy().astype(np.float64)

    def predict_proba(self, data: FusionData) -> np.ndarray:
        """Class probabilities, shape (n, 2), columns ``classes_``, rows in ``data`` order."""
        lo = self.decision_function(data)
        p = 1.0 / (1.0 + np.exp(-lo))
        return np.column_stack([1.0 - p, p])

    def predict(self, data: FusionData) -> np.ndarray:
        """The class with probability >= 0.5."""
        return self.classes_[(self.predict_proba(data)[:, 1] >= 0.5).astype(int)]

    def modality_weights(self, data: FusionData):
        """Per-patient weights over modalities (rows sum to 1; absent modalities get 0).

        ``bigru_attention``: the attention weights of the decoder. ``late``: the learned
        combination weights renormalised over each patient's present modalities.
        ``concat`` and ``lstm`` have no such weights; use :meth:`attributions`.

        Returns
        -------
        DataFrame indexed by ``patient_id`` (rows in ``data`` order), columns ``modalities_``.
        """
        import pandas as pd

        who = f"{type(self).__name__}.modality_weights"
        if self.strategy not in ("bigru_attention", "late"):
            raise ValueError(
                f"{who}: strategy={self.strategy!r} has no weights over modalities (only "
                "'bigru_attention' and 'late' do). Use .attributions(data) for Integrated "
                "Gradients attributions, which every strategy supports."
            )
        _, w = self._run(data, who, weights=True)
        return pd.DataFrame(w.float().cpu().numpy().astype(np.float64), columns=list(self.modalities_),
                            index=pd.Index(data.patient_id, name="patient_id"))

    def row_attention(self, data: FusionData, modality: str) -> np.ndarray:
        """Attention weights of one EHR table's encoder over its time rows, shape (n, T).

        Each observed row's weight in the table embedding; rows sum to 1 for patients who
        have the table and are all 0 for those who lack it (or for padded rows).
        """
        who = f"{type(self).__name__}.row_attention"
        checks.check_is_fitted(self, ["net_"])
        data = self._check_data(data, who)
        if modality not in self.spec_ or self.spec_[modality]["kind"] != "sequence":
            seqs = [m for m in self.spec_ if self.spec_[m]["kind"] == "sequence"]
            raise ValueError(f"{who}: got modality={modality!r}; the sequence modalities are {seqs}.")
        if modality not in data.modalities:
            raise ColumnContractError(f"{who}: data has no modality {modality!r}.")
        dev = resolve_device(self.device)
        net = self.net_.to(dev).eval()
        k = data.modalities.index(modality)
        x = torch.tensor(data.sequences[modality], device=dev)
        rm = torch.tensor(data.row_masks[modality], device=dev)
        pres = torch.tensor(data.presence[:, k], device=dev)
        out = []
        with torch.no_grad(), _threads(self.num_threads):
            for s in range(0, data.n_patients, 4096):
                sl = slice(s, s + 4096)
                out.append(net.encoders[modality](x[sl], rm[sl], pres[sl])[1])
        return torch.cat(out).cpu().numpy().astype(np.float64)

    def attributions(self, data: FusionData, method: Literal["integrated_gradients"] = "integrated_gradients",
                     n_steps: int = 32, internal_batch_size: int = 512) -> FusionAttributions:
        """Integrated Gradients attributions of the logit to every input value (captum).

        The baseline is the training mean of each feature (0 after standardisation).
        Absent modalities and padded rows are held out of the network and get 0.

        Raises
        ------
        MissingDependencyError
            captum is not installed (``pip install 'normfuse[explain]'``).
        """
        who = f"{type(self).__name__}.attributions"
        checks.check_is_fitted(self, ["net_"])
        if method != "integrated_gradients":
            raise ValueError(f"{who}: got method={method!r}; expected 'integrated_gradients'.")
        attr_mod = checks.optional_import("captum.attr", "explain", "FusionClassifier.attributions")
        data = self._check_data(data, who)
        dev = resolve_device(self.device)
        net = self.net_.to(dev).eval()
        t = self._tensors(data, dev, who)
        ns, nq = len(t["static"]), len(t["seqs"])
        names = list(self.modalities_)

        def forward(*inputs):
            st, sq = list(inputs[:ns]), list(inputs[ns:ns + nq])
            masks, pres = list(inputs[ns + nq:ns + 2 * nq]), inputs[-1]
            return net(st, sq, masks, pres)[0]

        inputs = tuple(t["static"] + t["seqs"])
        baselines = tuple(
            net.encoders[m].mean.expand_as(x).contiguous() for m, x in zip(names, inputs, strict=True)
        )
        extra = tuple(t["masks"]) + (t["presence"],)
        ig = attr_mod.IntegratedGradients(forward)
        with torch.backends.cudnn.flags(enabled=False), _threads(self.num_threads):
            attrs, delta = ig.attribute(
                inputs, baselines=baselines, additional_forward_args=extra, n_steps=n_steps,
                internal_batch_size=internal_batch_size, return_convergence_delta=True,
            )
        values = {m: a.detach().cpu().numpy().astype(np.float64) for m, a in zip(names, attrs, strict=True)}
        fn = {m: tuple(data.feature_names.get(m, (f"{m}_{j}" for j in range(self.spec_[m]["dim"]))))
              for m in names}
        return FusionAttributions(values=values, feature_names=fn, patient_id=data.patient_id.copy(),
                                  convergence_delta=delta.detach().cpu().numpy().astype(np.float64))

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Save to the folder ``path``: ``model.json`` + ``weights.safetensors`` (no pickle)."""
        from safetensors.torch import save as st_save

        checks.check_is_fitted(self, ["net_"])
        state = {k: v.detach().cpu().contiguous() for k, v in self.net_.state_dict().items()}
        meta = {
            "params": self.get_params(),
            "spec": self.spec_,
            "modalities": list(self.modalities_),
            "dropped_modalities": list(self.dropped_modalities_),
            "classes": self.classes_.tolist(),
            "classes_dtype": self.classes_.dtype.str,
            "history": self.history_,
            "best_epoch": self.best_epoch_,
            "pos_weight": self.pos_weight_,
            "n_train": self.n_train_,
            "n_val": self.n_val_,
        }
        return persist.save_state(path, kind="FusionClassifier", meta=meta,
                                  files={"weights.safetensors": st_save(state)})

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> FusionClassifier:
        """Load a model saved with :meth:`save`; ``device`` overrides the saved one."""
        est = persist.load(path, kind="FusionClassifier")
        if device is not None:
            est.device = device
        return est

    @classmethod
    def _from_state(cls, meta, arrays, files) -> FusionClassifier:
        from safetensors.torch import load as st_load

        est = cls(**meta["params"])
        # model.json is written with sorted keys: the modality order comes from the list
        est.spec_ = {m: dict(meta["spec"][m]) for m in meta["modalities"]}
        est.modalities_ = tuple(meta["modalities"])
        est.dropped_modalities_ = tuple(meta["dropped_modalities"])
        est.classes_ = np.array(meta["classes"], dtype=np.dtype(meta["classes_dtype"]))
        est.history_ = meta["history"]
        est.best_epoch_ = meta["best_epoch"]
        est.pos_weight_ = meta["pos_weight"]
        est.n_train_, est.n_val_ = meta["n_train"], meta["n_val"]
        net = FusionNet(est.spec_, est.strategy, est.embed_dim, est.dropout)
        try:
            state = st_load(files["weights.safetensors"])
            net.load_state_dict(state, strict=True)
        except (RuntimeError, KeyError, ValueError) as exc:
            raise SchemaError(f"FusionClassifier.load: the weights do not fit the saved configuration ({exc}).") from exc
        est.net_ = net.eval()
        return est


def _drop_modalities(presence: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Hide each present modality with probability ``p``; a row never loses all of them.

    Rows whose every present modality was drawn for dropping keep their original presence.
    """
    drop = (torch.rand(presence.shape, generator=generator) < p).to(presence.device)
    keep = presence & ~drop
    return torch.where(keep.any(1, keepdim=True), keep, presence)


@contextlib.contextmanager
def _threads(n: int | None):
    """Temporarily set torch's intra-op CPU threads (restored on exit)."""
    if n is None:
        yield
        return
    prev = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def _grouped_split(y: np.ndarray, groups: np.ndarray, fraction: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """Row positions of a train/validation split grouped by ``groups``, stratified by ``y``.

    A group's stratum is its highest label. Returns all rows as training rows when the
    fraction is 0 or a class has fewer than 2 groups.
    """
    n = len(y)
    all_rows = np.arange(n)
    if fraction <= 0:
        return all_rows, all_rows[:0]
    uniq, inv = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    gy = np.zeros(len(uniq))
    np.maximum.at(gy, inv, y)
    val_groups = np.zeros(len(uniq), dtype=bool)
    for label in (0.0, 1.0):
        gi = np.flatnonzero(gy == label)
        k = int(round(fraction * len(gi)))
        if len(gi) < 2 or k < 1:
            _log.info("no validation split: too few patient groups of class %g", label)
            return all_rows, all_rows[:0]
        val_groups[rng.choice(gi, size=min(k, len(gi) - 1), replace=False)] = True
    va = val_groups[inv]
    return all_rows[~va], all_rows[va]
