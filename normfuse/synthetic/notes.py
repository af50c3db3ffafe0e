"""Simulated clinical notes: one neurology note per study visit.

Each note is assembled from varied templates (section by section; templates are chosen
at random) and carries:

* severity cues that track the visit's EDSS band: independent gait (EDSS <= 1.5),
  mild imbalance / fatigue with long walks (2-3.5), limited walking distance (4-5.5),
  cane or walker (6-6.5; "b/l support"), wheelchair ("w/c", >= 7);
* symptom sentences whose probability rises with the latent EDSS: bladder urgency
  ``logistic(-3 + 0.7 L)``, fatigue ``logistic(-1 + 0.4 L)``, falls
  ``logistic(-3.5 + 0.6 L)``; when absent they are negated ("denies falls", "no bladder
  sx") in 70 % of notes and omitted otherwise - so a negated cue is *not* evidence;
* relapse sentences at visits with a relapse since the previous visit;
* abbreviations (pt, hx, b/l, w/c, f/u, sx) and typos (``typo_rate`` of sentences have
  two adjacent letters swapped);
* PHI-like tokens: the patient's full name, date of birth, MRN ("MRN: 00123456" and
  variants), phone numbers in four formats, e-mail, street address, the clinician's
  name and the visit date. Every planted token is listed in ``truth.phi`` (one row per
  token: ``note_row``, ``kind``, ``token``) so a scrubber's recall can be measured.
"""
from __future__ import annotations

import string

import numpy as np
import pandas as pd

from normfuse.synthetic._util import StringDType, str_array, take_str

__all__ = ["simulate_notes", "empty_notes", "PHI_KINDS"]

PHI_KINDS = ("name", "dob", "mrn", "phone", "email", "address", "date")

_FIRST = ("James", "Mary", "Robert", "Patricia", "John", "Jennifer", "Michael", "Linda",
          "David", "Elizabeth", "William", "Barbara", "Richard", "Susan", "Joseph", "Jessica",
          "Thomas", "Sarah", "Charles", "Karen", "Daniel", "Nancy", "Matthew", "Lisa",
          "Anthony", "Margaret", "Mark", "Sandra", "Steven", "Ashley", "Andrew", "Emily",
          "Joshua", "Michelle", "Kevin", "Amanda", "Brian", "Melissa", "Olga", "Priya")
_LAST = ("Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis",
         "Rodriguez", "Martinez", "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson",
         "Thomas", "Taylor", "Moore", "Jackson", "Martin", "Lee", "Perez", "Thompson", "White",
         "Harris", "Sanchez", "Clark", "Ramirez", "Lewis", "Robinson", "Walker", "Young",
         "Allen", "King", "Wright", "Scott", "Nguyen", "Hill", "Kowalski", "Okafor")
_STREETS = ("Maple", "Oak", "Cedar", "Elm", "Washington", "Lake", "Hill", "Park", "Pine",
            "Main", "Church", "Highland", "Sunset", "Franklin", "Chestnut", "Walnut")
_SUFFIX = ("St", "Ave", "Rd", "Blvd", "Lane", "Drive", "Court", "Way")
_CITIES = (("Springfield", "IL"), ("Riverside", "CA"), ("Franklin", "TN"),
           ("Greenville", "SC"), ("Bristol", "CT"), ("Clinton", "IA"), ("Fairview", "OR"),
           ("Madison", "WI"), ("Georgetown", "TX"), ("Salem", "MA"), ("Arlington", "VA"),
           ("Dayton", "OH"))
_DOMAINS = ("gmail.com", "yahoo.com", "outlook.com", "icloud.com", "aol.com", "mail.com")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")

_HEADER = (
    "{name} (MRN: {mrn}) seen in neurology clinic on {date}.",
    "Pt {name}, DOB {dob}, MRN#{mrn}, returns for MS f/u on {date}.",
    "NEUROLOGY FOLLOW-UP {date}\nPatient: {name}   MRN: {mrn}   DOB: {dob}",
    "Follow-up visit {date} for {name} (mrn {mrn}), a pt with MS.",
    "{date} - MS clinic. {name}, DOB: {dob}.",
)
_HISTORY = (
    "Hx of relapsing MS; DMT: {dmt}.",
    "Pt has a history of multiple sclerosis. Current treatment: {dmt}.",
    "MS dx some years ago; current DMT: {dmt}.",
    "Known MS. Therapy: {dmt}.",
)
_GAIT = (
    ("Ambulates independently without difficulty.", "Gait normal, tandem intact.",
     "Walks unassisted, no gait issues reported."),
    ("Mild gait imbalance, walks independently.", "Slight unsteadiness on tandem gait.",
     "Reports mild difficulty with long walks, no aid."),
    ("Walking distance limited to ~300 m without rest.", "Spastic gait, no assistive device yet.",
     "Can walk about 200m before needing to stop."),
    ("Uses a cane for ambulation.", "Requires unilateral assistance (cane) to walk 100 m.",
     "Ambulates w/ b/l support (walker)."),
    ("Wheelchair bound, transfers with help.", "Uses w/c for most mobility.",
     "Restricted to wheelchair; limited transfers."),
)
_BLADDER = (("Reports bladder urgency and frequency.", "Urinary urgency w/ occasional incontinence."),
            ("Denies bladder sx.", "No bladder symptoms."))
