"""Tests of the fusion network (models/fusion.py) and its inputs (models/fusion_data.py).

References are planted truths (simulated outcomes driven by one modality only),
independent slow re-implementations (the LSTM/Bi-GRU over present tokens only, run
patient by patient), the Integrated Gradients completeness axiom, and hand-computed
numbers (pos_weight, late-fusion weights).
"""
from __future__ import annotations

import sys
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone
from sklearn.metrics import roc_auc_score

from models.fusion import (
    STRATEGIES,
    FusionClassifier,
    FusionNet,
    _drop_modalities,
    _grouped_split,
)
from models.fusion_data import FusionData, simulate_fusion_data
from normfuse import persist
from normfuse.errors import (
    ColumnContractError,
    ConvergenceWarning,
    DataDroppedWarning,
    MissingDependencyError,
    NotFittedError,
    SchemaError,
)

SMALL = dict(n_dev=12, n_txt=8, n_demo=3, tables=("lab", "vital"), n_steps=8, n_vars=4)
FAST = dict(embed_dim=16, epochs=40, batch_size=64, lr=3e-3, patience=8, device="cpu")


@pytest.fixture(scope="module")
def planted():
    """400 patients; only the first 5 deviation features carry signal (effect 3 on the logit)."""
    data, y = simulate_fusion_data(400, effect=3.0, random_state=0, **SMALL)
    train = np.arange(400) < 260
    return data, y, train


@pytest.fixture(scope="module")
def fitted(planted):
    """One fitted classifier per strategy on the planted training rows."""
    data, y, train = planted
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for s in STRATEGIES:
            out[s] = FusionClassifier(s, random_state=0, **FAST).fit(data.subset(train), y[train])
    return out


# --------------------------------------------------------------------------- learning
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_planted_signal_is_learned(planted, fitted, strategy):
    """Held-out AUROC is well above chance when only the deviation modality carries signal."""
    data, y, train = planted
    p = fitted[strategy].predict_proba(data.subset(~train))
    assert p.shape == (int((~train).sum()), 2)
    np.testing.assert_allclose(p.sum(1), 1.0)
    # planted truth: y ~ Bernoulli(sigmoid(b0 + 3 * z(sum of dev features 0..4)));
    # the oracle score reaches AUROC ~0.9 on these rows
    assert roc_auc_score(y[~train], p[:, 1]) > 0.75


def test_attributions_find_the_signal_modality(planted, fitted):
    """Integrated Gradients put the most weight on the planted deviation features and add up."""
    data, y, train = planted
    clf = fitted["bigru_attention"]
    test = data.subset(np.flatnonzero(~train)[:40])
    att = clf.attributions(test, n_steps=64)
    imp = att.feature_importance()
    top5 = set(imp["feature"].head(5))
    assert top5 == {f"dev_{j}" for j in range(5)}
    # completeness axiom: sum of attributions = logit(x) - logit(baseline)
    tab = att.summary()
    assert list(tab.index) == list(test.patient_id)
    logit = clf.decision_function(test)
    means = {m: clf.net_.encoders[m].mean.numpy() for m in clf.modalities_}
    base = FusionData(
        patient_id=test.patient_id, presence=test.presence, row_masks=test.row_masks,
        static={m: np.broadcast_to(means[m], x.shape) for m, x in test.static.items()},
        sequences={m: np.broadcast_to(means[m], x.shape) for m, x in test.sequences.items()},
    )
    total = tab[list(clf.modalities_)].sum(1).to_numpy()
    np.testing.assert_allclose(total, logit - clf.decision_function(base),
                               atol=0.02 * np.abs(total).max())
    np.testing.assert_allclose(tab["delta"], 0.0, atol=0.02 * np.abs(total).max())
    # absent modalities get exactly zero attribution
    k = test.modalities.index("txt")
    absent = ~test.presence[:, k]
    assert absent.any()
    assert np.all(att.values["txt"][absent] == 0.0)


def test_attributions_need_captum(planted, fitted, monkeypatch):
    """Without captum, attributions raise MissingDependencyError naming the 'explain' extra."""
    data, _, train = planted
    monkeypatch.setitem(sys.modules, "captum.attr", None)
    with pytest.raises(MissingDependencyError, match=r"normfuse\[explain\]"):
        fitted["lstm"].attributions(data.subset(np.arange(3)))


