"""Pipeline inputs: volume tables and SUBJECTS_DIRs, clinical sources (OMOP or files), digests.

Private: the public names live in :mod:`normfuse.pipeline`.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from normative._fsmeta import _SEX_WORDS, map_sex
from normative._fsmeta import _key as _code
from normfuse._pipeline_common import _KEYS, _need, _ns, log
from normfuse.errors import InputFormatError


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file, or of a folder's files (relative names and contents, sorted)."""
    p = Path(path)
    h = hashlib.sha256()
    if p.is_dir():
        for f in sorted(q for q in p.rglob("*") if q.is_file()):
            h.update(str(f.relative_to(p)).encode())
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    else:
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _read_plain_table(path: Path, what: str) -> pd.DataFrame:
    suf = path.suffix.lower()
    try:
        if suf == ".parquet":
            return pd.read_parquet(path)
        if suf in (".csv", ".tsv", ".txt"):
            return pd.read_csv(path, sep="\t" if suf in (".tsv", ".txt") else ",")
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise InputFormatError(f"{what} could not be read as a {suf} table ({exc}).",
                               path=path) from exc
    raise InputFormatError(f"{what} has suffix {suf!r}; expected .csv, .tsv, .txt or .parquet.",
                           path=path)


#: id columns read as ``subject_id`` when a table has no ``subject_id`` (BIDS participants.tsv
#: writes ``participant_id``; FCON1000/PCNtoolkit tables ``sub_id``).
ID_ALIASES = ("participant_id", "sub_id", "subject", "Subject", "SubjectID", "subjectID")
_SEX_FIX = ("State your study's coding: on the command line e.g. --sex-codes {ex}; in "
            "study.toml e.g. sex_codes = [{ex_toml}] in the section of this table.")


def parse_sex_codes(codes) -> dict[str, str] | None:
    """``["0=F", "1=M"]`` (or a mapping) -> ``{"0": "F", "1": "M"}``; None when empty.

    Raises
    ------
    InputFormatError : an item is not ``CODE=F`` or ``CODE=M``.
    """
    if not codes:
        return None
    items = codes.items() if isinstance(codes, Mapping) else None
    if items is None:
        items = []
        for c in codes:
            code, sep, val = str(c).partition("=")
            if not sep or not code.strip():
                raise InputFormatError(f"sex codes: {c!r} is not CODE=F or CODE=M; write e.g. "
                                       "0=F 1=M (FCON1000/PCNtoolkit coding).")
            items.append((code, val))
    out = {}
    for code, val in items:
        v = _SEX_WORDS.get(str(val).strip().lower())
        if v is None:
            raise InputFormatError(f"sex codes: {code}={val} maps to {val!r}; the value must be "
                                   "F or M, e.g. 0=F 1=M.")
        out[_code(code)] = v
    return out


def _rename_id(df: pd.DataFrame, path: Path, what: str) -> pd.DataFrame:
    if "subject_id" in df.columns:
        return df
    alias = next((a for a in ID_ALIASES if a in df.columns), None)
    if alias is None:
        return df
    log.info("%s: %s: column %r read as subject_id", what, path.name, alias)
    return df.rename(columns={alias: "subject_id"})


def _recode_sex(df: pd.DataFrame, codes: dict[str, str] | None, path: Path,
                what: str) -> pd.DataFrame:
    """Sex as 'F'/'M': text spellings are normalised; numeric codes need ``codes``."""
    if "sex" not in df.columns:
        return df
    raw = df["sex"].tolist()
    out, bad = map_sex(raw, codes)
    if bad is not None:
        keys = [_code(v) for v in raw]
        found = sorted({k for k in keys if k is not None})[:10]
        numeric = all(k.lstrip("-").replace(".", "", 1).isdigit() for k in found)
        ex = "1=M 2=F" if set(found) <= {"1", "2"} else "0=F 1=M"
        ex_toml = ", ".join(f'"{e}"' for e in ex.split())
        given = f" (sex codes given: {', '.join(f'{c}={s}' for c, s in codes.items())})" \
            if codes else ""
        raise InputFormatError(
            f"{what}: column 'sex' holds {raw[bad]!r} at row {bad + 2} (values found: "
            f"{found}){given}; accepted are F/M or female/male"
            + (", and numeric codes need their meaning stated, since studies differ (FCON1000 "
               "and PCNtoolkit use 0=F 1=M, others 1=M 2=F). " + _SEX_FIX.format(
                   ex=ex, ex_toml=ex_toml) if numeric else "; fix the values."), path=path)
    df = df.copy()
    df["sex"] = pd.array(out, dtype=object)
    return df