_FATIGUE = (("Complains of significant fatigue.", "Fatigue limiting daily activities."),
            ("Denies fatigue.", "No fatigue reported."))
_FALLS = (("Reports falls since last visit.", "Had 2 falls in the past month."),
          ("Denies falls.", "No falls since last visit."))
_RELAPSE = (("Reports new numbness in R leg a few wks ago, treated w/ steroids.",
             "Interval relapse w/ visual blurring, received IV methylprednisolone."),
            ("No new relapses since last visit.", "Denies new sx.", ""))
_CONTACT = (
    "Call pt at {phone} or email {email} with results.",
    "Contact: {phone}. Address: {address}.",
    "Pt lives at {address}; best number {phone}.",
    "Results to be sent to {email}. Attending: Dr. {clinician}.",
    "Seen with Dr. {clinician}. Phone {phone}.",
)
_PLAN = ("Plan: continue current therapy, f/u in 6 months.",
         "Plan: PT referral, recheck labs, RTC 6 mo.",
         "Therapy reviewed ({dmt}). MRI brain before next visit.",
         "Plan discussed with pt; f/u as scheduled.")

# which template fields are PHI, and their kind
_PHI_FIELD_KIND = {"name": "name", "dob": "dob", "mrn": "mrn", "phone": "phone",
                   "email": "email", "address": "address", "date": "date",
                   "clinician": "name"}


def _typo(sentence: str) -> str:
    """Swap two adjacent letters in the middle of the longest word (deterministic)."""
    words = sentence.split(" ")
    j = max(range(len(words)), key=lambda i: (sum(c.isalpha() for c in words[i]), -i))
    w = words[j]
    if sum(c.isalpha() for c in w) < 4:
        return sentence
    m = len(w) // 2
    words[j] = w[: m - 1] + w[m] + w[m - 1] + w[m + 1:]
    return " ".join(words)


