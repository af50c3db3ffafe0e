"""Tests of features.sources: files, DuckDB, OMOP CDM on DuckDB and on a real PostgreSQL server."""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.ehr import make_windows
from features.sources import OMOPSource, read_events, read_table
from normfuse.errors import ColumnContractError, DataDroppedWarning, InputFormatError

D = pd.Timestamp


def _omop_tables():
    """A small hand-made OMOP CDM: 3 persons, visits, measurements, drugs, notes, observations."""
    person = pd.DataFrame({"person_id": [1, 2, 3], "gender_concept_id": [8532, 8507, 0],
                           "year_of_birth": [1980, 1975, 1990],
                           "person_source_value": ["sub-001", "sub-007", None]})
    visit = pd.DataFrame({
        "visit_occurrence_id": [10, 11, 20],
        "person_id": [1, 1, 2],
        "visit_start_date": pd.to_datetime(["2020-01-01", "2020-06-01", "2020-03-01"]).date,
        "visit_start_datetime": [D("2020-01-01 08:00"), None, D("2020-03-01 09:00")],
        "visit_end_date": pd.to_datetime(["2020-01-02", "2020-06-01", "2020-03-01"]).date,
        "visit_end_datetime": [D("2020-01-02 12:00"), None, D("2020-03-01 18:00")],
    })
    meas = pd.DataFrame({
        "measurement_id": [1, 2, 3, 4, 5, 6],
        "person_id": [1, 1, 1, 2, 2, 3],
        "visit_occurrence_id": [10, 10, 11, 20, 20, None],
        "measurement_concept_id": [3027018, 3020460, 3020460, 3027018, 3020460, 3020460],
        "measurement_date": pd.to_datetime(["2020-01-01", "2020-01-01", "2020-06-01", "2020-03-01",
                                            "2020-03-01", "2020-04-01"]).date,
        "measurement_datetime": [D("2020-01-01 09:00"), D("2020-01-01 10:30"), None,
                                 D("2020-03-01 10:00"), D("2020-03-01 11:00"), None],
        "measurement_source_value": ["hr", "crp", "crp", "hr", None, "crp"],
        "value_as_number": [72.0, 5.0, 12.5, 88.0, 1000.0, 3.0],
        "operator_concept_id": [None, 4171756, None, None, 4172704, None],
        "unit_source_value": ["/min", "mg/L", "mg/L", "/min", "mg/L", "mg/L"],
    })
    drug = pd.DataFrame({
        "drug_exposure_id": [1, 2], "person_id": [1, 2], "visit_occurrence_id": [10, 20],
        "drug_concept_id": [1125315, 19078461],
        "drug_exposure_start_date": pd.to_datetime(["2020-01-01", "2020-03-01"]).date,
        "drug_exposure_start_datetime": [D("2020-01-01 11:00"), D("2020-03-01 12:00")],
        "drug_source_value": ["methylprednisolone", None], "quantity": [1000.0, 2.0],
    })
    note = pd.DataFrame({
        "note_id": [1, 2], "person_id": [1, 2],
        "note_date": pd.to_datetime(["2020-01-01", "2020-03-01"]).date,
        "note_datetime": [D("2020-01-01 15:00"), None],
        "note_text": ["Seen by Dr. Ann Lee. Optic neuritis.", "Gait ataxia."],
    })
    obs = pd.DataFrame({
        "observation_id": [1, 2, 3, 4, 5], "person_id": [1, 1, 1, 2, 2],
        "observation_concept_id": [0, 0, 0, 0, 0],
        "observation_date": pd.to_datetime(["2020-01-01", "2020-06-01", "2020-06-01", "2020-03-01",
                                            "2020-09-01"]).date,
        "observation_source_value": ["EDSS", "EDSS", "MS relapse", "EDSS", "MS relapse"],
        "value_as_number": [2.0, 3.5, None, 1.0, None],
    })
    return {"person": person, "visit_occurrence": visit, "measurement": meas, "drug_exposure": drug,
            "note": note, "observation": obs}