def _harmonise_plain(df: pd.DataFrame, path: Path, what: str,
                     codes: dict[str, str] | None) -> pd.DataFrame:
    """A plain .csv/.tsv/.parquet volumes table -> the volumes contract.

    ``participant_id``/``sub_id`` -> ``subject_id``; FreeSurfer 5/6 and SynthSeg region
    names -> FreeSurfer 7 (``Left-Thalamus-Proper`` -> ``Left-Thalamus``); ``eTIV`` /
    ``EstimatedTotalIntraCranialVol`` -> ``icv`` when there is no ``icv``; sex to F/M.
    """
    from normative.freesurfer import harmonise_region_names

    df = _rename_id(df, path, what)
    cols = [str(c) for c in df.columns]
    new = harmonise_region_names(cols)
    ren, drop = {}, []
    taken = set(cols)
    for old, nw in zip(cols, new, strict=True):
        if nw == old:
            continue
        if nw in taken:   # e.g. both eTIV and EstimatedTotalIntraCranialVol
            same = np.allclose(pd.to_numeric(df[old], errors="coerce").to_numpy(dtype=float),
                               pd.to_numeric(df[nw], errors="coerce").to_numpy(dtype=float),
                               equal_nan=True) if nw in df.columns else False
            if same:
                drop.append(old)
            continue
        ren[old] = nw
        taken.add(nw)
    if ren or drop:
        log.info("%s: %s: FreeSurfer 7 names for %d columns (%s)", what, path.name, len(ren),
                 ", ".join(f"{a} -> {b}" for a, b in list(ren.items())[:4]))
        df = df.drop(columns=drop).rename(columns=ren)
    if "icv" not in df.columns and "eTIV" in df.columns:
        log.info("%s: %s: icv taken from eTIV", what, path.name)
        # concat, not assign: a wide table read column by column is fragmented and
        # inserting into it warns (pandas 3 PerformanceWarning)
        df = pd.concat([df, pd.to_numeric(df["eTIV"], errors="coerce").rename("icv")], axis=1)
    return _recode_sex(df, codes, path, what)


def _check_matched(vols: pd.DataFrame, demo: pd.DataFrame, path: Path, what: str) -> None:
    """Every scan has a demographics row; else one message naming both id spellings."""
    by_ses = "session_id" in demo.columns
    def keys(df):
        s = [_code(v) for v in df["subject_id"].tolist()]
        return list(zip(s, [_code(v) for v in df["session_id"].tolist()], strict=True)) \
            if by_ses else s
    have = set(keys(demo))
    vk = keys(vols)
    miss = [k for k in vk if k not in have]
    if miss:
        on = "subject_id and session_id" if by_ses else "subject_id"
        raise InputFormatError(
            f"{what} demographics: {len(miss)} of {len(vk)} scans have no row here (matched on "
            f"{on}); scans: {miss[:5]}{' ...' if len(miss) > 5 else ''}, this table: "
            f"{list(keys(demo))[:5]}. Make the ids spelled alike in both (e.g. 'sub-01' vs "
            "'01')" + (", or drop session_id from the demographics to match on subject_id only"
                       if by_ses else "") + ".", path=path)


def _check_demo_columns(vols: pd.DataFrame, demo: pd.DataFrame, path: Path, what: str) -> None:
    """age, sex and site come from somewhere: the volumes or this table (near misses named)."""
    import difflib

    lacking = [c for c in ("age", "sex", "site") if c not in demo.columns
               and (c not in vols.columns or vols[c].isna().all())]
    if not lacking:
        return
    cols = list(map(str, demo.columns))
    hints = []
    for c in lacking:
        near = [x for x in cols if x.lower() == c] or difflib.get_close_matches(c, cols, n=1)
        if near:
            hints.append(f"{near[0]!r} -> {c!r}")
    fix = f"rename {', '.join(hints)}" if hints else f"add the column(s) {lacking}"
    raise InputFormatError(
        f"{what} demographics lacks {lacking} (columns: {cols[:10]}); {fix} (names are "
        "lower case: subject_id, session_id, age, sex, site, scan_date).", path=path)


