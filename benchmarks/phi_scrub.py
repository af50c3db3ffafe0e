"""Benchmark: PHI scrubbing (simulator notes and a hand-written name corpus: recall, false positives, speed).

Usage::

    python benchmarks/phi_scrub.py            # 200 patients (seed 3), about 1,600 notes
    python benchmarks/phi_scrub.py --quick    # 60 patients

Reports, against ``truth.phi`` of ``normfuse.synthetic.simulate_cohort``: recall per
planted kind, surviving name parts (first name or surname alone), the false-positive
rate (words outside any planted token that the scrubber removed), planted name parts in
a fitted TF-IDF vocabulary, and notes scrubbed per second. Then, on the hand-written
adversarial corpus ``tests/features/data/phi_names_adversarial.json`` (names without cues,
with particles, in lower case or ALL CAPS; no-name snippets with eponyms, drugs, months,
common words, places, headings): name-span recall, spans left as more than one
placeholder, and false positives per kind of trap. Prints only.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from features.notes import NoteEmbedder, scrub_phi  # noqa: E402
from normfuse.synthetic import simulate_cohort  # noqa: E402
from normfuse.synthetic.phi_audit import lost_words, score_name_spans  # noqa: E402
from normfuse.synthetic.phi_audit import survives as _survives  # noqa: E402

log = logging.getLogger("benchmarks.phi_scrub")
CORPUS = Path(__file__).resolve().parents[1] / "tests" / "features" / "data" / "phi_names_adversarial.json"
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")


def measure(n_patients: int, seed: int) -> dict:
    """Scrub the notes of a simulated cohort and score the result against its truth."""
    c = simulate_cohort(n_patients=n_patients, seed=seed)
    notes, phi = c.notes, c.truth.phi
    texts = notes["text"].tolist()
    t0 = time.perf_counter()
    out = scrub_phi(texts)
    secs = time.perf_counter() - t0
    rows, kinds, toks = phi["note_row"].to_numpy(), phi["kind"].to_numpy(dtype=object), phi["token"].tolist()
    miss = np.array([_survives(t, out[r]) for r, t in zip(rows, toks, strict=True)])
    recall = (1 - pd.Series(miss).groupby(kinds).mean()).to_dict()
    parts = [(r, p) for r, k, t in zip(rows, kinds, toks, strict=True) if k == "name" for p in t.split()]
    left = sum(_survives(p, out[r]) for r, p in parts)
    lost, total = lost_words(texts, out, phi)
    masked = list(texts)
    for r, t in zip(rows, toks, strict=True):
        masked[r] = masked[r].replace(t, " ")
    lower_clinical = {w for m in masked for w in _WORD.findall(m) if w.islower()}
    names = {p.lower() for _, p in parts} - lower_clinical
    vocab = set(NoteEmbedder("tfidf", n_components=16).fit(notes).vectorizer_.vocabulary_)
    return {"notes": len(texts), "planted": len(phi), "recall": recall,
            "overall_recall": float(1 - miss.mean()), "name_parts": len(parts), "name_parts_left": int(left),
            "words_outside_phi": total, "words_lost": int(sum(lost.values())),
            "false_positive_rate": sum(lost.values()) / max(total, 1), "lost_examples": lost.most_common(5),
            "name_parts_in_vocab": sorted(names & vocab),
            "name_bigrams_in_vocab": sorted(t for t in vocab if " " in t and all(w in names for w in t.split())),
            "notes_per_s": len(texts) / secs}


HELDOUT = CORPUS.with_name("phi_names_heldout.json")


def measure_adversarial(path: Path = CORPUS) -> dict:
    """Score the scrubber on the hand-written corpus of name spans and no-name traps."""
    corpus = json.loads(path.read_text(encoding="utf-8"))
    pos, neg = corpus["positive"], pd.DataFrame(corpus["negative"])
    texts = [e["text"] for e in pos]
    out = scrub_phi(texts)
    sc = score_name_spans(texts, [e["names"] for e in pos], out)
    one = sc.loc[sc["removed"]].groupby("note_row").first()
    nout = scrub_phi(neg["text"].tolist())
    fp = pd.Series(["[NAME]" in o for o in nout], index=neg.index)
    kept = pd.Series([all(k in o for k in ks) for ks, o in zip(neg["keep"], nout, strict=True)])
    return {"snippets_with_names": len(pos), "name_spans": len(sc),
            "span_recall": float(sc["removed"].mean()),
            "spans_missed": sc.loc[~sc["removed"], "span"].tolist(),
            "notes_not_one_tag_per_name": int((one["n_name_tags"] != one["n_spans"]).sum()),
            "words_lost_beside_names": int(sum(len(x.split()) for x in sc.drop_duplicates("note_row")["lost"])),
            "snippets_without_names": len(neg),
            "false_positive_snippets_by_trap": fp.groupby(neg["trap"]).agg(["sum", "size"])
            .apply(lambda r: f"{int(r['sum'])} of {int(r['size'])}", axis=1).to_dict(),
            "trap_words_lost": int((~kept).sum())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="60 patients instead of 200")
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    res = measure(60 if args.quick else 200, args.seed)
    log.info("== simulator notes (normfuse.synthetic, seed %d)", args.seed)
    for k, v in res.items():
        log.info("%s: %s", k, v)
    for title, path in (("hand-written adversarial name corpus", CORPUS),
                        ("held-out corpus, written after the rules were frozen", HELDOUT)):
        log.info("== %s (%s)", title, path.name)
        for k, v in measure_adversarial(path).items():
            log.info("%s: %s", k, v)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
