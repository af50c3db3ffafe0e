"""Reading clinical tables: CSV/Parquet files, DuckDB (embedded default), OMOP CDM over SQL.

:func:`read_table` / :func:`read_events` read our own contracts from CSV, Parquet or a
DuckDB database file. :class:`OMOPSource` maps an OMOP CDM (v5.3/5.4) database to the
contracts with one set of SQL queries that runs unchanged on DuckDB (a file or
connection; ``import duckdb`` happens inside the functions) and on any SQLAlchemy
engine such as PostgreSQL (``pip install 'normfuse[sql]'``):

==================  =====================================================================
contract            OMOP source
==================  =====================================================================
encounters          ``visit_occurrence``: visit_occurrence_id, person_id, visit start/end
events (lab/vital)  ``measurement``: value_as_number with operator_concept_id ("<", ">"),
                    variable = measurement_source_value (else ``concept_<id>``), vital when
                    measurement_concept_id is in ``vital_concepts``
events (med)        ``drug_exposure``: quantity, variable = drug_source_value
notes               ``note``: note_datetime (else note_date), note_text
visits              ``observation``: EDSS rows (``edss_source_value`` or ``edss_concept_id``)
                    and relapse rows (``relapse_source_value``) per person and date
demographics        ``person``: gender_concept_id 8507 -> "M", 8532 -> "F"; year_of_birth
(raw rows)          ``person`` as stored, via :meth:`OMOPSource.persons`: person_id ->
                    person_source_value links OMOP to the imaging subject ids
==================  =====================================================================

Timestamps use the ``*_datetime`` column when present and the ``*_date`` column
otherwise (as midnight).
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from features._util import dropped, to_naive_datetime
from normfuse.checks import get_logger, optional_import, require_columns
from normfuse.contracts import EVENT_COLUMNS, NOTE_COLUMNS, VISIT_COLUMNS
from normfuse.errors import ColumnContractError, InputFormatError

__all__ = ["read_table", "read_events", "OMOPSource", "OMOP_QUERIES", "VITAL_CONCEPTS"]

log = get_logger("features.sources")

_REQUIRED = {
    "events": list(EVENT_COLUMNS),
    "notes": list(NOTE_COLUMNS),
    "visits": list(VISIT_COLUMNS[:3]),
    "encounters": ["encounter_id", "patient_id", "start", "end"],
}
_TIME_COLS = {"events": ["time"], "notes": ["time"], "visits": ["visit_date"],
              "encounters": ["start", "end"]}

#: OMOP standard concepts treated as vital signs (LOINC): heart rate, systolic/diastolic
#: blood pressure, body temperature, respiratory rate, body weight, BMI, SpO2.
VITAL_CONCEPTS = (3027018, 3004249, 3012888, 3020891, 3024171, 3025315, 3038553, 40762499)
_OPERATORS = {4171756: "<", 4171754: "<=", 4172704: ">", 4171755: ">="}


def read_table(
    source: str | Path | Any,
    kind: Literal["events", "notes", "visits", "encounters"],
    *,
    table: str | None = None,
    rename: dict[str, str] | None = None,
) -> pd.DataFrame:
    """Read one contract table from CSV, Parquet or DuckDB and check its columns.

    Parameters
    ----------
    source : path to ``.csv``/``.csv.gz``/``.tsv``/``.parquet``/``.duckdb``/``.db``, or an
        open DuckDB connection.
    kind : which contract the table holds (its required columns are checked).
    table : table name inside a DuckDB database (default: ``kind``).
    rename : ``{their_name: our_name}`` applied before the check.

    Returns
    -------
    DataFrame; timestamp columns parsed (see ``features._util``); CSV ``value`` and
    ``text`` are kept as strings so that ``"<5"`` survives for :func:`parse_values`.
    """
    who = f"read_table({kind!r})"
    path = None
    if kind not in _REQUIRED:
        raise ValueError(f"{who}: unknown kind; expected one of {sorted(_REQUIRED)}.")
    if hasattr(source, "execute") and not isinstance(source, (str, Path)):
        df = _duck_read(source, table or kind, who)
    else:
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"{who}: {path} does not exist.")
        name = path.name.lower()
        if name.endswith((".csv", ".csv.gz", ".tsv", ".txt")):
            sep = "\t" if name.endswith(".tsv") else ","
            try:
                df = pd.read_csv(path, sep=sep, dtype={"value": "string", "text": "string"},
                                 keep_default_na=True)
            except (pd.errors.ParserError, UnicodeDecodeError) as exc:
                m = re.search(r"line (\d+)", str(exc))
                raise InputFormatError(f"cannot parse as {kind}: {exc}", path=path,
                                       line=int(m.group(1)) if m else None) from exc
        elif name.endswith(".parquet"):
            df = pd.read_parquet(path)
        elif name.endswith((".duckdb", ".db")):
            import duckdb
            con = duckdb.connect(str(path), read_only=True)
            try:
                df = _duck_read(con, table or kind, who)
            finally:
                con.close()
        else:
            raise InputFormatError(
                f"{who}: unsupported file type; use .csv, .tsv, .parquet or .duckdb "
                "(or pass a DuckDB connection).", path=path)
    if rename:
        df = df.rename(columns=rename)
    require_columns(df, _REQUIRED[kind], who, hint="Pass rename={'their_name': 'our_name'}.")
    for c in _TIME_COLS[kind]:
        if c in df.columns:
            try:
                df[c] = to_naive_datetime(df[c], who, c)
            except InputFormatError as exc:
                if path is None or getattr(exc, "path", None) is not None:
                    raise
                raise InputFormatError(str(exc), path=path) from exc
    return df


def read_events(source, *, table: str = "events", rename: dict[str, str] | None = None) -> pd.DataFrame:
    """Read an events table (see :func:`read_table`)."""
    return read_table(source, "events", table=table, rename=rename)


def _duck_read(con, table: str, who: str) -> pd.DataFrame:
    _ident(table, who)
    names = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    if table not in names:
        raise InputFormatError(f"{who}: DuckDB database has no table {table!r}; it has "
                               f"{sorted(names)}. Pass table=...")
    return con.execute(f'SELECT * FROM "{table}"').df()


def _ident(name: str, who: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name or ""):
        raise ValueError(f"{who}: {name!r} is not a plain SQL identifier (letters, digits, _).")
    return name


# ------------------------------------------------------------------------------- OMOP
# One query text per table, with :name parameters; {s} is the schema prefix ("" or "cdm.").
OMOP_QUERIES = {
    "encounters": """