def _iso_dates(values: pd.Series, path: Path, what: str):
    """scan_date as YYYY-MM-DD (ISO 8601); 03/04/2020 is refused, since day and month are
    ambiguous and a silent swap would misplace scans by months."""
    txt = values.astype("string")
    try:
        return _ns(pd.to_datetime(txt, format="ISO8601"))
    except (ValueError, TypeError):
        pass
    bad_i = None
    for i, v in enumerate(txt.tolist()):
        if v is None or v is pd.NA:
            continue
        try:
            pd.to_datetime(v, format="ISO8601")
        except (ValueError, TypeError):
            bad_i = i
            break
    val = txt.iloc[bad_i] if bad_i is not None else "?"
    raise InputFormatError(
        f"{what} demographics: column 'scan_date' holds {val!r}, which is not a YYYY-MM-DD "
        "date; write dates as YYYY-MM-DD (e.g. 2014-02-28): day/month orders differ between "
        "countries and a silent swap would misplace scans.", path=path)


def _split_session_folders(vols: pd.DataFrame) -> pd.DataFrame:
    """Split FreeSurfer folder names ``<subject>_<session>`` (``sub-01_ses-01``) into both ids."""
    if "session_id" in vols.columns and vols["session_id"].notna().any():
        return vols
    sid = vols["subject_id"].astype(str)
    parts = sid.str.extract(r"^(?P<sub>.+?)_(?P<ses>ses-[^_]+)$")
    if parts["sub"].notna().all():
        vols = vols.copy()
        vols["subject_id"] = parts["sub"].to_numpy(dtype=object)
        vols["session_id"] = parts["ses"].to_numpy(dtype=object)
    return vols