def _duck(tables):
    import duckdb

    con = duckdb.connect(":memory:")
    for name, df in tables.items():
        con.register("tmp_df", df)
        con.execute(f"CREATE TABLE {name} AS SELECT * FROM tmp_df")
        con.unregister("tmp_df")
    return con


def _all(src):
    return {"events": src.events(), "encounters": src.encounters(), "notes": src.notes(),
            "visits": src.visits(), "demographics": src.demographics(),
            "persons": src.persons(["person_source_value", "year_of_birth", "gender_concept_id"])}


def _rows(df):
    """Rows as tuples of plain Python values, NULL as None (backend- and pandas-independent)."""
    return [tuple(None if pd.isna(v) else (v.item() if hasattr(v, "item") else v) for v in r)
            for r in df.itertuples(index=False)]


#: The planted person rows, ordered by person_id: (person_id, person_source_value, year_of_birth).
PERSONS = [(1, "sub-001", 1980), (2, "sub-007", 1975), (3, None, 1990)]


def test_omop_persons_duckdb_returns_planted_rows():
    """persons() returns the planted person rows by person_id, in the asked column order."""
    tables = _omop_tables()
    tables["person"] = tables["person"].iloc[[2, 0, 1]]      # stored out of order
    src = OMOPSource(_duck(tables))
    got = src.persons()
    assert list(got.columns) == ["person_id", "person_source_value"]
    assert isinstance(got.index, pd.RangeIndex)
    assert _rows(got) == [r[:2] for r in PERSONS]
    got = src.persons(["person_source_value", "YEAR_OF_BIRTH", "person_source_value"])
    assert list(got.columns) == ["person_id", "person_source_value", "year_of_birth"]
    assert _rows(got) == PERSONS
    assert _rows(src.persons("year_of_birth")) == [(r[0], r[2]) for r in PERSONS]


def test_omop_persons_errors_and_schema():
    """A missing column names itself and the present ones; identifiers are checked; schema applies."""
    con = _duck(_omop_tables())
    src = OMOPSource(con)
    with pytest.raises(ColumnContractError, match=r"Missing: \['birth_datetime'\]") as ei:
        src.persons(["birth_datetime"])
    assert "person_source_value" in str(ei.value)
    with pytest.raises(ValueError, match="not a plain SQL identifier"):
        src.persons(["person_id; DROP TABLE person"])
    con.execute("CREATE SCHEMA site2")
    con.execute("CREATE TABLE site2.person AS SELECT 9 AS person_id, 'sub-900' AS person_source_value")
    assert _rows(OMOPSource(con, schema="site2").persons()) == [(9, "sub-900")]
    assert _rows(src.persons()) == [r[:2] for r in PERSONS]


def test_omop_duckdb_maps_to_contracts():
    """OMOP tables on DuckDB map to our contracts with the documented rules."""
    src = OMOPSource(_duck(_omop_tables()))
    ev = src.events()
    assert list(ev.columns[:6]) == ["patient_id", "encounter_id", "time", "table", "variable", "value"]
    assert ev["table"].tolist() == ["vital", "lab", "lab", "vital", "lab", "lab", "med", "med"]
    assert ev["value"].tolist()[:5] == [72.0, "<5", 12.5, 88.0, ">1000"]
    assert ev["variable"].tolist()[4] == "concept_3020460" and ev["variable"].tolist()[7] == "concept_19078461"
    assert ev["time"].iloc[2] == D("2020-06-01")  # date only -> midnight
    enc = src.encounters()
    assert enc["end"].iloc[1] == D("2020-06-01 23:59:59")
    v = src.visits()
    assert v["patient_id"].tolist() == [1, 1, 2, 2]
    np.testing.assert_array_equal(v["edss"].to_numpy(), [2.0, 3.5, 1.0, np.nan])
    assert v["relapse"].tolist() == [False, True, False, True]
    assert [s if isinstance(s, str) else None for s in src.demographics()["sex"]] == ["F", "M", None]
    # windows straight from the OMOP events + encounters: the encounter-less event is dropped
    with pytest.warns(DataDroppedWarning, match="dropped 1 events"):
        w = make_windows(ev, enc)
    # (visit 10: 09:00-11:00 in one 4 h window; visit 11: one; visit 20: one)
    assert len(w) == 3 and w["crp"].tolist()[:2] == [5.0, 12.5] and w["crp"].isna().iloc[2]


