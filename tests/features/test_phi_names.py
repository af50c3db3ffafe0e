"""Name scrubbing on a hand-written adversarial corpus (not produced by our simulator)."""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from features.notes import scrub_phi
from normfuse.synthetic.phi_audit import score_name_spans

CORPUS = Path(__file__).parent / "data" / "phi_names_adversarial.json"


@pytest.fixture(scope="module")
def corpus():
    return json.loads(CORPUS.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def scored(corpus):
    pos = corpus["positive"]
    texts = [e["text"] for e in pos]
    return score_name_spans(texts, [e["names"] for e in pos], scrub_phi(texts))


def test_corpus_size_and_spans_are_exact(corpus):
    """The corpus has >= 80 snippets with names (spans occur verbatim) and >= 80 without."""
    assert len(corpus["positive"]) >= 80 and len(corpus["negative"]) >= 80
    assert [e["text"] for e in corpus["positive"] for n in e["names"] if n not in e["text"]] == []


def test_adversarial_name_recall(scored):
    """>= 98 % of name spans are removed whole (measured 101 of 102; the miss: 'Kwame Asante reports')."""
    missed = scored.loc[~scored["removed"], "span"].tolist()
    assert scored["removed"].mean() >= 0.98, missed
    assert missed == ["Kwame Asante"]  # no cue, neither word in the 1990 Census lists


def test_adversarial_no_word_lost_beside_names(scored):
    """No word outside the name spans is removed in the snippets that carry names."""
    assert scored.loc[scored["lost"] != "", ["span", "lost"]].to_dict("records") == []


def test_particles_and_compounds_collapse_to_one_placeholder(scored):
    """Each removed name, particles and hyphenated parts included, leaves exactly one [NAME]."""
    done = scored.loc[scored["removed"]].groupby("note_row").first()
    bad = done.loc[done["n_name_tags"] != done["n_spans"], "span"].tolist()
    assert bad == []


@pytest.mark.parametrize("text, expected", [
    ("Jan van der Berg returns.", "[NAME] returns."),
    ("Maria de la Cruz reports numbness.", "[NAME] reports numbness."),
    ("Ludwig von Trapp called.", "[NAME] called."),
    ("Anna Di Marco has MS.", "[NAME] has MS."),
    ("Sean O'Neill walks.", "[NAME] walks."),
    ("Ann-Marie McDonald-Smith denies falls.", "[NAME] denies falls."),
    ("pt jane doe seen today", "pt [NAME] seen today"),
    ("spoke with husband john", "spoke with husband [NAME]"),
    ("PATIENT: JOHN SMITH", "PATIENT: [NAME]"),
    ("Mr. van der Berg walks. Dr. Jan van der Berg signed.", "Mr. [NAME] walks. Dr. [NAME] signed."),
    ("Will Parker will continue Ocrevus.", "[NAME] will continue Ocrevus."),
    ("pt reports fatigue; pt will continue DMT.", "pt reports fatigue; pt will continue DMT."),
    ("Known MS. Thearpy: fingolimod.", "Known MS. Thearpy: fingolimod."),
])
def test_named_examples_exact_output(text, expected):
    """The brief's examples: no cue, particles, lower case, ALL CAPS; 'MS.' is not a title."""
    assert scrub_phi(text) == expected


def test_adversarial_negatives_have_no_false_positive(corpus):
    """No [NAME] in any of the no-name snippets (eponyms, drugs, months, words, places, headings)."""
    neg = pd.DataFrame(corpus["negative"])
    out = scrub_phi(neg["text"].tolist())
    fp = neg.loc[["[NAME]" in o for o in out], ["trap", "text"]]
    assert fp.to_dict("records") == []  # measured: 0 of 113 (0 of 32 eponyms, 0 of 18 drugs)
    lost = [(k, o) for ks, o in zip(neg["keep"], out, strict=True) for k in ks if k not in o]
    assert lost == []
    assert set(neg["trap"]) >= {"eponym", "drug", "month", "word", "address", "place", "heading"}


def test_town_of_an_address_is_address(corpus):
    """Towns in addresses become [ADDRESS] (not [NAME]), the ZIP stays a separate [ZIP]."""
    neg = [e["text"] for e in corpus["negative"] if e["trap"] == "address"]
    out = scrub_phi(neg)
    towns = ["Springfield", "Madison", "Franklin", "Austin", "Clinton", "Jackson", "Virginia"]
    assert [t for t in towns if any(t in o for o in out)] == []
    assert all("[ADDRESS]" in o and "[ZIP]" in o and "[NAME]" not in o for o in out)


def test_found_name_goes_everywhere_in_the_note_in_any_case():
    """A name found once is replaced at every later mention, also in another case."""
    out = scrub_phi("pt jane doe seen today. Jane reports fatigue; JANE walks 300 m.")
    assert "jane" not in out.lower() and "doe" not in out.lower()
    # an ambiguous first name found in a pair is not replaced as a lower-case word
    assert scrub_phi("Will Parker is here. He will continue.") == "[NAME] is here. He will continue."


def test_gazetteer_files_and_build_script_agree():
    """The shipped lists: 5,163 first names and the 20,000 top Census 1990 surnames, lower case."""
    from features._gazetteer import AMBIGUOUS, first_names, surnames

    first, last = first_names(), surnames()
    assert len(first) == 5163 and len(last) == 20000
    # dist.all.last ranks 1-3: SMITH JOHNSON WILLIAMS; dist.female.first rank 1: MARY
    assert {"smith", "johnson", "williams"} <= last and {"mary", "james", "maria"} <= first
    assert all(n == n.lower() for n in list(first)[:50])
    assert {"will", "may", "mark", "grant", "iris"} <= AMBIGUOUS
    data = Path(__file__).parents[2] / "features" / "data"
    with gzip.open(data / "census1990_first.txt.gz", "rt") as f:
        assert f.readline().strip() == "aaron"  # sorted list


def test_import_features_notes_does_not_load_the_gazetteer():
    """Importing features.notes reads no name list (loaded lazily on the first scrub)."""
    code = ("import features.notes, features._gazetteer as g; "
            "assert g.first_names.cache_info().currsize == 0; "
            "features.notes.scrub_phi('Spoke with Maria.'); "
            "assert g.first_names.cache_info().currsize == 1")
    root = Path(__file__).parents[2]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


HELDOUT = Path(__file__).parent / "data" / "phi_names_heldout.json"


def test_heldout_corpus_written_after_the_rules():
    """A second corpus, written after the rules were frozen: 28 of 30 name spans, no false positive."""
    d = json.loads(HELDOUT.read_text(encoding="utf-8"))
    texts = [e["text"] for e in d["positive"]]
    sc = score_name_spans(texts, [e["names"] for e in d["positive"]], scrub_phi(texts))
    # first scored at 28/30 (misses: a first name outside the 1990 Census lists, and a
    # name whose only cue is a bare age); no rule was tuned on these snippets
    assert int(sc["removed"].sum()) >= 28 and len(sc) == 30
    assert (sc.loc[sc["removed"], "n_name_tags"] == 1).all()
    assert (sc["lost"] == "").all()  # "Son Kevin": only the name goes
    neg = [e["text"] for e in d["negative"]]
    assert scrub_phi(neg) == neg
