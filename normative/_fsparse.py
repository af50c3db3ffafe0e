"""Low-level text parsers for FreeSurfer ``.stats`` files and ``*stats2table`` outputs.

Plain string operations and numpy (no pandas per file), so that collecting thousands of
subjects is dominated by file I/O. Every failure raises
:class:`normfuse.errors.InputFormatError` naming the file, the line and the fix.
Private: the public readers live in :mod:`normative.freesurfer`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from normfuse.errors import InputFormatError

__all__ = ["Measure", "RawStats", "RawTable", "read_text", "parse_stats_text", "parse_table_text",
           "numeric_column"]

_RERUN = ("Re-create it with the FreeSurfer command that wrote it (mri_segstats / "
          "mris_anatomical_stats, or recon-all) or restore an intact copy.")


@dataclass(frozen=True)
class Measure:
    """One ``# Measure`` line of a .stats file.

    Attributes
    ----------
    structure : str
        First field, e.g. ``"BrainSeg"`` or ``"Cortex"``.
    name : str
        Short name, e.g. ``"BrainSegVol"`` or ``"eTIV"`` (the key in ``StatsFile.measures``).
    long_name : str
        Description, e.g. ``"Brain Segmentation Volume"``.
    value : float
    unit : str
        e.g. ``"mm^3"``, ``"mm"``, ``"unitless"``.
    """

    structure: str
    name: str
    long_name: str
    value: float
    unit: str


class FlatCells:
    """A row-major table of str tokens kept as one flat list; ``cells[:, j]`` is column j."""

    __slots__ = ("tokens", "shape")

    def __init__(self, tokens: list, nrows: int, ncol: int):
        self.tokens = tokens
        self.shape = (nrows, ncol)

    def __getitem__(self, key):
        rows, j = key
        if rows != slice(None):
            raise IndexError("FlatCells supports only [:, j]")
        return self.tokens[j::self.shape[1]]


@dataclass
class RawStats:
    """A parsed .stats file before conversion: header, measures, table as strings."""

    path: object
    header: dict
    measures: dict
    columns: list
    cells: FlatCells           # (n_rows, n_cols) str tokens
    row_lines: list            # 1-based line number of each table row


@dataclass
class RawTable:
    """A parsed asegstats2table/aparcstats2table: header cells, ids, numeric cells as str."""

    path: object
    first_cell: str
    columns: list
    ids: list
    cells: np.ndarray
    row_lines: list


def read_text(path) -> str:
    """Read a small text file, raising InputFormatError for unreadable or non-text content."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except IsADirectoryError:
        raise InputFormatError("is a folder, not a file. Pass the path of the file itself.",
                               path=p) from None
    except FileNotFoundError:
        raise InputFormatError("file not found. Check the path (and SUBJECTS_DIR).",
                               path=p) from None
    except OSError as exc:
        raise InputFormatError(f"cannot be read ({exc.strerror}). Check permissions.",
                               path=p) from None
    if data[:2] == b"\x1f\x8b":
        raise InputFormatError("is gzip-compressed (an .mgz volume?), not a text stats file. "
                               "Use read_aseg_mgz for segmentation volumes.", path=p)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise InputFormatError(
            f"holds a byte that is not text (0x{data[exc.start]:02x}); the file is corrupt "
            f"or binary. {_RERUN}", path=p, line=line) from None


def _parse_measure(rest: str, path, line: int) -> Measure:
    parts = [s.strip() for s in rest.split(",")]
    if len(parts) == 5:
        structure, name, long_name, value, unit = parts
    elif len(parts) == 4 and " " in parts[1]:
        # FreeSurfer 6 wrote "# Measure Cortex, CortexVol Total cortical gray matter volume,
        # 553998.3, mm^3": the comma after the short name is missing.
        structure, combined, value, unit = parts
        name, long_name = combined.split(None, 1)
    else:
        raise InputFormatError(
            f"a '# Measure' line must read 'structure, name, description, value, unit'; got "
            f"{rest[:120]!r}. {_RERUN}", path=path, line=line)
    if not name:
        raise InputFormatError(f"a '# Measure' line has an empty name: {rest[:120]!r}.",
                               path=path, line=line)
    try:
        val = float(value)
    except ValueError:
        raise InputFormatError(
            f"the value of measure {name!r} is not a number: {value!r}. {_RERUN}",
            path=path, line=line) from None
    return Measure(structure, name, long_name, val, unit)