SELECT v.visit_occurrence_id AS encounter_id,
       v.person_id AS patient_id,
       COALESCE(v.visit_start_datetime, CAST(v.visit_start_date AS TIMESTAMP)) AS start_ts,
       COALESCE(v.visit_end_datetime, CAST(v.visit_end_date AS TIMESTAMP) + INTERVAL '1 day'
                - INTERVAL '1 second') AS end_ts
FROM {s}visit_occurrence v
ORDER BY v.person_id, v.visit_occurrence_id""",
    "measurements": """
SELECT m.person_id AS patient_id,
       m.visit_occurrence_id AS encounter_id,
       COALESCE(m.measurement_datetime, CAST(m.measurement_date AS TIMESTAMP)) AS time,
       m.measurement_concept_id AS concept_id,
       COALESCE(m.measurement_source_value,
                'concept_' || CAST(m.measurement_concept_id AS VARCHAR)) AS variable,
       m.value_as_number AS value,
       m.operator_concept_id AS operator_concept_id,
       m.unit_source_value AS unit
FROM {s}measurement m
ORDER BY m.measurement_id""",
    "drugs": """
SELECT d.person_id AS patient_id,
       d.visit_occurrence_id AS encounter_id,
       COALESCE(d.drug_exposure_start_datetime, CAST(d.drug_exposure_start_date AS TIMESTAMP)) AS time,
       COALESCE(d.drug_source_value, 'concept_' || CAST(d.drug_concept_id AS VARCHAR)) AS variable,
       d.quantity AS value