def test_read_table_csv_parquet_duckdb(tmp_path):
    """CSV keeps '<5' strings; Parquet and DuckDB read the same table; bad inputs raise clearly."""
    ev = pd.DataFrame({"patient_id": ["A", "A"], "encounter_id": ["e", "e"],
                       "time": ["2020-01-01 08:00", "2020-01-01 09:00"], "table": "lab",
                       "variable": "crp", "value": ["<5", " 7.2 "]})
    ev.to_csv(tmp_path / "ev.csv", index=False)
    got = read_events(tmp_path / "ev.csv")
    assert got["value"].tolist() == ["<5", " 7.2 "] and got["time"].dtype == "datetime64[ns]"
    ev.to_parquet(tmp_path / "ev.parquet")
    pd.testing.assert_frame_equal(read_events(tmp_path / "ev.parquet").astype({"value": object}),
                                  got.astype({"value": object}))
    import duckdb

    con = duckdb.connect(str(tmp_path / "x.duckdb"))
    con.register("t", ev)
    con.execute("CREATE TABLE events AS SELECT * FROM t")
    con.close()
    assert read_events(tmp_path / "x.duckdb")["value"].tolist() == ["<5", " 7.2 "]
    with pytest.raises(InputFormatError, match="no table 'notes'"):
        read_table(tmp_path / "x.duckdb", "notes")
    with pytest.raises(InputFormatError, match="unsupported file type"):
        (tmp_path / "ev.xlsx").write_text("x")
        read_events(tmp_path / "ev.xlsx")
    with pytest.raises(ColumnContractError, match=r"Missing: \['value'\]"):
        ev.drop(columns="value").to_csv(tmp_path / "bad.csv", index=False)
        read_events(tmp_path / "bad.csv")
    renamed = ev.rename(columns={"value": "result"})
    renamed.to_csv(tmp_path / "r.csv", index=False)
    assert "value" in read_events(tmp_path / "r.csv", rename={"result": "value"}).columns