# --------------------------------------------------------------------------- missing data
def _with_txt_absent(data: FusionData, rows: np.ndarray, fill) -> FusionData:
    """Copy of ``data`` with the txt modality absent for ``rows``, its values set to ``fill``."""
    static = {m: x.copy() for m, x in data.static.items()}
    static["txt"][rows] = fill(static["txt"][rows].shape)
    seqs = {m: x.copy() for m, x in data.sequences.items()}
    masks = {m: x.copy() for m, x in data.row_masks.items()}
    seqs["lab"][~masks["lab"]] = 1e6  # padded rows hold garbage too
    pres = data.presence.copy()
    pres[rows, data.modalities.index("txt")] = False
    return FusionData(patient_id=data.patient_id, static=static, sequences=seqs,
                      row_masks=masks, presence=pres, feature_names=data.feature_names)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_absent_modality_values_are_ignored(planted, fitted, strategy):
    """Output is identical whether an absent modality holds zeros or garbage (left out)."""
    data, _, train = planted
    test = data.subset(np.flatnonzero(~train)[:60])
    rows = np.arange(0, 60, 2)
    rng = np.random.default_rng(1)
    zeros = _with_txt_absent(test, rows, np.zeros)
    garbage = _with_txt_absent(test, rows, lambda s: rng.normal(0, 1e4, s))
    p0 = fitted[strategy].predict_proba(zeros)
    p1 = fitted[strategy].predict_proba(garbage)
    np.testing.assert_array_equal(p0, p1)
    assert np.all((p0 > 0) & (p0 < 1))


def _reference_recurrent(net: FusionNet, data: FusionData, clf: FusionClassifier) -> np.ndarray:
    """Slow reference: per patient, run the RNN on the present modality tokens only."""
    t = clf._tensors(data, "cpu", "ref")
    out = []
    with torch.no_grad():
        tok = net.embed(t["static"], t["seqs"], t["masks"], t["presence"]) + net.modality_embed
        for i in range(data.n_patients):
            seq = tok[i][t["presence"][i]][None]  # (1, L, E): absent tokens removed
            if net.strategy == "lstm":
                _, (h, _) = net.rnn(seq)
                out.append(float(net.head(h[-1])[0, 0]))
            else:
                o, _ = net.rnn(seq)
                a = torch.softmax(net.attention(o.transpose(1, 2)).squeeze(1), dim=1)
                out.append(float(net.head((a[..., None] * o).sum(1))[0, 0]))
    return np.array(out)


@pytest.mark.parametrize("strategy", ["lstm", "bigru_attention"])
def test_recurrent_fusion_excludes_missing_tokens(planted, fitted, strategy):
    """lstm/bigru_attention logits equal a per-patient RNN over present tokens only."""
    data, _, train = planted
    test = data.subset(np.flatnonzero(~train)[:40])
    assert (~test.presence).any()
    clf = fitted[strategy]
    ref = _reference_recurrent(clf.net_, test, clf)
    np.testing.assert_allclose(clf.decision_function(test), ref, rtol=1e-5, atol=1e-5)


def test_patient_missing_modalities_gets_valid_probability(planted, fitted):
    """A patient with only demographics, or data lacking a fitted modality, gets a valid probability."""
    data, _, train = planted
    test = data.subset(np.flatnonzero(~train)[:10])
    pres = np.zeros_like(test.presence)
    pres[:, test.modalities.index("demo")] = True
    only_demo = FusionData(patient_id=test.patient_id, static=test.static, sequences=test.sequences,
                           row_masks=test.row_masks, presence=pres, drop_empty=False)
    no_notes = FusionData(patient_id=test.patient_id,
                          static={m: x for m, x in test.static.items() if m != "txt"},
                          sequences=test.sequences, row_masks=test.row_masks)
    for clf in fitted.values():
        for d in (only_demo, no_notes):
            p = clf.predict_proba(d)[:, 1]
            assert np.all(np.isfinite(p) & (p > 0) & (p < 1))


# --------------------------------------------------------------------------- weights
def test_modality_weights_bigru_and_late(planted, fitted):
    """Weights sum to 1 over present modalities, are 0 for absent ones; late = renormalised softmax."""
    data, _, train = planted
    test = data.subset(np.flatnonzero(~train)[:30])
    for s in ("bigru_attention", "late"):
        w = fitted[s].modality_weights(test)
        assert list(w.columns) == list(fitted[s].modalities_)
        assert list(w.index) == list(test.patient_id)
        np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-6)
        assert np.all(w.to_numpy()[~test.presence] == 0.0)
    # late: softmax of the learned scores over each patient's present modalities (by hand)
    sc = fitted["late"].net_.late_scores.detach().numpy().astype(np.float64)
    e = np.exp(sc - sc.max()) * test.presence
    np.testing.assert_allclose(fitted["late"].modality_weights(test), e / e.sum(1, keepdims=True),
                               atol=1e-6)
    with pytest.raises(ValueError, match="attributions"):
        fitted["lstm"].modality_weights(test)