def parse_stats_text(text: str, path=None) -> RawStats:
    """Parse the text of a FreeSurfer/FastSurfer .stats file (aseg, aparc*, wmparc, brainvol).

    One pass over the lines with plain string operations (about 0.4 ms for an aseg.stats);
    errors name the offending line.

    Columns come from the ``# ColHeaders`` line (positions are never assumed); ``# Measure``
    lines become :class:`Measure`; other ``# key value`` lines fill the header dict.
    A file without any table (``brainvol.stats``) is allowed here; callers that need a
    table check ``columns``.
    """
    header: dict[str, str] = {}
    measures: dict[str, Measure] = {}
    measure_lines: dict[str, int] = {}
    columns: list[str] | None = None
    rows: list[list[str]] = []
    row_lines: list[int] = []
    ncol = 0
    saw_content = False
    for i, raw in enumerate(text.split("\n"), 1):
        line = raw.strip()
        if not line:
            continue
        saw_content = True
        if line[0] == "#":
            parts = line[1:].split(None, 1)
            if not parts:
                continue
            key = parts[0]
            rest = parts[1] if len(parts) > 1 else ""
            if key == "Measure":
                m = _parse_measure(rest, path, i)
                old = measures.get(m.name)
                if old is not None and not (old.value == m.value or
                                            (np.isnan(old.value) and np.isnan(m.value))):
                    raise InputFormatError(
                        f"measure {m.name!r} appears twice with different values "
                        f"({old.value!r} on line {measure_lines[m.name]}, {m.value!r} here). "
                        f"{_RERUN}", path=path, line=i)
                if old is None:
                    measures[m.name] = m
                    measure_lines[m.name] = i
            elif key == "ColHeaders":
                if columns is not None:
                    raise InputFormatError(
                        f"a second '# ColHeaders' line (the first is above). {_RERUN}",
                        path=path, line=i)
                columns = rest.split()
                if not columns:
                    raise InputFormatError("the '# ColHeaders' line names no columns. "
                                           f"{_RERUN}", path=path, line=i)
                if len(set(columns)) != len(columns):
                    dup = sorted({c for c in columns if columns.count(c) > 1})
                    raise InputFormatError(f"'# ColHeaders' repeats column(s) {dup}. {_RERUN}",
                                           path=path, line=i)
                ncol = len(columns)
            elif key != "TableCol" and key not in header:
                header[key] = rest.strip()
            continue
        if columns is None:
            raise InputFormatError(
                "a table row comes before any '# ColHeaders' line, so its columns are "
                f"unknown: {line[:80]!r}. Is this a FreeSurfer .stats file? {_RERUN}",
                path=path, line=i)
        tokens = line.split()
        if len(tokens) != ncol:
            raise InputFormatError(
                f"table row has {len(tokens)} fields but '# ColHeaders' names {ncol} "
                f"({' '.join(columns)}): {line[:100]!r}. The file is truncated or edited. "
                f"{_RERUN}", path=path, line=i)
        rows.append(tokens)
        row_lines.append(i)
    if not saw_content:
        raise InputFormatError("the file is empty. " + _RERUN, path=path)
    nlines = text.count("\n") + 1
    if "NRows" in header:
        try:
            nrows = int(header["NRows"].split()[0])
        except (ValueError, IndexError):
            raise InputFormatError(f"'# NRows' is not an integer: {header['NRows']!r}. "
                                   f"{_RERUN}", path=path) from None
        if nrows != len(rows):
            raise InputFormatError(
                f"'# NRows' declares {nrows} table rows but the file holds {len(rows)}; it is "
                f"truncated or edited. {_RERUN}", path=path, line=nlines)
    if "NTableCols" in header and columns is not None:
        try:
            ntc = int(header["NTableCols"].split()[0])
        except (ValueError, IndexError):
            raise InputFormatError(f"'# NTableCols' is not an integer: "
                                   f"{header['NTableCols']!r}. {_RERUN}", path=path) from None
        if ntc != ncol:
            raise InputFormatError(
                f"'# NTableCols' declares {ntc} columns but '# ColHeaders' names {ncol}. "
                f"{_RERUN}", path=path)
    if columns is not None and not rows and "NRows" not in header:
        raise InputFormatError(
            "the file has a '# ColHeaders' line but no table rows; it is truncated. "
            + _RERUN, path=path, line=nlines)
    cells = FlatCells([t for r in rows for t in r], len(rows), ncol)
    return RawStats(path, header, measures, columns or [], cells, row_lines)