def read_volumes(paths: str | Sequence[str], demographics: str | None = None, *,
                 atlases: Sequence[str] = ("aseg", "aparc"), what: str = "volumes",
                 sex_codes=None, join: Sequence[str] = (),
                 where: Sequence[str] = (), config_section: str | None = None) -> pd.DataFrame:
    """Read a volumes table from a SUBJECTS_DIR or from volume tables, with demographics.

    Parameters
    ----------
    paths : a SUBJECTS_DIR / BIDS-derivatives folder, or one or more tables:
        ``asegstats2table``/``aparcstats2table`` outputs (``.txt``, read with
        :func:`normative.freesurfer.read_stats_table`), or ``.csv``/``.tsv``/``.parquet``
        tables in the volumes contract. Several tables are joined on ``subject_id``
        (and ``session_id``).
    demographics : table with ``subject_id`` (optional ``session_id``), ``age``, ``sex``,
        ``site`` and optionally ``scan_date``; filled in with
        :func:`normative.freesurfer.attach_demographics`.
    atlases : stats files read per scan from a SUBJECTS_DIR.
    what : name of these volumes in messages (e.g. ``"reference"``).
    sex_codes : how numeric ``sex`` values read, e.g. ``["0=F", "1=M"]`` or ``{0: "F"}``
        (FCON1000/PCNtoolkit coding); without it numeric codes are refused.
    join : extra tables (e.g. FCON1000's ``fcon1000_split_seed42.csv``) whose columns are
        added by ``subject_id`` (``sub_id``/``participant_id`` read as ``subject_id``; also by
        ``session_id`` when both sides have it), after the demographics. Every scan needs a
        row there; columns the volumes already have are kept from the volumes.
    where : row selections, all of which must hold, applied last (after demographics and
        ``join``, so their columns can be used); see :func:`select_rows` for the grammar.
    config_section : the study.toml section these inputs come from (e.g. ``"reference"``);
        messages about ``where``/``join`` then name its keys (``[reference] where = ...``)
        instead of the command-line options (``--where``, ``--join``).

    Plain tables (``.csv``/``.tsv``/``.parquet``) and demographics are harmonised:
    ``participant_id``/``sub_id`` are read as ``subject_id``, FreeSurfer 5/6 region names
    get their FreeSurfer 7 names (``Left-Thalamus-Proper`` -> ``Left-Thalamus``), ``eTIV``
    or ``EstimatedTotalIntraCranialVol`` becomes ``icv`` when there is none, and sex is
    read as F/M.

    Returns
    -------
    pandas.DataFrame in the volumes contract (plus ``scan_date`` when given).

    Raises
    ------
    InputFormatError : a path is missing, of the wrong kind, or unreadable; a ``join``
        table misses scans; a ``where`` expression is malformed, names an unknown column,
        or leaves no rows.
    """
    from normative.freesurfer import attach_demographics, collect_subjects_dir, read_stats_table

    codes = parse_sex_codes(sex_codes)
    sec = config_section
    # malformed: refused before reading
    filters = [parse_where(e, config_section=sec) for e in (where or ())]
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not paths:
        raise InputFormatError(f"no {what} given; set the tables or subjects_dir key.")
    first = Path(paths[0])
    if len(paths) == 1 and first.is_dir():
        vols = collect_subjects_dir(first, atlases=tuple(atlases), measures=("volume",))
        vols = _split_session_folders(vols)
    else:
        frames = []
        for p in paths:
            p = _need(p, f"{what} table")
            if p.is_dir():
                raise InputFormatError(f"{what}: a folder was given among tables; pass either one "
                                       "SUBJECTS_DIR or table files.", path=p)
            if p.suffix.lower() == ".txt":
                frames.append(read_stats_table(p))
            else:
                frames.append(_harmonise_plain(_read_plain_table(p, f"{what} table"), p, what,
                                               codes))
        vols = frames[0]
        for f in frames[1:]:
            keys = [k for k in _KEYS if k in vols.columns and k in f.columns
                    and vols[k].notna().any()] or ["subject_id"]
            new = [c for c in f.columns if c not in vols.columns]
            vols = vols.merge(f[keys + new], on=keys, how="inner", validate="one_to_one")
            if len(vols) < len(frames[0]):
                log.warning("%s: %d rows of %s have no row in %s and were dropped", what,
                            len(frames[0]) - len(vols), paths[0], p)
    if "session_id" not in vols.columns:
        vols["session_id"] = None
    if demographics:
        dpath = _need(demographics, f"{what} demographics")
        demo = _rename_id(_read_plain_table(dpath, f"{what} demographics"), dpath, what)
        if "subject_id" not in demo.columns:
            raise InputFormatError(
                f"{what} demographics has no subject_id column (columns: "
                f"{list(map(str, demo.columns))[:10]}); name the id column subject_id (or "
                f"participant_id, as in BIDS).", path=dpath)
        demo = _recode_sex(demo, codes, dpath, f"{what} demographics")
        if "session_id" in demo.columns and vols["session_id"].isna().all():
            demo = demo.drop(columns="session_id")
        _check_matched(vols, demo, dpath, what)
        _check_demo_columns(vols, demo, dpath, what)
        vols = attach_demographics(vols, demo.drop(columns=["scan_date"], errors="ignore"))
        if "scan_date" in demo.columns:
            keys = ["subject_id"] + (["session_id"] if "session_id" in demo.columns else [])
            sd = demo[keys + ["scan_date"]].astype({k: str for k in keys})
            left = vols[keys].astype(str)
            got = left.merge(sd, on=keys, how="left")
            vols = vols.copy()
            vols["scan_date"] = _iso_dates(got["scan_date"], dpath, what)
    for jp in join or ():
        vols = join_table(vols, jp, what=what, config_section=sec)
    if filters:
        src = ", ".join(str(x) for x in [*paths, *([demographics] if demographics else []),
                                           *(join or ())])
        vols = select_rows(vols, filters, source=src, config_section=sec)
    return vols