# --------------------------------------------------------------------------- training
def test_fit_is_deterministic_and_leaves_rng_alone(planted):
    """Two fits with one seed give identical probabilities; the global torch RNG is untouched."""
    data, y, train = planted
    sub, ys = data.subset(np.arange(120)), y[:120]
    kw = dict(FAST, epochs=3, patience=50)
    state = torch.random.get_rng_state()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        p1 = FusionClassifier("bigru_attention", random_state=7, **kw).fit(sub, ys).predict_proba(sub)
        p2 = FusionClassifier("bigru_attention", random_state=7, **kw).fit(sub, ys).predict_proba(sub)
        p3 = FusionClassifier("bigru_attention", random_state=8, **kw).fit(sub, ys).predict_proba(sub)
    np.testing.assert_array_equal(p1, p2)
    assert not np.array_equal(p1, p3)
    assert torch.equal(state, torch.random.get_rng_state())


def test_early_stopping_restores_best_epoch(fitted):
    """Training stops `patience` epochs after the best validation loss and keeps that epoch."""
    for clf in fitted.values():
        val = np.array([h["val_loss"] for h in clf.history_])
        assert clf.best_epoch_ == int(np.argmin(val)) + 1
        if len(val) < clf.epochs:
            assert len(val) == clf.best_epoch_ + clf.patience
        assert clf.n_train_ + clf.n_val_ == 260


def test_class_weight_is_negatives_over_positives(planted):
    """pos_weight = n_neg / n_pos of the training rows, as hand-computed."""
    data, y, _ = planted
    kw = dict(FAST, epochs=1, validation_fraction=0.0)
    clf = FusionClassifier("concat", **kw).fit(data.subset(np.arange(50)), y[:50])
    assert clf.pos_weight_ == pytest.approx((50 - y[:50].sum()) / y[:50].sum())
    clf = FusionClassifier("concat", class_weight=None, **kw).fit(data.subset(np.arange(50)), y[:50])
    assert clf.pos_weight_ == 1.0 and len(clf.history_) == 1 and clf.n_val_ == 0


def test_modality_dropout_rate_and_floor():
    """Modality dropout hides present modalities at rate p, never adds any, never empties a row."""
    rng = np.random.default_rng(4)
    pres = torch.as_tensor(rng.random((20000, 6)) < 0.8)
    pres[pres.sum(1) == 0, 0] = True
    out = _drop_modalities(pres, 0.3, torch.Generator().manual_seed(0))
    assert not (out & ~pres).any() and out.any(1).all()
    # planted rate: rows with >= 2 present modalities are almost never all dropped (0.3^k)
    rows = pres.sum(1) >= 4
    rate = 1 - out[rows].sum().item() / pres[rows].sum().item()
    assert abs(rate - 0.3) < 0.01
    single = pres.sum(1) == 1
    assert torch.equal(out[single], pres[single])


def test_grouped_split_keeps_patients_together():
    """The inner validation split never splits a patient and holds both classes."""
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(50), 3)
    y = np.repeat(rng.integers(0, 2, 50), 3).astype(np.float32)
    tr, va = _grouped_split(y, groups, 0.2, np.random.default_rng(0))
    assert not set(groups[tr]) & set(groups[va])
    assert len(tr) + len(va) == 150 and set(y[va]) == {0.0, 1.0}
    assert 0.1 < len(va) / 150 < 0.3


def test_fit_errors(planted):
    """Single-class y, wrong lengths, wrong types and unfitted use fail with clear messages."""
    data, y, _ = planted
    clf = FusionClassifier("lstm", **FAST)
    with pytest.raises(ValueError, match=r"only class 0 \(400 rows\)"):
        clf.fit(data, np.zeros(400, dtype=int))
    with pytest.raises(ValueError, match="one label per patient row"):
        clf.fit(data, y[:10])
    with pytest.raises(TypeError, match="FusionData"):
        clf.fit(np.zeros((400, 3)), y)
    with pytest.raises(ValueError, match="strategy="):
        FusionClassifier("transformer").fit(data, y)
    with pytest.raises(NotFittedError):
        FusionClassifier().predict_proba(data)


