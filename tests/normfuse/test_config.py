"""Study configuration: schema defaults, validation messages, TOML round trip."""
from __future__ import annotations

from pathlib import Path

import pytest

from normfuse.config import SCHEMA, ConfigError, load_config, parse_config, schema_table, to_toml

MIN = {"patients": {"subjects_dir": "subjects"}, "reference": {"tables": ["ref.txt"]},
       "clinical": {"source": "ehr.duckdb"}}


def _raw(**over):
    raw = {k: dict(v) for k, v in MIN.items()}
    for sec, kv in over.items():
        raw.setdefault(sec, {}).update(kv)
    return raw


def test_defaults_filled_and_paths_resolved(tmp_path):
    """Every schema key is present with its default; relative paths resolve against base_dir."""
    cfg = parse_config(_raw(), base_dir=tmp_path)
    assert set(cfg) == set(SCHEMA)
    assert cfg["normative"]["tail"] == "lower" and cfg["normative"]["threshold"] == 1.96
    assert cfg["analyses"]["theta"] == 1.0
    assert cfg["models"]["ci"] == "auto"
    assert parse_config(_raw(models={"ci": "cluster_bootstrap"}))["models"]["ci"] == \
        "cluster_bootstrap"
    assert cfg["patients"]["subjects_dir"] == str(tmp_path / "subjects")
    assert cfg["reference"]["tables"] == [str(tmp_path / "ref.txt")]
    assert cfg["clinical"]["source"] == str(tmp_path / "ehr.duckdb")


@pytest.mark.parametrize("raw, match", [
    (_raw(normative={"tial": "lower"}), r"unknown key \[normative\] tial\. Did you mean 'tail'\?"),
    ({**_raw(), "normativ": {}}, r"unknown section \[normativ\]\. Did you mean 'normative'\?"),
    (_raw(normative={"threshold": "high"}), r"\[normative\] threshold = 'high' must be a number"),
    (_raw(study={"seed": 1.5}), r"\[study\] seed = 1.5 must be an integer"),
    (_raw(features={"ehr": "yes"}), r"\[features\] ehr = 'yes' must be true or false"),
    (_raw(normative={"tail": "low"}), r"\[normative\] tail = 'low' is not one of 'lower'"),
    (_raw(models={"n_splits": 1}), r"\[models\] n_splits = 1 is below the minimum 2"),
    (_raw(models={"ci": "delon"}), r"\[models\] ci = 'delon' is not one of 'auto', 'delong', "
     r"'cluster_bootstrap'; fix the value\. Did you mean 'delong'\?$"),
    (_raw(models={"ci": "DeLong"}), r"\[models\] ci = 'DeLong' is not one of 'auto', 'delong', "
     r"'cluster_bootstrap'; fix the value\. Did you mean 'delong'\?$"),
    (_raw(models={"ci": "jackknife"}), r"\[models\] ci = 'jackknife' is not one of 'auto', "
     r"'delong', 'cluster_bootstrap'; fix the value\.$"),
    (_raw(models={"ci": 1}), r"\[models\] ci = 1 must be a string"),
    (_raw(models={"n_jobs": 0}), r"\[models\] n_jobs = 0 runs nothing; use 1 \(one job at a time\)"),
    (_raw(models={"n_jobs": 2.5}), r"\[models\] n_jobs = 2.5 must be an integer"),
    (_raw(reference={"model": "m"}), r"\[reference\] sets both model and tables"),
    (_raw(clinical={"source": "data/participants.tsv"}),
     r"\[clinical\] source = 'data/participants\.tsv' has suffix '\.tsv'; a table file is not "
     r"a source: set \[clinical\] visits \(and events, encounters, notes\) to your tables"),
    (_raw(models={"compare": ["ehr_xgb"]}), r"\[models\] compare = \['ehr_xgb'\] lacks "
     r"'dev_count_logistic', the baseline every other model is compared with"),
    (_raw(clinical={"source": "omop.db"}), r"\[clinical\] source = 'omop\.db' has suffix "
     r"'\.db'; use an OMOP-shaped DuckDB file ending in \.duckdb or a postgresql:// URL"),
    (_raw(clinical={"source": "sqlite:///cdm.db"}), r"\[clinical\] source = 'sqlite:///cdm\.db'"
     r": the URL scheme 'sqlite://' is not supported"),
    ({"patients": {}, "reference": {"tables": ["r"]}, "clinical": {"source": "e.duckdb"}},
     r"\[patients\] needs exactly one of subjects_dir"),
])
def test_errors_name_key_and_fix(raw, match):
    """Unknown keys, wrong types, bad choices and inconsistent sections raise one clear line."""
    with pytest.raises(ConfigError, match=match) as ei:
        parse_config(raw, source="study.toml")
    msg = str(ei.value)
    assert msg.startswith("study.toml: ") and "\n" not in msg


