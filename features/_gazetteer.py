"""Name gazetteer and word lists for :func:`features.notes.scrub_phi` (loaded lazily, once).

The first names and surnames are the 1990 US Census lists (public domain; see
``features/data/README.md``). Being in the gazetteer is evidence, not proof: many first
names are also English or clinical words ("Will", "May", "Grant", "Iris", "Brain"), so
:data:`AMBIGUOUS` lists the ones that are never taken alone; they still count inside a
"First Last" pair whose surname is in the gazetteer ("Will Parker") or after a cue.
"""
from __future__ import annotations

import gzip
from functools import lru_cache
from pathlib import Path

__all__ = ["first_names", "surnames", "AMBIGUOUS", "EPONYM_NOUNS", "INSTITUTION_WORDS", "PARTICLES"]

_DATA = Path(__file__).resolve().parent / "data"

# Name particles absorbed into the surname that follows ("Jan van der Berg", "Maria de la
# Cruz", "Anna Di Marco"); "al-"/"el-" prefixes are part of the token ("al-Rashid").
PARTICLES = frozenset("""
van von der den de del della dei degli di da dos das du le la les st st. ten ter bin ibn bint
""".split())

# First names (Census 1990) that are also common English, clinical or place words: never a
# name on their own without a cue. Lower case.
AMBIGUOUS = frozenset("""
january february march april may june july august september october november december
jan feb mar apr jun jul aug sep sept oct nov dec
monday tuesday wednesday thursday friday saturday sunday
will may mark grant bill rose faith hope joy dawn gene art sue pat don ray frank guy bob sandy
summer autumn winter spring season iris ivy lily page chase drew miles jack rich max major
young long bell brown white black green gray grey walker hall king wood stone
an in so see else many man miss son star love song sun moon soon tiny brain forest chance
golden numbers manual angle alpha delta omega echo carry lean hang dot min val meta nan
royal prince princess queen lady junior era marine temple noble liberty trinity genesis
glory mercy charity patience grace honey crystal diamond cherry olive maple violet coral
jade sage ruby pearl amber jewel velvet scarlet ivory flora fern
laurel willow magnolia rosemary blossom sunshine sunny stormy misty windy rocky dusty rusty
buck sterling clay cliff dale lane ward chase hunter
dean earl baron duke major marshal bishop deacon
desire destiny harmony melody echo aura karma fairy bunny kitty candy ginger sugar
precious happy lucky easter christmas valentine story
christian german roman irish france paris china india america asia israel
virginia carolina georgia florida dakota nevada indiana maryland alberta victoria sydney
houston dallas denver cleveland phoenix austin lincoln madison jackson clinton franklin
washington jefferson columbus raleigh savannah geneva venice milan adelaide
angeles francisco santa santo diego
vita venus minerva athena marvel porsche mercedes tequila sparkle beau belle
rich bud dusty kit hank hal ike bo jc wm
sal
doc
""".split())

# Nouns that make the capitalised word in front of them an eponym or a term, not a
# person ("Miller Fisher syndrome", "Marcus Gunn pupil", "Wilson's disease").
EPONYM_NOUNS = frozenset("""
disease diseases syndrome syndromes sign signs palsy phenomenon criteria scale scales score
scores test tests lymphoma reflex reflexes maneuver manoeuvre classification questionnaire
index type ataxia aphasia pupil pupils chorea dementia encephalopathy neuropathy neuralgia
myopathy dystrophy tumor tumour cyst fracture law rule procedure operation method technique
approach triad nucleus area areas gland glands duct ducts cell cells body bodies node nodes
questionnaire inventory battery task assessment effect curve equation model
""".split())

# Words that make a capitalised run an institution or a place, not a person
# ("Christian Brothers Hospital", "St. Joseph Medical Center").
INSTITUTION_WORDS = frozenset("""
Hospital Hospitals Clinic Clinics Center Centre Medical Health Healthcare University College
School Institute Foundation Pharmacy Laboratory Laboratories Lab Labs Church Street Avenue
Road Boulevard County City Park Memorial General Regional Community Rehabilitation Rehab
Nursing Home Hospice Insurance Inc Corp Company Group Associates Partners Society Association
""".split())


def _load(fname: str) -> frozenset[str]:
    with gzip.open(_DATA / fname, "rt", encoding="ascii") as f:
        return frozenset(line.strip() for line in f if line.strip())


@lru_cache(maxsize=1)
def first_names() -> frozenset[str]:
    """Lower-case first names of the 1990 US Census lists (female and male; 5,163)."""
    return _load("census1990_first.txt.gz")


@lru_cache(maxsize=1)
def surnames() -> frozenset[str]:
    """Lower-case surnames: the 20,000 most frequent of the 1990 US Census list."""
    return _load("census1990_last.txt.gz")