def test_predict_refuses_other_shapes(planted, fitted):
    """Data with another feature count, or an unknown modality, is refused naming it."""
    data, _, _ = planted
    other = FusionData(patient_id=data.patient_id[:5],
                       static={"dev": data.static["dev"][:5, :4], "extra": np.ones((5, 2))})
    with pytest.raises(ColumnContractError, match=r"(?s)Unexpected: \['extra'\].*dev: static dim 4"):
        fitted["concat"].predict_proba(other)


def test_clone_and_params():
    """The wrapper is a scikit-learn estimator: get_params/clone keep every setting."""
    clf = FusionClassifier("late", embed_dim=8, modality_dropout=0.3, random_state=5)
    c2 = clone(clf)
    assert c2.get_params() == clf.get_params() and c2.strategy == "late"


# --------------------------------------------------------------------------- persistence
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_save_load_identical(planted, fitted, strategy, tmp_path):
    """save -> load gives identical probabilities, through the class and through persist.load."""
    data, _, train = planted
    test = data.subset(~train)
    clf = fitted[strategy]
    clf.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "arrays.npz", "model.json", "weights.safetensors"]
    back = FusionClassifier.load(tmp_path / "m")
    np.testing.assert_array_equal(back.predict_proba(test), clf.predict_proba(test))
    assert back.get_params() == clf.get_params() and back.best_epoch_ == clf.best_epoch_
    np.testing.assert_array_equal(persist.load(tmp_path / "m").predict_proba(test),
                                  clf.predict_proba(test))


def test_tampered_weights_fail(fitted, tmp_path):
    """A changed weights file fails to load with SchemaError."""
    fitted["concat"].save(tmp_path / "m")
    p = tmp_path / "m" / "weights.safetensors"
    b = bytearray(p.read_bytes())
    b[-1] ^= 0xFF
    p.write_bytes(bytes(b))
    with pytest.raises(SchemaError, match="altered"):
        FusionClassifier.load(tmp_path / "m")


# --------------------------------------------------------------------------- FusionData
def test_fusiondata_nan_rules():
    """All-NaN rows mark absence; partial NaN and inf name modality, column and patient."""
    x = np.array([[1.0, 2.0], [np.nan, np.nan], [3.0, 4.0]])
    demo = np.ones((3, 1))
    d = FusionData(patient_id=np.array(["a", "b", "c"]), static={"dev": x, "demo": demo},
                   feature_names={"dev": ["dev__L", "dev__R"]})
    assert d.presence[:, 0].tolist() == [True, False, True]
    assert np.isnan(x[1]).all()  # input not mutated
    bad = x.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ColumnContractError, match=r"'dev', column 'dev__R' is NaN for patient 'c'"):
        FusionData(patient_id=np.array(["a", "b", "c"]), static={"dev": bad},
                   feature_names={"dev": ["dev__L", "dev__R"]})
    d0 = FusionData(patient_id=np.array(["a", "b", "c"]), static={"dev": bad, "demo": demo},
                    impute="zero")
    assert d0.static["dev"][2, 1] == 0.0 and d0.presence[2, 0]
    bad[0, 0] = np.inf
    with pytest.raises(ColumnContractError, match=r"'dev_0' holds inf for patient 'a'"):
        FusionData(patient_id=np.array(["a", "b", "c"]), static={"dev": bad})


def test_fusiondata_sequences_and_drops():
    """Sequence NaN in observed rows errors; padded rows are ignored; empty modalities drop."""
    rng = np.random.default_rng(0)
    seq = rng.normal(size=(3, 4, 2))
    mask = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=bool)
    seq[0, 3, 1] = np.nan  # padded row: fine
    dev = rng.normal(size=(3, 2))
    with pytest.warns(DataDroppedWarning, match=r"dropped 1 modalities .*\['txt'\]"):
        d = FusionData(patient_id=np.arange(3), static={"dev": dev, "txt": np.full((3, 4), np.nan)},
                       sequences={"lab": seq}, row_masks={"lab": mask})
    assert d.modalities == ("dev", "lab") and d.presence[:, 1].tolist() == [True, True, False]
    assert d.sequences["lab"][0, 3, 1] == 0.0 and np.isnan(seq[0, 3, 1])
    seq2 = seq.copy()
    seq2[1, 0, 0] = np.nan
    with pytest.raises(ColumnContractError, match=r"'lab', variable 'lab_0' is NaN for patient 1 at time row 0"):
        FusionData(patient_id=np.arange(3), static={"dev": dev}, sequences={"lab": seq2},
                   row_masks={"lab": mask})
    with pytest.raises(ValueError, match=r"1 patients have no modality at all: \[2\]"):
        FusionData(patient_id=np.arange(3), static={"dev": np.where([[1], [1], [0]], dev, np.nan)},
                   sequences={"lab": seq}, row_masks={"lab": mask})