FROM {s}drug_exposure d
ORDER BY d.drug_exposure_id""",
    "notes": """
SELECT n.person_id AS patient_id,
       COALESCE(n.note_datetime, CAST(n.note_date AS TIMESTAMP)) AS time,
       n.note_text AS text
FROM {s}note n
ORDER BY n.note_id""",
    "observations": """
SELECT o.person_id AS patient_id,
       CAST(o.observation_date AS TIMESTAMP) AS visit_date,
       CASE WHEN o.observation_source_value = :edss_source OR o.observation_concept_id = :edss_concept
            THEN 'edss' ELSE 'relapse' END AS kind,
       o.value_as_number AS value
FROM {s}observation o
WHERE o.observation_source_value = :edss_source OR o.observation_concept_id = :edss_concept
   OR o.observation_source_value = :relapse_source
ORDER BY o.person_id, o.observation_date, o.observation_id""",
    "persons": """
SELECT p.person_id AS patient_id,
       CASE p.gender_concept_id WHEN 8507 THEN 'M' WHEN 8532 THEN 'F' ELSE NULL END AS sex,
       p.year_of_birth AS year_of_birth
FROM {s}person p
ORDER BY p.person_id""",
}


class OMOPSource:
    """Read our contract tables from an OMOP CDM database (DuckDB or SQLAlchemy).

    Parameters
    ----------
    engine_or_path : path to a DuckDB file, ``":memory:"``, a DuckDB connection, a
        SQLAlchemy engine, or a SQLAlchemy URL string (``"postgresql+psycopg://..."``).
    schema : CDM schema name (``None`` = default search path).
    edss_source_value, edss_concept_id : how EDSS rows are found in ``observation``.
    relapse_source_value : ``observation_source_value`` marking a relapse.
    vital_concepts : measurement concepts labelled ``table="vital"`` (others ``"lab"``).

    Examples
    --------
    >>> src = OMOPSource("cdm.duckdb")                       # doctest: +SKIP
    >>> ev = src.events(); enc = src.encounters()             # doctest: +SKIP
    """

    def __init__(self, engine_or_path: Any, *, schema: str | None = None,
                 edss_source_value: str = "EDSS", edss_concept_id: int = -1,
                 relapse_source_value: str = "MS relapse",
                 vital_concepts: tuple[int, ...] = VITAL_CONCEPTS):
        self.engine_or_path = engine_or_path
        self.schema = schema
        self.edss_source_value = edss_source_value
        self.edss_concept_id = int(edss_concept_id)
        self.relapse_source_value = relapse_source_value
        self.vital_concepts = tuple(int(c) for c in vital_concepts)
        self._con = None
        self._engine = None
        self._own = False
        self._connect()

    # -- connection
    def _connect(self):
        src = self.engine_or_path
        if isinstance(src, (str, Path)) and "://" not in str(src):
            import duckdb
            if str(src) != ":memory:" and not Path(src).exists():
                raise FileNotFoundError(f"OMOPSource: {src} does not exist.")
            self._con = duckdb.connect(str(src), read_only=str(src) != ":memory:")
            self._own = True
        elif isinstance(src, str):
            sa = optional_import("sqlalchemy", "sql", "OMOPSource on a database URL")
            self._engine = sa.create_engine(src)
        elif hasattr(src, "connect") and hasattr(src, "dialect"):
            self._engine = src
        elif hasattr(src, "execute"):
            self._con = src
        else:
            raise TypeError(f"OMOPSource: cannot use {type(src).__name__}; pass a DuckDB path or "
                            "connection, a SQLAlchemy engine or a database URL.")
        self.backend = "duckdb" if self._con is not None else self._engine.dialect.name

    def close(self) -> None:
        """Close a DuckDB connection this object opened."""
        if self._own and self._con is not None:
            self._con.close()
            self._con = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def sql(self, name: str) -> str:
        """The SQL text of query ``name`` for this schema (identical for every backend)."""
        prefix = f"{_ident(self.schema, 'OMOPSource')}." if self.schema else ""
        return OMOP_QUERIES[name].format(s=prefix)

    def query(self, name: str) -> pd.DataFrame:
        """Run query ``name`` and return its rows."""
        text = self.sql(name)
        params = {"edss_source": self.edss_source_value, "edss_concept": self.edss_concept_id,
                  "relapse_source": self.relapse_source_value}
        return self._run(text, {k: v for k, v in params.items() if f":{k}" in text})

    def _run(self, text: str, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Run SQL with ``:name`` parameters on whichever backend this source holds."""
        params = params or {}
        if self._con is not None:
            duck_text = re.sub(r":([A-Za-z_]\w*)", r"$\1", text)
            return self._con.execute(duck_text, params).df() if params else \
                self._con.execute(duck_text).df()
        sa = optional_import("sqlalchemy", "sql", "OMOPSource on a database URL")
        with self._engine.connect() as c:
            return pd.read_sql(sa.text(text), c, params=params)

    # -- contract tables
    def encounters(self) -> pd.DataFrame:
        """``encounter_id, patient_id, start, end`` from visit_occurrence."""
        d = self.query("encounters").rename(columns={"start_ts": "start", "end_ts": "end"})
        for c in ("start", "end"):
            d[c] = to_naive_datetime(d[c], "OMOPSource.encounters", c)
        return d

    def events(self) -> pd.DataFrame:
        """Events (lab/vital from measurement, med from drug_exposure) in the event contract.

        Measurements with an operator concept (``<``, ``<=``, ``>``, ``>=``) become
        strings such as ``"<5"`` so that :func:`features.ehr.parse_values` applies the
        censoring rule; rows without a number are kept as NaN (and dropped, counted,
        by the windowing).
        """
        m = self.query("measurements")
        vals = pd.to_numeric(m["value"], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        op = pd.to_numeric(m["operator_concept_id"], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        value = pd.Series(vals, dtype=object)
        for cid, sym in _OPERATORS.items():
            sel = (op == cid) & ~np.isnan(vals)
            if sel.any():
                value[sel] = [f"{sym}{v:g}" for v in vals[sel]]
        cid = pd.to_numeric(m["concept_id"], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        meas = pd.DataFrame({
            "patient_id": m["patient_id"].to_numpy(), "encounter_id": m["encounter_id"].to_numpy(),
            "time": to_naive_datetime(m["time"], "OMOPSource.events", "time").to_numpy(),
            "table": np.where(np.isin(cid, self.vital_concepts), "vital", "lab"),
            "variable": m["variable"].to_numpy(dtype=object), "value": value.to_numpy(),
            "unit": m["unit"].to_numpy(dtype=object)})
        d = self.query("drugs")
        drugs = pd.DataFrame({
            "patient_id": d["patient_id"].to_numpy(), "encounter_id": d["encounter_id"].to_numpy(),
            "time": to_naive_datetime(d["time"], "OMOPSource.events", "time").to_numpy(),
            "table": "med", "variable": d["variable"].to_numpy(dtype=object),
            "value": pd.to_numeric(d["value"], errors="coerce").to_numpy(dtype=np.float64).astype(object),
            "unit": None})
        out = pd.concat([meas, drugs], ignore_index=True)
        n_noenc = int(out["encounter_id"].isna().sum())
        if n_noenc:
            log.warning("OMOPSource.events: %d events have no visit_occurrence_id (they will be "
                        "dropped, counted, when windowed)", n_noenc)
        return out

    def notes(self) -> pd.DataFrame:
        """``patient_id, time, text`` from note (text unscrubbed: scrub before use)."""
        d = self.query("notes")
        d["time"] = to_naive_datetime(d["time"], "OMOPSource.notes", "time")
        d["text"] = d["text"].astype(object)
        return d

    def visits(self) -> pd.DataFrame:
        """``patient_id, visit_date, edss, relapse`` from EDSS and relapse observations.

        One row per person and date; a date with only a relapse has EDSS NaN; a date
        with only an EDSS has relapse False. EDSS rows without a number are dropped and
        counted.
        """
        o = self.query("observations")
        o["visit_date"] = to_naive_datetime(o["visit_date"], "OMOPSource.visits", "visit_date")
        is_edss = (o["kind"] == "edss").to_numpy()
        e = o.loc[is_edss, ["patient_id", "visit_date", "value"]].rename(columns={"value": "edss"})
        e["edss"] = pd.to_numeric(e["edss"], errors="coerce")
        n_bad = int(e["edss"].isna().sum())
        dropped(n_bad, "EDSS observations", "no value_as_number", warn=False, logger=log)
        e = e.dropna(subset=["edss"])
        r = o.loc[~is_edss, ["patient_id", "visit_date"]].drop_duplicates().assign(relapse=True)
        v = e.merge(r, on=["patient_id", "visit_date"], how="outer")
        v["relapse"] = v["relapse"].astype("boolean").fillna(False).astype(bool)
        return v.sort_values(["patient_id", "visit_date"], kind="stable").reset_index(drop=True)

    def demographics(self) -> pd.DataFrame:
        """``patient_id, sex, year_of_birth`` from person."""
        return self.query("persons")

    def persons(self, columns: Sequence[str] = ("person_id", "person_source_value")) -> pd.DataFrame:
        """Rows of the CDM ``person`` table, as stored (no renaming or recoding).

        The link between OMOP and the imaging tables: ``person_source_value`` holds the
        site's own subject id (the one the MRI folders use), ``person_id`` the CDM key
        every other OMOP table refers to. The same SQL runs on DuckDB and PostgreSQL.

        Parameters
        ----------
        columns : ``person`` columns to return, in this order; ``person_id`` is added
            first when not listed. Plain identifiers only (letters, digits, ``_``);
            matched case-insensitively, returned lower-case as in the CDM.

        Returns
        -------
        pandas.DataFrame
            One row per person, ordered by ``person_id``, with a fresh ``RangeIndex``;
            NULLs are missing values (``None``/``NaN``), nothing is dropped.

        Raises
        ------
        ValueError
            A name in ``columns`` is not a plain SQL identifier.
        ColumnContractError
            The ``person`` table lacks a requested column (the message lists the columns
            it has).

        See Also
        --------
        demographics : ``patient_id, sex, year_of_birth`` in our contract.

        Examples
        --------
        >>> import duckdb
        >>> con = duckdb.connect()
        >>> _ = con.execute("CREATE TABLE person AS SELECT * FROM (VALUES (2, 'sub-02', 1975), "
        ...                 "(1, 'sub-01', 1980)) t(person_id, person_source_value, year_of_birth)")
        >>> OMOPSource(con).persons()
           person_id person_source_value
        0          1              sub-01
        1          2              sub-02
        """
        who = "OMOPSource.persons"
        if isinstance(columns, str):
            columns = [columns]
        want = [_ident(str(c), who).lower() for c in columns]
        want = ["person_id"] + [c for c in dict.fromkeys(want) if c != "person_id"]
        prefix = f"{_ident(self.schema, who)}." if self.schema else ""
        have = [str(c).lower() for c in self._run(f"SELECT * FROM {prefix}person WHERE 1 = 0").columns]
        missing = [c for c in want if c not in have]
        if missing:
            raise ColumnContractError(
                f"{who}: the {prefix}person table lacks requested columns.\nMissing: {missing}\n"
                f"Present: {have}\nAsk for columns the table has (the OMOP CDM v5.3/5.4 person "
                "table has person_source_value) or add them to the CDM.")
        df = self._run(f"SELECT {', '.join(want)} FROM {prefix}person ORDER BY person_id")
        df.columns = want
        return df.reset_index(drop=True)