def test_toml_round_trip(tmp_path):
    """to_toml writes a file that load_config reads back to the same configuration."""
    cfg = parse_config(_raw(normative={"regions": ["Left-Thalamus"]}, study={"seed": 7}),
                       base_dir=tmp_path)
    p = tmp_path / "study.toml"
    p.write_text(to_toml(cfg, relative_to=tmp_path))
    assert load_config(p, check_files=False) == cfg
    assert '# Deviations counted in the main analysis' in p.read_text()


def test_toml_round_trip_with_paths_outside_the_folder(tmp_path):
    """Paths under the folder are written relative to it, others stay absolute; both read back."""
    data, study = tmp_path / "data", tmp_path / "study"
    study.mkdir()
    cfg = parse_config(_raw(reference={"tables": [str(data / "ref.txt"), "ref2.txt"]},
                            clinical={"source": str(data / "ehr.duckdb")}), base_dir=study)
    p = study / "study.toml"
    text = to_toml(cfg, relative_to=study)
    p.write_text(text)
    assert load_config(p, check_files=False) == cfg
    assert f'tables = ["{data / "ref.txt"}", "ref2.txt"]' in text
    assert f'source = "{data / "ehr.duckdb"}"' in text
    # the folder moves with its files inside: the relative entries follow it
    moved = tmp_path / "moved"
    study.rename(moved)
    back = load_config(moved / "study.toml", check_files=False)
    assert back["reference"]["tables"] == [str(data / "ref.txt"), str(moved / "ref2.txt")]