def numeric_column(cells, j: int, colname: str, row_lines, path,
                   row_names=None) -> np.ndarray:
    """Convert column ``j`` of a str cell table to float64, naming the first bad cell."""
    col = cells[:, j]
    try:
        out = np.array(col, dtype=np.float64)
    except ValueError:
        out = None
    if out is not None:
        bad = np.flatnonzero(~np.isfinite(out))
        if bad.size:        # 'nan'/'inf' parse as floats but no FreeSurfer tool writes them
            k = int(bad[0])
            who = f" of {row_names[k]!r}" if row_names is not None else ""
            raise InputFormatError(
                f"column {colname!r}{who} holds {str(col[k])!r}, which is not a finite number"
                f"{f' ({bad.size} such cells)' if bad.size > 1 else ''}. {_RERUN}",
                path=path, line=row_lines[k])
        return out
    for k, s in enumerate(col):
        try:
            float(s)
        except ValueError:
            who = f" of {row_names[k]!r}" if row_names is not None else ""
            raise InputFormatError(
                f"column {colname!r}{who} holds {str(s)!r}, which is not a number. {_RERUN}",
                path=path, line=row_lines[k]) from None
    # numpy refused something float() accepts (e.g. '1_0'): refuse it too, naming it.
    raise InputFormatError(f"column {colname!r} holds a value numpy cannot read as a number. "
                           f"{_RERUN}", path=path)


def parse_table_text(text: str, path=None) -> RawTable:
    """Parse an asegstats2table/aparcstats2table output (tab- or space-separated)."""
    lines = [(i, ln.strip()) for i, ln in enumerate(text.split("\n"), 1)]
    lines = [(i, ln) for i, ln in lines if ln]
    if not lines:
        raise InputFormatError("the file is empty. Re-run asegstats2table/aparcstats2table.",
                               path=path)
    hline, head = lines[0]
    sep = "\t" if "\t" in head else None
    columns = [c.strip() for c in head.split(sep)]
    if len(columns) < 2 or not all(columns):
        raise InputFormatError(
            f"the header line must hold the measure cell and at least one column name; got "
            f"{head[:100]!r}.", path=path, line=hline)
    if len(set(columns)) != len(columns):
        dup = sorted({c for c in columns if columns.count(c) > 1})[:10]
        raise InputFormatError(f"the header repeats column(s) {dup}; each column must be "
                               "unique. Re-run the table command.", path=path, line=hline)
    ids, rows, row_lines = [], [], []
    seen: dict[str, int] = {}
    for i, ln in lines[1:]:
        fields = [f.strip() for f in ln.split(sep)]
        if len(fields) != len(columns):
            raise InputFormatError(
                f"row has {len(fields)} fields but the header has {len(columns)}; the file "
                "is truncated, or mixes tabs and spaces. Re-run asegstats2table/"
                "aparcstats2table (add --delimiter tab).", path=path, line=i)
        if fields[0] in seen:
            raise InputFormatError(
                f"subject {fields[0]!r} appears twice (lines {seen[fields[0]]} and {i}). "
                "Remove the duplicate row.", path=path, line=i)
        seen[fields[0]] = i
        ids.append(fields[0])
        rows.append(fields[1:])
        row_lines.append(i)
    if not rows:
        raise InputFormatError("the table has a header but no subject rows.", path=path,
                               line=hline)
    cells = np.array(rows, dtype=str)
    return RawTable(path, columns[0], columns[1:], ids, cells, row_lines)