def join_table(vols: pd.DataFrame, path: str | Path, *, what: str = "volumes",
               config_section: str | None = None) -> pd.DataFrame:
    """Add the columns of the table at ``path`` to ``vols``, matched on ``subject_id``.

    ``sub_id``/``participant_id`` are read as ``subject_id``; ``session_id`` is matched too
    when both tables have it. Columns ``vols`` already has are kept from ``vols`` (logged).
    ``vols`` is not changed; the result keeps its index and row order. With
    ``config_section`` (e.g. ``"reference"``) messages name that study.toml section's
    ``join``/``where`` keys instead of ``--join``/``--where``.

    Raises
    ------
    InputFormatError : the table has no id column, repeats an id, or lacks some scans
        (how many, with examples).
    """
    words = _option_words(config_section)
    jwhat = f"{what} join table" if config_section is None else f"[{config_section}] join table"
    jpath = _need(str(path), jwhat)
    tab = _rename_id(_read_plain_table(jpath, jwhat), jpath, what)
    if "subject_id" not in tab.columns:
        raise InputFormatError(
            f"{jwhat} has no subject_id column (columns: "
            f"{list(map(str, tab.columns))[:10]}); name the id column subject_id (or sub_id, "
            "participant_id).", path=jpath)
    keys = ["subject_id"]
    if ("session_id" in tab.columns and "session_id" in vols.columns
            and vols["session_id"].notna().any()):
        keys.append("session_id")

    def key_text(df):
        parts = [[_code(v) for v in df[k].tolist()] for k in keys]
        return ["\x1f".join("" if x is None else x for x in t) for t in zip(*parts, strict=True)]

    jk = pd.Index(key_text(tab))
    if jk.has_duplicates:
        dup = jk[jk.duplicated()].unique().tolist()
        raise InputFormatError(
            f"{jwhat} repeats {len(dup)} id(s) in {' and '.join(keys)} (e.g. "
            f"{[d.replace(chr(31), ' ') for d in dup[:5]]}); give one row per scan.", path=jpath)
    vk = key_text(vols)
    pos = jk.get_indexer(vk)
    miss = pos < 0
    if miss.any():
        ex = [vk[i].replace("\x1f", " ") for i in np.flatnonzero(miss)[:5]]
        raise InputFormatError(
            f"{jwhat}: {int(miss.sum())} of {len(vk)} scans have no row here (matched "
            f"on {' and '.join(keys)}); e.g. {ex}{' ...' if miss.sum() > 5 else ''}, this table: "
            f"{jk[:5].tolist()}. Give every scan a row (ids spelled alike in both tables), and "
            f"select rows with {words['where_key']} after joining.", path=jpath)
    both = [c for c in tab.columns if c in vols.columns and c not in keys]
    if both:
        log.info("%s: %s: columns %s are already present; the volumes' values are kept",
                 what, jpath.name, both[:10])
    new = [c for c in tab.columns if c not in vols.columns]
    add = tab[new].iloc[pos].set_axis(vols.index)
    log.info("%s: %s joined: %d column(s) %s", what, jpath.name, len(new), new[:10])
    return pd.concat([vols, add], axis=1)


_OPS = ("!=", "<=", ">=", "=", "<", ">")
_WHERE_RE = re.compile(r"^\s*(?P<col>[^=!<>]*?)\s*(?P<op>!=|<=|>=|=|<|>)\s*(?P<val>.*?)\s*$",
                       re.DOTALL)
_GRAMMAR = ("write COLUMN=VALUE, COLUMN!=VALUE, COLUMN=V1,V2 (any of) or COLUMN<NUMBER "
            "(also <=, >, >=), e.g. group=Control, site=Oulu,Leiden, 'age>=18' (quote it in "
            "the shell)")
_GRAMMAR_TOML = ("write each item as \"COLUMN=VALUE\", \"COLUMN!=VALUE\", \"COLUMN=V1,V2\" (any "
                 "of) or \"COLUMN<NUMBER\" (also <=, >, >=), e.g. where = [\"group=Control\", "
                 "\"age>=18\"]")


def _option_words(config_section: str | None) -> dict[str, str]:
    """How messages name the selection and join: command-line options or study.toml keys."""
    if config_section is None:
        return {"where": "--where", "where_key": "--where", "join": "--join FILE",
                "grammar": _GRAMMAR}
    s = config_section
    return {"where": f"[{s}] where =", "where_key": f"[{s}] where",
            "join": f"[{s}] join = [\"FILE\"]", "grammar": _GRAMMAR_TOML}


@dataclass(frozen=True)
class RowFilter:
    """One parsed ``--where`` expression: ``column op values`` (``number`` for <, <=, >, >=)."""

    expr: str
    column: str
    op: str
    values: tuple[str, ...]
    number: float | None = None