def test_load_config_missing_and_invalid(tmp_path):
    """A missing file or broken TOML gives a ConfigError naming the file."""
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[study\nname = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_schema_table_lists_every_key():
    """The README schema table has one row per key and is the one schema_table() writes."""
    n = sum(len(k) for k in SCHEMA.values())
    assert schema_table().count("\n| `") == n
    readme = Path(__file__).resolve().parents[2] / "README.md"
    assert schema_table() in readme.read_text(encoding="utf-8")


VOLUME_SECTIONS = ("patients", "reference", "adaptation", "controls")


def test_where_and_join_keys_parsed(tmp_path):
    """where/join exist in every volumes section; join paths resolve, expressions are kept."""
    for sec in VOLUME_SECTIONS:
        assert SCHEMA[sec]["where"].default == [] and SCHEMA[sec]["join"].default == []
    cfg = parse_config(_raw(reference={"join": "split.csv", "where": ["split=train", "age>=18"]},
                            adaptation={"tables": ["loc.csv"], "join": ["a.csv", "sub/b.csv"],
                                        "where": ["group=Control"]}),
                       base_dir=tmp_path)
    assert cfg["reference"]["join"] == [str(tmp_path / "split.csv")]     # one string: a list
    assert cfg["reference"]["where"] == ["split=train", "age>=18"]
    assert cfg["adaptation"]["join"] == [str(tmp_path / "a.csv"), str(tmp_path / "sub" / "b.csv")]
    assert cfg["patients"]["where"] == [] and cfg["controls"]["join"] == []
    p = tmp_path / "study.toml"
    p.write_text(to_toml(cfg, relative_to=tmp_path))
    assert load_config(p, check_files=False) == cfg


@pytest.mark.parametrize("over, match", [
    ({"reference": {"where": ["split"]}},
     r"^study\.toml: \[reference\] where = 'split': no operator \(=, !=, <, <=, >, >=\); "
     r"write each item as \"COLUMN=VALUE\""),
    ({"patients": {"where": ["group=SZ", "age>old"]}},
     r"^study\.toml: \[patients\] where = 'age>old': > needs a number, got 'old'"),
    ({"controls": {"tables": ["c.csv"], "where": ["site=a,,b"]}},
     r"\[controls\] where = 'site=a,,b': an empty value in the list"),
    ({"adaptation": {"tables": ["a.csv"], "where": ["age=>3"]}},
     r"\[adaptation\] where = 'age=>3': '=>' is not an operator"),
    ({"reference": {"where": "split=train"}},
     r"\[reference\] where = 'split=train' must be a list of strings"),
    ({"reference": {"join": [3]}}, r"\[reference\] join = \[3\] must be a list of path strings"),
    ({"reference": {"wher": ["split=train"]}}, r"unknown key \[reference\] wher\. Did you mean "
     r"'where'\?"),
    ({"adaptation": {"where": ["group=Control"]}},
     r"\[adaptation\] where = \['group=Control'\] selects rows of \[adaptation\] tables, but "
     r"none are set; set tables or remove where\."),
    ({"reference": {"tables": [], "model": "m", "join": ["s.csv"]}},
     r"\[reference\] join = \['s\.csv'\] selects rows .*none are set \(model is set"),
])
def test_where_and_join_errors_name_section_key_and_value(over, match):
    """A malformed where or a misplaced where/join is one line naming section, key and value."""
    with pytest.raises(ConfigError, match=match) as ei:
        parse_config(_raw(**over), source="study.toml")
    msg = str(ei.value)
    assert "\n" not in msg and "--where" not in msg


def test_postgres_urls_accepted_and_kept():
    """postgresql://, postgres:// and postgresql+DRIVER:// sources are kept as written."""
    for url in ("postgresql://me@db/cdm", "postgres://me@db/cdm", "postgresql+psycopg://me@db/c"):
        assert parse_config(_raw(clinical={"source": url}))["clinical"]["source"] == url


def _study(tmp_path, **over):
    """A study folder whose every input exists; ``over`` replaces sections' keys."""
    (tmp_path / "subjects").mkdir()
    for f in ("ref.txt", "ehr.duckdb", "participants.tsv"):
        (tmp_path / f).write_text("x")
    over = {**over, "patients": {"demographics": "participants.tsv", **over.get("patients", {})}}
    raw = _raw(**over)
    lines = []
    for sec, kv in raw.items():
        lines.append(f"[{sec}]")
        lines += [f"{k} = {v!r}".replace("'", '"') for k, v in kv.items()]
    p = tmp_path / "study.toml"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_load_config_checks_every_input_path(tmp_path):
    """A missing input, or a file where a folder belongs (and back), fails at load time."""
    assert load_config(_study(tmp_path))["patients"]["demographics"] == \
        str(tmp_path / "participants.tsv")
    (tmp_path / "participants.tsv").unlink()
    p = tmp_path / "study.toml"
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    assert str(ei.value) == (
        f"{p}: [patients] demographics = 'participants.tsv' not found (looked for "
        f"{tmp_path / 'participants.tsv'}); fix the path (relative paths are resolved against "
        "the config file's folder).")
    assert load_config(p, check_files=False)["patients"]["demographics"]   # parsing alone passes
    (tmp_path / "participants.tsv").mkdir()
    with pytest.raises(ConfigError, match=r"\[patients\] demographics = 'participants\.tsv' is "
                       r"a folder; it must be a file; fix the path\.$"):
        load_config(p)


@pytest.mark.parametrize("sec, key, value, match", [
    ("patients", "subjects_dir", "ref.txt", r"\[patients\] subjects_dir = 'ref\.txt' is a file; "
     r"it must be a folder \(a FreeSurfer SUBJECTS_DIR\)"),
    ("reference", "tables", ["ref.txt", "ref2.txt"], r"\[reference\] tables = 'ref2\.txt' not "
     r"found"),
    ("clinical", "source", "nosuch.duckdb", r"\[clinical\] source = 'nosuch\.duckdb' not found"),
    ("controls", "join", ["split.csv"], r"\[controls\] join = 'split\.csv' not found"),
    ("clinical", "notes", "notes.csv", r"\[clinical\] notes = 'notes\.csv' not found"),
])
def test_load_config_names_the_bad_path(tmp_path, sec, key, value, match):
    """Each input path key is checked at load and its error names section, key and value."""
    over = {sec: {key: value}}
    if sec == "controls":
        over[sec]["tables"] = ["ref.txt"]
    with pytest.raises(ConfigError, match=match) as ei:
        load_config(_study(tmp_path, **over))
    assert "\n" not in str(ei.value)


def test_baseline_is_the_one_compare_models_uses():
    """The baseline the config insists on is compare_models' default baseline."""
    import inspect

    from models.compare import compare_models
    from normfuse.config import _BASELINE

    assert inspect.signature(compare_models).parameters["baseline"].default == _BASELINE


def test_models_n_jobs_default_and_not_in_the_digest():
    """[models] n_jobs defaults to all cores and does not change the digest (results do not depend on it)."""
    import hashlib
    import json

    from normfuse.config import config_digest

    cfg = parse_config(_raw())
    assert cfg["models"]["n_jobs"] == -1
    other = parse_config(_raw(models={"n_jobs": 3}))
    assert config_digest(other) == config_digest(cfg)
    # hashed as n_jobs = 1: digests of runs made before n_jobs meant worker processes still match
    old = {**cfg, "models": {**cfg["models"], "n_jobs": 1}}
    assert config_digest(cfg) == hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()
    assert config_digest(parse_config(_raw(models={"n_splits": 3}))) != config_digest(cfg)


def test_models_compare_n_jobs_option():
    """`normfuse models compare --n-jobs N` parses N; 0 and words are usage errors."""
    from normfuse.cli import build_parser

    p = build_parser()
    assert p.parse_args(["models", "compare", "study.toml", "--n-jobs", "-1"]).n_jobs == -1
    assert p.parse_args(["models", "compare", "study.toml"]).n_jobs is None
    for bad in ("0", "all"):
        with pytest.raises(SystemExit):
            p.parse_args(["models", "compare", "study.toml", "--n-jobs", bad])
    with pytest.raises(SystemExit):  # the option belongs to the models stage only
        p.parse_args(["features", "build", "study.toml", "--n-jobs", "2"])


def test_models_compare_n_jobs_overrides_the_config(monkeypatch, tmp_path):
    """--n-jobs replaces [models] n_jobs in the configuration the pipeline runs with."""
    import normfuse.cli as cli
    import normfuse.config
    import normfuse.pipeline

    seen = {}
    monkeypatch.setattr(normfuse.config, "load_config", lambda path: parse_config(_raw()))
    monkeypatch.setattr(normfuse.pipeline, "run_pipeline",
                        lambda cfg, out, **kw: seen.update(cfg=cfg, stages=kw["stages"]))
    monkeypatch.setattr(cli, "_finish", lambda res, out, args: None)
    assert cli.main(["models", "compare", str(tmp_path / "study.toml"), "--n-jobs", "3"]) == 0
    assert seen["cfg"]["models"]["n_jobs"] == 3 and seen["stages"] == ["models"]
    assert cli.main(["models", "compare", str(tmp_path / "study.toml")]) == 0
    assert seen["cfg"]["models"]["n_jobs"] == -1
