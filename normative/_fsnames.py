"""Region names: FreeSurfer 7 harmonisation, the shipped label table, longitudinal ids.

Private helpers of :mod:`normative.freesurfer`; the public names are re-exported there.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from importlib import resources

__all__ = ["harmonise_region_names", "load_label_table", "split_long_id", "synthseg_name_map"]

# Renames from FreeSurfer 5.x/6.x (and SynthSeg/segmentation styles) to FreeSurfer 7.
# Thalamus: FS7 relabelled "Left-Thalamus-Proper" (id 10) to "Left-Thalamus".
# Whole-brain measures: FS5 wrote "IntraCranialVol" (ICV, already the talairach eTIV
# estimate) and "*CorticalWhiteMatterVol", renamed in FS6 to "EstimatedTotalIntraCranialVol"
# (short name eTIV) and "*CerebralWhiteMatterVol". asegstats2table writes the long
# "EstimatedTotalIntraCranialVol"; aseg.stats and aparcstats2table use "eTIV": we use eTIV.
_FS7_RENAMES: dict[str, str] = {
    "Left-Thalamus-Proper": "Left-Thalamus",
    "Right-Thalamus-Proper": "Right-Thalamus",
    "EstimatedTotalIntraCranialVol": "eTIV",
    "IntraCranialVol": "eTIV",
    "lhCorticalWhiteMatterVol": "lhCerebralWhiteMatterVol",
    "rhCorticalWhiteMatterVol": "rhCerebralWhiteMatterVol",
    "CorticalWhiteMatterVol": "CerebralWhiteMatterVol",
}

_CTX = re.compile(r"^ctx[-_]([lr]h)[-_](.+)$")
_LONG = re.compile(r"^(?P<tp>.+?)\.long\.(?P<base>.+)$")
_BASE_SUFFIX = re.compile(r"[._-]?base$", re.IGNORECASE)


@lru_cache(maxsize=1)
def load_label_table() -> dict[int, tuple[str, str]]:
    """Return ``{label id: (FreeSurfer 7 name, SynthSeg name or "")}`` from the shipped table.

    The table (``normative/data/freesurfer_labels.tsv``) holds the ids found in
    ``aseg.mgz`` and ``aparc+aseg.mgz``: 0-85, 251-255 and the Desikan-Killiany cortical
    parcels 1000-1035 / 2000-2035, with names from FreeSurfer 7's ``FreeSurferColorLUT.txt``.
    """
    text = resources.files("normative").joinpath("data/freesurfer_labels.tsv").read_text("utf-8")
    out: dict[int, tuple[str, str]] = {}
    header_seen = False
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        if not header_seen:
            header_seen = True
            continue
        parts = line.split("\t")
        out[int(parts[0])] = (parts[1], parts[2] if len(parts) > 2 else "")
    return out


@lru_cache(maxsize=1)
def synthseg_name_map() -> dict[str, str]:
    """SynthSeg structure name (lower case, e.g. ``left thalamus``) -> FreeSurfer 7 name."""
    return {ss.lower(): fs for fs, ss in load_label_table().values() if ss}


def _harmonise_one(name: str) -> str:
    new = _FS7_RENAMES.get(name)
    if new is not None:
        return new
    m = _CTX.match(name)
    if m:
        return f"{m.group(1)}_{m.group(2)}_volume"
    ss = synthseg_name_map().get(name.lower()) if name[:1].islower() or " " in name else None
    if ss is not None:
        return ss
    return name


@lru_cache(maxsize=4096)
def _harmonise_cached(name: str) -> str:
    return _harmonise_one(name)


def harmonise_region_names(names: Iterable[str] | str) -> list[str] | str:
    """Map FreeSurfer 5/6, SynthSeg and segmentation-style region names to FreeSurfer 7 names.

    The volumes table names regions as FreeSurfer 7 does; this function is how every reader
    gets there, and how users align an older table (``df.rename(columns=dict(zip(cols,
    harmonise_region_names(cols))))``). Names already in FreeSurfer 7 style pass unchanged.

    Renames applied:

    * ``Left-Thalamus-Proper`` / ``Right-Thalamus-Proper`` (FS <= 6) -> ``Left-Thalamus`` /
      ``Right-Thalamus``;
    * whole-brain measures: ``EstimatedTotalIntraCranialVol`` and FS 5.x ``IntraCranialVol``
      -> ``eTIV``; FS 5.x ``lhCorticalWhiteMatterVol``/``rhCorticalWhiteMatterVol``/
      ``CorticalWhiteMatterVol`` -> ``...CerebralWhiteMatterVol``;
    * SynthSeg names (``left thalamus``, ``brain-stem``, ``left ventral DC``, ...) -> the
      FreeSurfer 7 name of the same label id (``Left-Thalamus``, ``Brain-Stem``,
      ``Left-VentralDC``);
    * segmentation cortical parcels ``ctx-lh-<name>`` -> ``lh_<name>_volume`` (the
      aparcstats2table column style; the value is a voxel/soft volume, which the
      ``volume_kind`` column records).

    Parameters
    ----------
    names : iterable of str, or str
        Region or column names.

    Returns
    -------
    list of str, or str
        Harmonised names in the same order (a str when a single str was given).

    Examples
    --------
    >>> harmonise_region_names(["Left-Thalamus-Proper", "left ventral DC", "ctx-rh-insula"])
    ['Left-Thalamus', 'Left-VentralDC', 'rh_insula_volume']
    >>> harmonise_region_names("IntraCranialVol")
    'eTIV'
    """
    if isinstance(names, str):
        return _harmonise_cached(names)
    return [_harmonise_cached(str(n)) for n in names]


def split_long_id(long_id: str) -> tuple[str, str | None]:
    """Split a FreeSurfer longitudinal id ``<timepoint>.long.<base>`` into (subject, session).

    The subject is the base (template) id with a trailing ``base``/``_base`` removed; the
    session is the timepoint id with a leading ``<subject>`` plus one separator (``_``,
    ``-`` or ``.``) removed. Ids that are not longitudinal return ``(long_id, None)``.

    Parameters
    ----------
    long_id : str
        A subject folder name or table row id.

    Returns
    -------
    (subject_id, session_id) : tuple of str and str or None

    Examples
    --------
    >>> split_long_id("13900_01.long.13900_base")
    ('13900', '01')
    >>> split_long_id("sub-01_ses-02.long.sub-01")
    ('sub-01', 'ses-02')
    >>> split_long_id("bert")
    ('bert', None)
    """
    m = _LONG.match(long_id)
    if not m:
        return long_id, None
    tp, base = m.group("tp"), m.group("base")
    subject = _BASE_SUFFIX.sub("", base) or base
    session = tp
    if tp.startswith(subject) and len(tp) > len(subject) + 1 and tp[len(subject)] in "_-.":
        session = tp[len(subject) + 1:]
    return subject, session


def labels_to_names(ids: Iterable[int], labels: Mapping[int, str] | None = None) -> list[str | None]:
    """Names of label ids (shipped table or ``labels``), harmonised; None when unknown."""
    if labels is None:
        table = load_label_table()
        raw = [table[i][0] if i in table else None for i in ids]
    else:
        raw = [labels.get(i) for i in ids]
    return [None if r is None else _harmonise_cached(r) for r in raw]