def parse_where(expr: str | RowFilter, *, config_section: str | None = None) -> RowFilter:
    """Parse one row selection: ``column=value``, ``column!=value``, ``column=v1,v2``
    (any of; ``!=v1,v2``: none of), ``column<number``, ``<=``, ``>``, ``>=``.

    Messages name ``--where``, or with ``config_section`` (e.g. ``"reference"``) the
    study.toml key (``[reference] where = 'split=trian'``).

    Raises
    ------
    InputFormatError : the expression is malformed, or an inequality's value is not a number.
    """
    if isinstance(expr, RowFilter):
        return expr
    words = _option_words(config_section)
    opt, grammar = words["where"], words["grammar"]
    text = str(expr)
    m = _WHERE_RE.match(text)
    bad = None
    if m is None or not m["col"]:
        bad = "no COLUMN before the operator" if m else "no operator (=, !=, <, <=, >, >=)"
    elif not m["val"]:
        bad = f"no value after {m['op']!r}"
    elif m["val"][0] in "=!<>":
        bad = f"{m['op'] + m['val'][0]!r} is not an operator"
    if bad:
        raise InputFormatError(f"{opt} {text!r}: {bad}; {grammar}.")
    col, op, val = m["col"], m["op"], m["val"]
    if op in ("=", "!="):
        vals = tuple(v.strip() for v in val.split(","))
        if not all(vals):
            raise InputFormatError(f"{opt} {text!r}: an empty value in the list {val!r}; "
                                   f"{grammar}.")
        return RowFilter(text, col, op, vals)
    try:
        num = float(val)
    except ValueError:
        num = float("nan")
    if num != num:
        raise InputFormatError(f"{opt} {text!r}: {op} needs a number, got {val!r}; compare "
                               f"text with = or != instead ({grammar}).")
    return RowFilter(text, col, op, (val,), num)


def _columns_hint(df: pd.DataFrame, n: int = 15) -> str:
    """The columns a selection most likely names first (text columns, age, sex, site, ...)."""
    cols = [str(c) for c in df.columns]
    meta = {"subject_id", "session_id", "age", "sex", "site", "icv", "scan_date"}
    first = [c for c in cols if c in meta or not pd.api.types.is_float_dtype(df[c].dtype)]
    order = first + [c for c in cols if c not in set(first)]
    more = f" ... ({len(cols)} in all)" if len(cols) > n else ""
    return f"{order[:n]}{more}"


def _text_values(s: pd.Series) -> pd.Series:
    """Cells as text for = / != (numbers as 1, 1.5; missing stays <NA>)."""
    if pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype):
        x = s.to_numpy(dtype=float, na_value=np.nan)
        whole = np.isfinite(x) & (np.mod(x, 1.0) == 0)
        txt = np.where(whole, np.char.mod("%d", np.where(whole, x, 0).astype(np.int64)),
                       x.astype(str)).astype(object)
        txt[np.isnan(x)] = None
        return pd.Series(txt, index=s.index, dtype="string")
    return s.astype("string").str.strip()


def _distinct(s: pd.Series, n: int = 10) -> str:
    u = pd.unique(s.dropna())
    shown = sorted(map(str, u[:200]))[:n]
    return f"{shown}{' ...' if len(u) > n else ''}"