def test_fusiondata_sequence_inf_refused_in_observed_rows_only():
    """-inf in an observed sequence row names modality, variable, patient and time row; padded rows pass."""
    seq = np.zeros((2, 3, 2))
    mask = np.array([[1, 1, 0], [1, 0, 0]], dtype=bool)
    seq[0, 2, 0] = np.inf  # padded row: ignored, then zeroed
    d = FusionData(patient_id=np.array(["a", "b"]), sequences={"lab": seq}, row_masks={"lab": mask})
    assert d.sequences["lab"][0, 2, 0] == 0.0 and np.isinf(seq[0, 2, 0])
    seq[1, 0, 1] = -np.inf
    with pytest.raises(ColumnContractError,
                       match=r"modality 'lab'\): column 'lab_1' holds -inf for patient 'b' at time row 0"):
        FusionData(patient_id=np.array(["a", "b"]), sequences={"lab": seq}, row_masks={"lab": mask})


def test_from_frames_aligns_and_validates():
    """Prefixed columns become modalities; sequence ids are aligned; mismatched ids raise."""
    rng = np.random.default_rng(2)
    table = pd.DataFrame({
        "patient_id": ["p1", "p2", "p3"],
        "dev__Left-Hippocampus": [0.1, -2.0, 1.0], "n_other": [1, 2, 3],
        "dev__n_crit": [0, 1, 0], "txt__0": [0.3, np.nan, 0.2], "demo__age": [30.0, 41.0, 52.0],
    })
    before = table.copy()
    lab = rng.normal(size=(3, 5, 2)).astype(np.float32)
    mask = np.ones((3, 5), dtype=bool)
    ids = np.array(["p3", "p1", "p2"])
    d = FusionData.from_frames(table, {"lab": (lab, mask, ids)}, variable_names={"lab": ["crp", "b12"]})
    pd.testing.assert_frame_equal(table, before)
    assert d.modalities == ("dev", "txt", "demo", "lab")
    assert d.feature_names["dev"] == ("dev__Left-Hippocampus", "dev__n_crit")
    np.testing.assert_array_equal(d.sequences["lab"][0], lab[1])  # p1 was row 1 of the arrays
    assert d.presence[:, 1].tolist() == [True, False, True]
    with pytest.raises(ColumnContractError, match=r"(?s)Missing from 'lab': \['p3'\].*Unexpected in 'lab': \['p9'\]"):
        FusionData.from_frames(table, {"lab": (lab, mask, np.array(["p9", "p1", "p2"]))})
    with pytest.raises(ColumnContractError, match="no column carries a modality prefix"):
        FusionData.from_frames(table[["patient_id", "n_other"]])
    t2 = table.assign(**{"demo__sex": ["F", "M", "F"]})
    with pytest.raises(ColumnContractError, match=r"'demo__sex' must be numeric; row 0 holds 'F'"):
        FusionData.from_frames(t2)


@pytest.mark.gpu
def test_cuda_mixed_precision_learns(planted):
    """On CUDA with float16 autocast, the planted signal is learned as on the CPU."""
    from normfuse.device import cuda_available

    if not cuda_available():
        pytest.skip("needs a CUDA device visible to torch (the CPU path is the reference)")
    data, y, train = planted
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = FusionClassifier("bigru_attention", **dict(FAST, device="cuda")).fit(data.subset(train), y[train])
    p = clf.predict_proba(data.subset(~train))[:, 1]
    assert roc_auc_score(y[~train], p) > 0.75
    att = clf.attributions(data.subset(np.arange(5)))
    assert np.isfinite(att.summary().to_numpy()).all()


def test_row_attention_over_observed_rows(planted, fitted):
    """Row attention sums to 1 over a table's observed rows and is 0 on padded rows."""
    data, _, train = planted
    test = data.subset(np.flatnonzero(~train)[:30])
    a = fitted["concat"].row_attention(test, "lab")
    k = test.modalities.index("lab")
    valid = test.row_masks["lab"] & test.presence[:, [k]]
    assert a.shape == test.row_masks["lab"].shape
    np.testing.assert_allclose(a.sum(1), valid.any(1).astype(float), atol=1e-6)
    assert np.all(a[~valid] == 0.0)
    with pytest.raises(ValueError, match=r"sequence modalities are \['lab', 'vital'\]"):
        fitted["concat"].row_attention(test, "dev")