def _render(templates, choice, fields, phi_out, note_rows, typo=None):
    """Fill ``templates[choice[i]]`` with ``fields`` for every row (pyarrow, one pass per template).

    Rows are grouped by template (a stable sort), each group is rendered with one
    vectorised string join, and the groups are put back in row order.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    fmt = string.Formatter()
    n = choice.size
    if typo is not None:
        templates = tuple(templates) + tuple(_typo(s) for s in templates)
        choice = choice + len(templates) // 2 * typo
    order = np.argsort(choice, kind="stable")
    counts = np.bincount(choice, minlength=len(templates))
    bounds = np.concatenate([[0], np.cumsum(counts)])
    blocks = []
    for k, tpl in enumerate(templates):
        if counts[k] == 0:
            continue
        rows = order[bounds[k]:bounds[k + 1]]
        rows_pa = pa.array(rows)
        pieces = []
        for literal, fname, _, _ in fmt.parse(tpl):
            if literal:
                pieces.append(pa.scalar(literal))
            if fname:
                val = fields[fname].take(rows_pa)
                pieces.append(val)
                kind = _PHI_FIELD_KIND.get(fname)
                if kind is not None:
                    phi_out.append((note_rows[rows], kind, val))
        if any(isinstance(x, pa.Array) for x in pieces):
            blocks.append(pc.binary_join_element_wise(*pieces, ""))
        else:
            blocks.append(pa.array([tpl] * int(counts[k]), type=pa.string()))
    inv = np.empty(n, dtype=np.int64)
    inv[order] = np.arange(n)
    if not blocks:
        return pa.array([""] * n, type=pa.string())
    return pa.concat_arrays(blocks).take(pa.array(inv))


def _fmt_dates(days: np.ndarray, style: np.ndarray):
    """Dates (datetime64[D]) as '03/14/1981', '1981-03-14' or 'March 14, 1981' by ``style``.

    Only the distinct (day, style) pairs are formatted; rows take their string from them.
    """
    import pyarrow as pa

    key = days.astype(np.int64) * 3 + style
    inv, uniq = pd.factorize(key)
    d = (uniq // 3).astype("datetime64[D]")
    st = uniq % 3
    iso = np.datetime_as_string(d, unit="D")
    y = np.strings.slice(iso, 0, 4)
    m = np.strings.slice(iso, 5, 7)
    dd = np.strings.slice(iso, 8, 10)
    us = np.strings.add(np.strings.add(np.strings.add(m, "/"), np.strings.add(dd, "/")), y)
    month = np.asarray(_MONTHS)[m.astype(np.int64) - 1] if m.size else m
    long = np.strings.add(np.strings.add(np.strings.add(month, " "), np.strings.lstrip(dd, "0")),
                          np.strings.add(", ", y))
    out = np.where(st == 0, us, np.where(st == 1, iso, long)).astype(str)
    return pa.array(out).take(pa.array(inv))


def _digits(rng, n, width):
    return np.strings.zfill(rng.integers(0, 10**width, n).astype(StringDType()), width)


def simulate_notes(rng: np.random.Generator, ctx, encounters: pd.DataFrame, *,
                   typo_rate: float = 0.05):
    """One note per clinic visit; returns ``(notes, phi, truth)``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from normfuse.synthetic.cohort import DMT_NAMES

    if not 0 <= typo_rate <= 1:
        raise ValueError(f"simulate_cohort: typo_rate={typo_rate} must be in [0, 1].")
    S = StringDType()
    P = ctx.pid.size
    add = np.strings.add

    def cat(*xs):
        acc = xs[0]
        for x in xs[1:]:
            acc = add(acc, x)
        return acc

    # per-patient identity (P strings each)
    first = np.asarray(_FIRST, dtype=S)[rng.integers(0, len(_FIRST), P)]
    last = np.asarray(_LAST, dtype=S)[rng.integers(0, len(_LAST), P)]
    name = cat(first, " ", last)
    mrn = _digits(rng, P, 8)
    area = rng.integers(201, 990, P).astype(S)
    exch = rng.integers(200, 999, P).astype(S)
    line = _digits(rng, P, 4)
    email = np.strings.lower(cat(first, ".", last, rng.integers(1, 99, P).astype(S), "@",
                                 np.asarray(_DOMAINS, dtype=S)[rng.integers(0, len(_DOMAINS), P)]))
    city = np.asarray([f"{c}, {st} " for c, st in _CITIES], dtype=S)[
        rng.integers(0, len(_CITIES), P)]
    address = cat(rng.integers(1, 9999, P).astype(S), " ",
                  np.asarray(_STREETS, dtype=S)[rng.integers(0, len(_STREETS), P)], " ",
                  np.asarray(_SUFFIX, dtype=S)[rng.integers(0, len(_SUFFIX), P)], ", ", city,
                  _digits(rng, P, 5))
    phones = [cat("(", area, ") ", exch, "-", line), cat(area, "-", exch, "-", line),
              cat(area, ".", exch, ".", line), cat("+1 ", area, " ", exch, " ", line)]
    clin_last = np.asarray(_LAST, dtype=S)[rng.integers(0, len(_LAST), 6)]

    # one note per visit (the visit's clinic encounter)
    clinic = encounters.loc[encounters["visit_row"].to_numpy() >= 0]
    vrow = clinic["visit_row"].to_numpy()
    pat = ctx.vpat[vrow]
    n = vrow.size
    note_rows = np.arange(n)
    pat_pa = pa.array(pat)

    def per_note(arr):
        return pa.array(arr).take(pat_pa)

    pstyle = rng.integers(0, 4, n)
    phone = per_note(phones[3])
    for k in (2, 1, 0):
        phone = pc.if_else(pa.array(pstyle == k), per_note(phones[k]), phone)
    dmt_names = [d if d != "none" else "none" for d in DMT_NAMES]
    fields = {
        "name": per_note(name), "mrn": per_note(mrn), "phone": phone,
        "email": per_note(email), "address": per_note(address),
        "dob": _fmt_dates(ctx.birth.astype("datetime64[D]")[pat], rng.integers(0, 3, n)),
        "date": _fmt_dates(ctx.vdate[vrow].astype("datetime64[D]"), rng.integers(0, 3, n)),
        "clinician": pa.array(clin_last).take(pa.array(rng.integers(0, clin_last.size, n))),
        "dmt": pa.array(dmt_names).take(pa.array(ctx.dmt_idx[pat])),
    }
    phi: list = []
    edss = ctx.edss[vrow]
    latent = ctx.latent[vrow]
    band = np.select([edss <= 1.5, edss <= 3.5, edss <= 5.5, edss <= 6.5], [0, 1, 2, 3], 4)

    def typo():
        return (rng.random(n) < typo_rate).astype(np.int64)

    def pick(k):
        return rng.integers(0, k, n)

    parts = [
        _render(_HEADER, pick(len(_HEADER)), fields, phi, note_rows),
        _render(_HISTORY, pick(len(_HISTORY)), fields, phi, note_rows, typo()),
    ]
    gait_t = tuple(s_ for b in _GAIT for s_ in b)
    parts.append(_render(gait_t, band * 3 + pick(3), fields, phi, note_rows, typo()))
    cue_truth = {}
    empty = pa.scalar("")
    for cname, tpls, (a0, a1) in (("bladder", _BLADDER, (-3.0, 0.7)),
                                  ("fatigue", _FATIGUE, (-1.0, 0.4)),
                                  ("falls", _FALLS, (-3.5, 0.6))):
        present = rng.random(n) < 1 / (1 + np.exp(-(a0 + a1 * latent)))
        negate = ~present & (rng.random(n) < 0.7)
        choice = np.where(present, pick(2), 2 + pick(2))
        txt = _render(tpls[0] + tpls[1], choice, fields, phi, note_rows, typo())
        parts.append(pc.if_else(pa.array(present | negate), txt, empty))
        cue_truth[cname] = {"model": f"logistic({a0} + {a1} * latent EDSS)",
                            "present_fraction": float(present.mean())}
    rel = ctx.relapse_flag[vrow]
    parts.append(_render(_RELAPSE[0] + _RELAPSE[1], np.where(rel, pick(2), 2 + pick(3)),
                         fields, phi, note_rows, typo()))
    parts.append(_render(_PLAN, pick(len(_PLAN)), fields, phi, note_rows, typo()))
    parts.append(_render(_CONTACT, pick(len(_CONTACT)), fields, phi, note_rows))
    # join the non-empty sections, each followed by a space or (20 %) a line break
    joined = []
    for p_ in parts:
        sep = pa.array(np.where(rng.random(n) < 0.2, "\n", " "))
        joined.append(pc.if_else(pc.greater(pc.utf8_length(p_), 0),
                                 pc.binary_join_element_wise(p_, sep, ""), empty))
    text = pc.utf8_trim_whitespace(pc.binary_join_element_wise(*joined, ""))

    notes = pd.DataFrame({
        "patient_id": take_str(ctx.pid, pat),
        "time": clinic["end"].to_numpy(),
        "text": pd.arrays.ArrowStringArray(text),
        "encounter_id": clinic["encounter_id"].to_numpy(),
    })
    if phi:
        phi_df = pd.DataFrame({
            "note_row": np.concatenate([p_[0] for p_ in phi]),
            "kind": take_str(PHI_KINDS, np.repeat([PHI_KINDS.index(p_[1]) for p_ in phi],
                                                  [p_[0].size for p_ in phi])),
            "token": pd.arrays.ArrowStringArray(pa.concat_arrays([p_[2] for p_ in phi])),
        })
    else:
        phi_df = empty_notes()[1]
    truth = {
        "severity_bands": {"0-1.5": "independent gait", "2-3.5": "mild imbalance",
                           "4-5.5": "limited walking distance", "6-6.5": "cane or walker",
                           ">=7": "wheelchair"},
        "gait_templates": {f"band{b}": list(s_) for b, s_ in enumerate(_GAIT)},
        "symptom_cues": cue_truth,
        "negations": [s_ for t in (_BLADDER, _FATIGUE, _FALLS) for s_ in t[1]],
        "negated_cue_fraction_when_absent": 0.7,
        "abbreviations": {"pt": "patient", "hx": "history", "b/l": "bilateral",
                          "w/c": "wheelchair", "f/u": "follow-up", "sx": "symptoms",
                          "RTC": "return to clinic", "dx": "diagnosis"},
        "typo_rate": typo_rate,
        "phi_kinds": list(PHI_KINDS),
        "phi_order": "phi rows are grouped by note section, not sorted by note",
    }
    return notes, phi_df, truth


def empty_notes():
    """The ``(notes, phi, truth)`` of a cohort simulated with ``notes=False``."""
    e = str_array(np.array([], dtype=str))
    notes = pd.DataFrame({"patient_id": e, "time": np.array([], "datetime64[ns]"), "text": e,
                          "encounter_id": np.array([], np.int64)})
    phi = pd.DataFrame({"note_row": np.array([], int), "kind": e, "token": e})
    return notes, phi, {}