def select_rows(df: pd.DataFrame, where: Sequence[str | RowFilter], *,
                source: str = "the table", config_section: str | None = None) -> pd.DataFrame:
    """Rows of ``df`` meeting every expression in ``where`` (see :func:`parse_where`).

    ``=``/``!=`` compare as text (a numeric column's 1.0 reads ``1``), so ``site=Oulu``,
    ``group=Control``, ``sex=F``; ``<``, ``<=``, ``>``, ``>=`` compare as numbers. A missing
    cell meets no expression (also not ``!=``). Each expression logs how many rows it kept
    and dropped. ``df`` is not changed; the result keeps its index and row order. Messages
    name ``--where``, or with ``config_section`` (e.g. ``"reference"``) the study.toml key
    (``[reference] where = 'split=train'``).

    Raises
    ------
    InputFormatError : an expression is malformed, names an unknown column (with the columns
        present and a near miss), compares a text column with a number, or leaves no rows.
    """
    import difflib

    words = _option_words(config_section)
    opt = words["where"]
    out = df
    for f in (parse_where(e, config_section=config_section) for e in where):
        n0 = len(out)
        if f.column not in out.columns:
            cols = [str(c) for c in out.columns]
            near = [c for c in cols if c.lower() == f.column.lower()] or \
                difflib.get_close_matches(f.column, cols, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else \
                f"; add it with {words['join']} (a table with subject_id and that column)."
            raise InputFormatError(f"{opt} {f.expr!r}: no column {f.column!r} in {source} "
                                   f"(columns: {_columns_hint(out)}){hint}")
        s = out[f.column]
        if f.number is None:
            txt = _text_values(s)
            hit = txt.isin(list(f.values)).fillna(False).to_numpy(dtype=bool)
            present = txt.notna().to_numpy(dtype=bool)
            keep = hit if f.op == "=" else (~hit & present)
            unmatched = [v for v in f.values if not txt.eq(v).fillna(False).any()]
            if unmatched and (f.op == "!=" or len(unmatched) < len(f.values)):
                log.warning("%s %r: value(s) %s match no row; column %r holds %s",
                            opt, f.expr, unmatched, f.column, _distinct(txt))
        else:
            num = pd.to_numeric(s, errors="coerce")
            bad = num.isna() & s.notna()
            if bad.any():
                raise InputFormatError(
                    f"{opt} {f.expr!r}: column {f.column!r} in {source} is not numeric (it "
                    f"holds {s[bad].iloc[0]!r}; values: {_distinct(s.astype('string'))}); "
                    "compare text with = or !=, e.g. "
                    f"{f.column}={s[bad].astype('string').iloc[0]}.")
            x = num.to_numpy(dtype=float, na_value=np.nan)
            with np.errstate(invalid="ignore"):
                keep = {"<": x < f.number, "<=": x <= f.number, ">": x > f.number,
                        ">=": x >= f.number}[f.op]
            present = ~np.isnan(x)
        n_missing = int((~present).sum())
        kept = int(keep.sum())
        if kept == 0:
            raise InputFormatError(
                f"{opt} {f.expr!r} leaves no rows of {n0} in {source} (column {f.column!r} "
                f"holds {_distinct(_text_values(s))}"
                + (f", {n_missing} missing" if n_missing else "")
                + "); values compare as written, case included.")
        log.warning("%s %r kept %d of %d rows (dropped %d%s)", opt, f.expr, kept, n0, n0 - kept,
                    f", {n_missing} with {f.column!r} missing" if n_missing and n0 - kept else "")
        out = out.loc[keep]
    return out


def _clinical(cfg: Mapping) -> dict[str, pd.DataFrame | None]:
    from features.sources import OMOPSource, read_table

    c = cfg["clinical"]
    out: dict[str, pd.DataFrame | None] = {"visits": None, "events": None, "encounters": None,
                                           "notes": None, "demographics": None}
    if c["source"]:
        src = c["source"]
        if not src.startswith(("postgres", "postgresql")):
            p = _need(src, "[clinical] source")
            if p.suffix.lower() != ".duckdb":
                raise InputFormatError("[clinical] source must be a .duckdb file or a "
                                       "postgresql:// URL; for CSV/Parquet set visits/events/"
                                       "notes instead.", path=p)
        omop = OMOPSource(src, schema=c["schema"] or None)
        try:
            ids = _person_ids(omop)
            for kind in ("visits", "events", "encounters", "notes"):
                df = getattr(omop, kind)()
                # OMOP person_id -> the study's subject ids (person_source_value) when recorded
                mapped = df["patient_id"].map(ids)
                df["patient_id"] = mapped.where(mapped.notna(), df["patient_id"].astype(str)) \
                    .astype(str).to_numpy(dtype=object)
                out[kind] = df
        finally:
            omop.close()
    from normfuse.errors import ColumnContractError

    for kind in ("visits", "events", "encounters", "notes"):
        if c[kind]:
            path = _need(c[kind], f"[clinical] {kind}")
            try:
                out[kind] = read_table(path, kind)
            except ColumnContractError as exc:
                if not exc.missing:
                    raise
                # the reader's hint is for Python (rename=); on the command line the file is
                # what the user can change
                low = {p.lower(): p for p in exc.present}
                near = [f"{low[m.lower()]!r} -> {m!r}" for m in exc.missing if m.lower() in low]
                raise InputFormatError(
                    f"[clinical] {kind}: required columns are missing. Missing: {exc.missing}; "
                    f"present: {exc.present[:20]}. Rename "
                    + (", ".join(near) if near else "those columns")
                    + " in the file (names are lower case, see README 'Your own study').",
                    path=path) from exc
    return out


def _person_ids(omop) -> pd.Series:
    """OMOP ``person_id`` -> ``person_source_value`` (the ids the MRI tables use)."""
    df = omop.persons(["person_id", "person_source_value"])
    df = df.dropna(subset=["person_source_value"])
    return pd.Series(df["person_source_value"].astype(str).to_numpy(dtype=object),
                     index=df["person_id"].to_numpy())
