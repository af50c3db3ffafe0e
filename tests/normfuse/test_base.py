"""Tests of the shared base: checks, persistence, device selection."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from normfuse import checks, persist
from normfuse.device import resolve_device, xgboost_device
from normfuse.errors import (
    ColumnContractError,
    MissingDependencyError,
    NotFittedError,
    SchemaError,
)


@persist.register("_ToyModel", schema=2)
class _Toy:
    def __init__(self, w=None, name="toy"):
        self.w = w
        self.name = name

    def save(self, path):
        return persist.save_state(path, kind="_ToyModel", meta={"name": self.name},
                                  arrays={"w": self.w}, files={"extra.json": b'{"a": 1}'})

    @classmethod
    def _from_state(cls, meta, arrays, files):
        obj = cls(arrays["w"], meta["name"])
        obj.extra = json.loads(files["extra.json"])
        return obj


def test_require_columns_names_missing():
    """A missing column is named in the error."""
    df = pd.DataFrame({"a": [1]})
    with pytest.raises(ColumnContractError, match=r"Missing: \['b'\]"):
        checks.require_columns(df, ["a", "b"], who="f")


def test_require_dataframe_type():
    """Non-DataFrames are refused with TypeError."""
    with pytest.raises(TypeError, match="pandas DataFrame"):
        checks.require_columns(np.zeros(3), ["a"], who="f")


def test_check_columns_match_lists_unexpected():
    """The fit/transform mismatch names missing and unexpected columns."""
    with pytest.raises(ColumnContractError, match=r"Unexpected: \['Left_Hippocampus'\]"):
        checks.check_columns_match(["Left-Hippocampus"], ["Left_Hippocampus"], who="t")


def test_check_numeric_names_cell():
    """A non-numeric cell is named by column, row and value."""
    df = pd.DataFrame({"x": ["1", "2", "pending"]}, index=["r1", "r2", "r3"])
    with pytest.raises(ColumnContractError, match=r"'x'.*'r3'.*'pending'"):
        checks.check_numeric(df, ["x"], who="f")
    df2 = pd.DataFrame({"x": [1.0, np.inf]})
    with pytest.raises(ColumnContractError, match="infinite"):
        checks.check_numeric(df2, ["x"], who="f")
    out = checks.check_numeric(pd.DataFrame({"x": ["1", np.nan]}), ["x"], who="f", allow_nan=True)
    assert np.isnan(out[1, 0]) and out[0, 0] == 1.0


def test_check_is_fitted():
    """Unfitted estimators raise NotFittedError (a ValueError and AttributeError)."""
    class E:
        pass
    e = E()
    with pytest.raises(NotFittedError):
        checks.check_is_fitted(e)
    e.coef_ = 1
    checks.check_is_fitted(e)
    assert issubclass(NotFittedError, ValueError) and issubclass(NotFittedError, AttributeError)


def test_persist_roundtrip(tmp_path):
    """save -> load gives identical arrays and metadata, via the registry."""
    w = np.arange(12.0).reshape(3, 4)
    _Toy(w, "abc").save(tmp_path / "m")
    back = persist.load(tmp_path / "m")
    assert isinstance(back, _Toy) and back.name == "abc" and back.extra == {"a": 1}
    np.testing.assert_array_equal(back.w, w)


def test_persist_overwrite_is_atomic(tmp_path):
    """Saving over an existing folder replaces it and leaves no temporaries."""
    _Toy(np.zeros(2)).save(tmp_path / "m")
    _Toy(np.ones(2)).save(tmp_path / "m")
    np.testing.assert_array_equal(persist.load(tmp_path / "m").w, np.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


@pytest.mark.parametrize("target", ["arrays.npz", "extra.json", "model.json"])
def test_persist_tampered_fails(tmp_path, target):
    """Changing any saved file makes loading fail with SchemaError."""
    _Toy(np.arange(3.0)).save(tmp_path / "m")
    p = tmp_path / "m" / target
    if target == "model.json":
        h = json.loads(p.read_text())
        h["meta"]["name"] = "evil"
        p.write_text(json.dumps(h))
    else:
        p.write_bytes(p.read_bytes() + b"x")
    with pytest.raises(SchemaError, match="altered|edited"):
        persist.load(tmp_path / "m")


def test_persist_schema_version_mismatch(tmp_path):
    """Another schema version is refused with a message naming both versions."""
    _Toy(np.arange(3.0)).save(tmp_path / "m")
    p = tmp_path / "m" / "model.json"
    h = json.loads(p.read_text())
    h["schema"] = 1
    p.write_text(json.dumps(h))
    with pytest.raises(SchemaError, match="schema version 1 .*expects 2"):
        persist.load(tmp_path / "m")


def test_persist_wrong_kind_and_missing(tmp_path):
    """Loading a folder as another kind, or a folder without model.json, fails clearly."""
    with pytest.raises(SchemaError, match="no model.json"):
        persist.load(tmp_path)
    _Toy(np.arange(3.0)).save(tmp_path / "m")
    with pytest.raises(SchemaError, match="expected a 'Other'"):
        persist.load(tmp_path / "m", kind="Other")


def test_persist_refuses_object_arrays(tmp_path):
    """Object arrays cannot be saved (they would need pickle)."""
    with pytest.raises(TypeError, match="dtype object"):
        persist.save_state(tmp_path / "m", kind="_ToyModel", meta={},
                           arrays={"a": np.array([{"x": 1}], dtype=object)})
    assert not (tmp_path / "m").exists()


def test_atomic_write_failure_leaves_nothing(tmp_path):
    """An error inside atomic_path leaves neither the target nor a temporary."""
    with pytest.raises(RuntimeError):
        with persist.atomic_path(tmp_path / "out.csv") as tmp:
            tmp.write_text("partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_resolve_device(monkeypatch):
    """auto/cpu resolve; cuda without a GPU raises; bad names raise ValueError."""
    monkeypatch.setenv("NORMFUSE_DISABLE_CUDA", "1")
    from normfuse import device
    device.cuda_available.cache_clear()
    try:
        assert resolve_device("auto") == "cpu"
        assert resolve_device("cpu") == "cpu"
        assert xgboost_device("auto") == "cpu"
        with pytest.raises(MissingDependencyError, match="no CUDA device"):
            resolve_device("cuda")
        with pytest.raises(ValueError, match="expected 'auto'"):
            resolve_device("tpu")
    finally:
        device.cuda_available.cache_clear()


def test_stage_imports_are_light():
    """Importing any stage pulls in none of torch, xgboost, matplotlib, pcntoolkit, duckdb."""
    code = (
        "import sys, normfuse, normative, features, models, analyses\n"
        "import normfuse.checks, normfuse.persist, normfuse.device\n"
        "heavy = [m for m in ('torch','xgboost','matplotlib','pcntoolkit','duckdb','nilearn',"
        "'statsmodels','lifelines') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_unknown_site_error_carries_the_sites():
    """UnknownSiteError from a model names the unknown sites, their row count and the known ones."""
    from normative.model import NormativeModel
    from normative.simulate import simulate_controls
    from normfuse.errors import UnknownSiteError

    df = simulate_controls(300, 2, n_sites=3, seed=0)
    regions = [c for c in df.columns if c.startswith("region_")]
    nm = NormativeModel(regions).fit(df)
    new = df.iloc[:7].assign(site="Oslo")
    with pytest.raises(UnknownSiteError, match="Oslo") as info:
        nm.transform(new)
    assert info.value.sites == ["Oslo"] and info.value.n_rows == 7
    assert sorted(info.value.known) == sorted(df["site"].astype(str).unique())
    assert UnknownSiteError("plain").sites == []
