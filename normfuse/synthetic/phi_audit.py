"""Score a PHI scrubber on the simulator's notes against their planted PHI (``truth.phi``).

Used by the tests and ``benchmarks/phi_scrub.py``:

- :func:`survives`: does a planted token (or a part of it) still occur in the text?
- :func:`lost_words`: words outside every planted token that the scrubber removed
  (its false positives), counted against all such words.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import pandas as pd

__all__ = ["survives", "lost_words", "score_name_spans"]

_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")
_PLACEHOLDER = re.compile(r"\[[A-Z]+\]")


def survives(token: str, text: str) -> bool:
    """True when ``token`` occurs in ``text`` as a whole word (not inside a longer word)."""
    return re.search(rf"(?<![\w]){re.escape(token)}(?![\w])", text) is not None


def lost_words(texts: Sequence[str], scrubbed: Sequence[str], phi: pd.DataFrame) -> tuple[Counter, int]:
    """Words outside planted PHI that the scrubber removed, and how many such words there were.

    ``phi`` has the columns ``note_row`` (index into ``texts``) and ``token``. Planted
    tokens are masked out of the original texts; placeholders such as ``[NAME]`` are
    ignored in the scrubbed ones. Returns ``(Counter of lost words, total words)``.
    """
    masked = list(texts)
    for row, tok in zip(phi["note_row"].to_numpy(), phi["token"].tolist(), strict=True):
        masked[row] = masked[row].replace(tok, " \x00 ")
    lost, total = Counter(), 0
    for raw, out in zip(masked, scrubbed, strict=True):
        before = Counter(_WORD.findall(raw))
        total += sum(before.values())
        lost += before - Counter(_WORD.findall(_PLACEHOLDER.sub(" ", out)))
    return lost, total


def score_name_spans(texts: Sequence[str], spans: Sequence[Sequence[str]],
                     scrubbed: Sequence[str]) -> pd.DataFrame:
    """Score name removal on notes whose exact name spans are known (one row per span).

    A span counts as removed when none of its words (``"Jan van der Berg"``: all four)
    survives in the scrubbed note more often than it occurs outside the spans in the
    original note. Columns: ``note_row``, ``span``, ``removed`` (bool), ``n_name_tags``
    (``[NAME]`` placeholders in the scrubbed note), ``n_spans`` (spans in the note) and
    ``lost`` (words outside the spans that the scrubber removed, ``" "``-joined).
    """
    rows = []
    for i, (text, names, out) in enumerate(zip(texts, spans, scrubbed, strict=True)):
        masked = text
        for n in sorted(names, key=len, reverse=True):  # with a possessive ("Anna's")
            masked = re.sub(rf"{re.escape(n)}(?:['\u2019]s\b)?", " \x00 ", masked)
        allowed = Counter(_WORD.findall(masked))
        after = Counter(_WORD.findall(_PLACEHOLDER.sub(" ", out)))
        lost = " ".join(sorted((allowed - after).elements()))
        n_tags = out.count("[NAME]")
        for n in names:
            removed = all(after[w] <= allowed[w] for w in _WORD.findall(n))
            rows.append({"note_row": i, "span": n, "removed": removed, "n_name_tags": n_tags,
                         "n_spans": len(names), "lost": lost})
    return pd.DataFrame(rows, columns=["note_row", "span", "removed", "n_name_tags", "n_spans", "lost"])