# ------------------------------------------------------------------ PostgreSQL server
def _pg_bin():
    hits = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if hits:
        return Path(hits[-1]).parent
    w = shutil.which("initdb")
    return Path(w).parent if w else None


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url(system_skip):
    """A throwaway PostgreSQL cluster on a unix socket in a temp dir (skips if unavailable)."""
    pytest.importorskip("sqlalchemy", reason="extra 'sql' not installed")
    pytest.importorskip("psycopg", reason="extra 'sql' not installed")
    binp = _pg_bin()
    if binp is None:
        system_skip("PostgreSQL server binaries not found (Debian package 'postgresql'; "
                    "`make test` installs it via .ci/sysdeps.sh when run as root)")
    tmp = Path(tempfile.mkdtemp(prefix="nf-pg-"))
    data, sock = tmp / "data", tmp / "sock"
    sock.mkdir()
    run_as: list[str] = []
    if os.geteuid() == 0:
        user = "postgres"
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            pw = pwd.getpwnam("nobody")
            user = "nobody"
        os.chown(tmp, pw.pw_uid, pw.pw_gid)
        os.chown(sock, pw.pw_uid, pw.pw_gid)
        run_as = ["runuser", "-u", user, "--"]
    env = {**os.environ, "LC_ALL": "C"}
    port = _free_port()
    try:
        subprocess.run([*run_as, str(binp / "initdb"), "-D", str(data), "-U", "nf", "-A", "trust",
                        "--no-sync", "-E", "UTF8"], check=True, capture_output=True, env=env, timeout=120)
        subprocess.run([*run_as, str(binp / "pg_ctl"), "-D", str(data), "-l", str(tmp / "log"), "-w",
                        "-t", "60", "-o", f"-k {sock} -c listen_addresses='' -p {port} -c fsync=off",
                        "start"], check=True, capture_output=True, env=env, timeout=120)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        system_skip(f"could not start a PostgreSQL server: {exc}")
    try:
        yield f"postgresql+psycopg://nf@/postgres?host={sock}&port={port}"
    finally:
        subprocess.run([*run_as, str(binp / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True, env=env, timeout=120)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.slow
def test_omop_postgres_matches_duckdb(postgres_url):
    """The same OMOP SQL on a real PostgreSQL server gives the same tables as on DuckDB."""
    import sqlalchemy as sa

    tables = _omop_tables()
    eng = sa.create_engine(postgres_url)
    with eng.begin() as c:
        c.execute(sa.text("CREATE SCHEMA cdm"))
    for name, df in tables.items():
        df.to_sql(name, eng, schema="cdm", index=False)
    pg = OMOPSource(eng, schema="cdm")
    assert pg.backend == "postgresql"
    duck_con = _duck(tables)
    duck_con.execute("CREATE SCHEMA cdm")
    for name in tables:
        duck_con.execute(f"CREATE TABLE cdm.{name} AS SELECT * FROM {name}")
    dk = OMOPSource(duck_con, schema="cdm")
    assert pg.sql("measurements") == dk.sql("measurements")
    a, b = _all(pg), _all(dk)
    for k in a:
        x, y = a[k].reset_index(drop=True), b[k].reset_index(drop=True)
        assert list(x.columns) == list(y.columns), k
        for c in x.columns:
            xs, ys = x[c].to_numpy(dtype=object), y[c].to_numpy(dtype=object)
            if pd.api.types.is_numeric_dtype(x[c]) or pd.api.types.is_datetime64_any_dtype(x[c]):
                pd.testing.assert_series_equal(x[c], y[c], check_dtype=False, check_names=False, obj=f"{k}.{c}")
            else:
                assert [None if pd.isna(v) else (float(v) if isinstance(v, (int, float)) else v) for v in xs] == \
                       [None if pd.isna(v) else (float(v) if isinstance(v, (int, float)) else v) for v in ys], (k, c)
    eng.dispose()


@pytest.mark.slow
def test_omop_persons_postgres_returns_planted_rows(postgres_url):
    """On a real PostgreSQL server persons() returns the planted rows, as on DuckDB."""
    import sqlalchemy as sa

    eng = sa.create_engine(postgres_url)
    with eng.begin() as c:
        c.execute(sa.text("CREATE SCHEMA link"))
    _omop_tables()["person"].iloc[[2, 0, 1]].to_sql("person", eng, schema="link", index=False)
    pg = OMOPSource(eng, schema="link")
    assert pg.backend == "postgresql"
    got = pg.persons(["person_source_value", "year_of_birth"])
    assert list(got.columns) == ["person_id", "person_source_value", "year_of_birth"]
    assert _rows(got) == PERSONS
    with pytest.raises(ColumnContractError, match=r"Missing: \['race_concept_id'\]"):
        pg.persons(["race_concept_id"])
    eng.dispose()


def test_read_table_refuses_ambiguous_dates_naming_the_file(tmp_path):
    """visit_date 03/04/2020 (day or month first?) is refused with the file, row and value."""
    p = tmp_path / "visits.csv"
    pd.DataFrame({"patient_id": ["A", "A"], "visit_date": ["2020-01-15", "03/04/2020"],
                  "edss": [2.0, 2.5], "relapse": [0, 0]}).to_csv(p, index=False)
    with pytest.raises(InputFormatError, match=r"visits\.csv: .*row 1: '03/04/2020'") as info:
        read_table(p, "visits")
    assert info.value.path == p
    pd.DataFrame({"patient_id": ["A", "A"], "visit_date": ["2020-01-15", "2020-04-03"],
                  "edss": [2.0, 2.5], "relapse": [0, 0]}).to_csv(p, index=False)
    assert read_table(p, "visits")["visit_date"].iloc[1] == pd.Timestamp("2020-04-03")
