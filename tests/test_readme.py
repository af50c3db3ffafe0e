"""The README's Python examples run as written.

Each ```python block of README.md sits under a marker comment
``<!-- readme-test: NAME -->`` (invisible when rendered). The tests below take a block's
text, make only the substitutions declared in ``SUBSTITUTIONS`` (a placeholder path or
address -> a real one; each must occur in the block, so a changed README breaks the test
instead of silently running something else), define the variables the block assumes
(``demographics``, ``local_controls``, ``cov``, ``Y``, ...) from real shared files where they
exist (FreeSurfer subjects and the fcon1000 controls in ``../shared/data``) or from seeded
simulations, execute it in a temporary working directory, and then check what it made.

The CUDA block cannot run without a GPU: it is compiled and every call in it is bound to
the real signature.
"""
from __future__ import annotations

import ast
import inspect
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_array_equal

from normfuse.errors import DataDroppedWarning

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
#: vertices of the simulated fsaverage5 surfaces that are 0 in every scan (the medial wall)
MEDIAL_WALL = np.arange(5, 20484, 12)
_MARKER = re.compile(r"<!-- readme-test: ([\w-]+) -->\n```python\n(.*?)\n```", re.S)

#: placeholder text in a block -> name of the stand-in value (filled in by each test)
SUBSTITUTIONS = {
    "normative-quickstart": ['"/data/subjects"', '"controls_aseg.txt"'],
    "vertexwise": ['"/data/subjects"'],
    "dask-cluster": ['"tcp://scheduler.example.org:8786"', '"s3://bucket/analysis_table/"'],
    "dask-gpu": [],
}


def _blocks() -> dict[str, tuple[int, str]]:
    """Marker name -> (README line of the block's first code line, block text)."""
    text = README.read_text(encoding="utf-8")
    out = {}
    for m in _MARKER.finditer(text):
        line = text.count("\n", 0, m.start(2)) + 1
        out[m.group(1)] = (line, m.group(2))
    return out


BLOCKS = _blocks()


def _code(name: str, subs: dict[str, str]) -> object:
    """The block compiled with the declared substitutions; line numbers are README's."""
    assert sorted(subs) == sorted(SUBSTITUTIONS[name]), "substitute exactly the declared placeholders"
    line, text = BLOCKS[name]
    for old, new in subs.items():
        assert text.count(old) == 1, f"README block {name!r} no longer holds {old} exactly once"
        text = text.replace(old, new)
    return compile("\n" * (line - 1) + text, str(README), "exec")


def _run(name: str, subs: dict[str, str], namespace: dict) -> dict:
    exec(_code(name, subs), namespace)      # noqa: S102 - the README's own code
    return namespace


def test_every_python_block_is_marked():
    """Every ```python block of the README has a readme-test marker and a test here."""
    text = README.read_text(encoding="utf-8")
    n_python = len(re.findall(r"^```python$", text, re.M))
    assert n_python == len(BLOCKS) == 4, (n_python, sorted(BLOCKS))
    assert set(BLOCKS) == set(SUBSTITUTIONS)


# --------------------------------------------------------------------- block 1
QUICK_REGIONS = ["Left-Thalamus", "Right-Thalamus", "Left-Hippocampus", "Right-Hippocampus"]
NEW_SITES = ("Oulu", "Milwaukee_b")        # held out of the reference fit (PROVENANCE.md protocol)


def _write_asegstats2table(rows: pd.DataFrame, path: Path) -> Path:
    """fcon1000 rows as FreeSurfer 6 asegstats2table writes them (tab-separated, FS6 names)."""
    cols = list(rows.columns)
    keep = cols[cols.index("Left-Lateral-Ventricle"):cols.index("EstimatedTotalIntraCranialVol") + 1]
    keep = [c for c in keep if c != "eTIV"]
    lines = ["\t".join(["Measure:volume", *keep])]
    for sid, vals in zip(rows["sub_id"], rows[keep].to_numpy(dtype=float), strict=True):
        lines.append("\t".join([str(sid), *(repr(float(v)) for v in vals)]))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _fcon_demographics(rows: pd.DataFrame) -> pd.DataFrame:
    """subject_id, age, sex (F/M; fcon1000 codes 0=female 1=male), site."""
    sex = rows["sex"].map({0: "F", 1: "M"})
    return pd.DataFrame({"subject_id": rows["sub_id"].astype(str).to_numpy(),
                         "age": rows["age"].to_numpy(dtype=float),
                         "sex": sex.tolist(), "site": rows["site"].astype(str).tolist()})


def _fcon_volumes(rows: pd.DataFrame, path: Path) -> pd.DataFrame:
    from normative.freesurfer import attach_demographics, read_stats_table

    return attach_demographics(read_stats_table(_write_asegstats2table(rows, path)),
                               _fcon_demographics(rows))


@pytest.mark.shared
def test_normative_quickstart(fs_data, controls_dir, tmp_path, monkeypatch):
    """Quick start on real FreeSurfer 6/7 subjects and fcon1000 controls: counts, metrics, saved model."""
    from normative.model import NormativeModel

    monkeypatch.chdir(tmp_path)
    # SUBJECTS_DIR: FreeSurfer 7.2 bert, FreeSurfer 7.0 (soichi) and nine FreeSurfer 6 subjects
    subjects = tmp_path / "subjects"
    subjects.mkdir()
    scans = {"bert": fs_data / "bert_fs7.2", "soichi": fs_data / "soichi_fs7.0"}
    scans |= {p.name: p for p in sorted((fs_data / "ds_training_fs6").glob("sub-*"))}
    for name, src in scans.items():
        (subjects / name).symlink_to(src.resolve(), target_is_directory=True)
    # the files hold no demographics: illustrative ages and sexes, scanned at the two new sites
    rng = np.random.default_rng(11)
    demographics = pd.DataFrame({"subject_id": list(scans),
                                 "age": rng.uniform(25, 55, len(scans)).round(1),
                                 "sex": rng.choice(["F", "M"], len(scans)),
                                 "site": [NEW_SITES[i % 2] for i in range(len(scans))]})

    fc = pd.read_csv(controls_dir / "fcon1000.csv")
    split = pd.read_csv(controls_dir / "fcon1000_split_seed42.csv").set_index("sub_id")["split"]
    new = fc["site"].isin(NEW_SITES)
    ref = fc.loc[~new & fc["sub_id"].map(split).eq("train").to_numpy()]
    _write_asegstats2table(ref, tmp_path / "controls_aseg.txt")
    control_demographics = _fcon_demographics(ref)
    # local controls: the first 10 per (site, sex) of the new sites; the rest are held out
    local = fc.loc[new]
    first = local.groupby(["site", "sex"]).cumcount() < 10
    local_controls = _fcon_volumes(local.loc[first], tmp_path / "local.txt")
    heldout_controls = _fcon_volumes(local.loc[~first], tmp_path / "heldout.txt")

    from normfuse.errors import SmallReferenceGroupWarning

    with warnings.catch_warnings():
        # Pittsburgh has 2 training controls: warned about, and shrunk, by design
        warnings.simplefilter("ignore", SmallReferenceGroupWarning)
        ns = _run("normative-quickstart",
                  {'"/data/subjects"': repr(str(subjects)),
                   '"controls_aseg.txt"': repr(str(tmp_path / "controls_aseg.txt"))},
                  {"demographics": demographics, "control_demographics": control_demographics,
                   "local_controls": local_controls, "heldout_controls": heldout_controls})

    patients, controls, nm, dev = ns["patients"], ns["controls"], ns["nm"], ns["dev"]
    assert patients["subject_id"].tolist() == list(scans)            # none skipped
    assert len(controls) == len(ref) and controls["sex"].isin(["F", "M"]).all()
    assert set(NEW_SITES) <= set(nm.sites_) and nm.responses_ == ns["regions"]
    # dev: keys, one Z column per region, the counts; lower tail = Z < -1.96 only
    z = nm.transform(patients)
    assert dev.index.equals(patients.index)
    assert {"subject_id", "n_crit", "n_crit_neg", "n_crit_pos", *QUICK_REGIONS} <= set(dev.columns)
    np.testing.assert_allclose(dev[QUICK_REGIONS].to_numpy(), z.to_numpy())
    assert dev["n_crit"].tolist() == (z < -1.96).sum(axis=1).tolist()
    # score: one row per region; held-out controls at the adapted sites are calibrated
    metrics = nm.score(heldout_controls)
    assert metrics.index.tolist() == QUICK_REGIONS
    assert {"expv", "smse", "msll", "rho", "z_sd", "frac_abs_z_gt_1.96"} <= set(metrics.columns)
    zh = nm.transform(heldout_controls).to_numpy()
    assert len(heldout_controls) >= 100
    assert 0.02 <= float(np.mean(np.abs(zh) > 1.96)) <= 0.10      # nominal 5 %
    assert (metrics["expv"] > 0).all()
    # the saved model loads and gives the same Z
    loaded = NormativeModel.load(tmp_path / "models" / "normative")
    np.testing.assert_array_equal(loaded.transform(patients).to_numpy(), z.to_numpy())


# --------------------------------------------------------------------- block 2
def _simulate_surfaces(root: Path, n: int, rng) -> tuple[pd.DataFrame, np.ndarray]:
    """fsaverage5 thickness MGH files: 2.0-3.2 mm thinning 0.006 mm/year, noise sd 0.1 mm.

    Every 12th vertex is 0 in every scan, as FreeSurfer writes the medial wall.
    """
    import nibabel as nib

    from normative.surface import TEMPLATE_VERTICES

    nv = TEMPLATE_VERTICES["fsaverage5"]
    ids = [f"sub-{i:03d}" for i in range(n)]
    demo = pd.DataFrame({"subject_id": ids, "age": rng.uniform(20, 70, n).round(1),
                         "sex": rng.choice(["F", "M"], n), "icv": rng.normal(1.5e6, 1.2e5, n),
                         "site": np.where(np.arange(n) % 2 == 0, "A", "B")})
    eps = rng.normal(size=(n, 2 * nv))
    thick = rng.uniform(2.0, 3.2, 2 * nv) - 0.006 * (demo["age"].to_numpy()[:, None] - 45) + 0.1 * eps
    thick[:, MEDIAL_WALL] = 0.0
    for i, sid in enumerate(ids):
        surf = root / sid / "surf"
        surf.mkdir(parents=True)
        for h, part in (("lh", thick[i, :nv]), ("rh", thick[i, nv:])):
            img = nib.MGHImage(part.astype(np.float32).reshape(-1, 1, 1), np.eye(4))
            nib.save(img, str(surf / f"{h}.thickness.fsaverage5.mgh"))
    return demo, eps


@pytest.mark.slow
def test_vertexwise(tmp_path, monkeypatch):
    """Vertex-wise block on 100 simulated fsaverage5 scans: Z memmap, planted noise, plot, saved model."""
    pytest.importorskip("nilearn", reason="plot_surface_map needs nilearn")
    import matplotlib

    from normative.many import transform_chunked
    from normative.model import NormativeModel

    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    demographics, eps = _simulate_surfaces(tmp_path / "subjects", 100, np.random.default_rng(0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.simplefilter("ignore", RuntimeWarning)      # overflow probes inside SHASH line search
        ns = _run("vertexwise", {'"/data/subjects"': repr(str(tmp_path / "subjects"))},
                  {"demographics": demographics})
    # the medial wall is counted and left out, not fitted and not an error
    dropped = [str(w.message) for w in caught if issubclass(w.category, DataDroppedWarning)]
    assert len(dropped) == 1 and f"{MEDIAL_WALL.size} of 20484 responses" in dropped[0]

    rows, Y, cov, model, Z = ns["rows"], ns["Y"], ns["cov"], ns["model"], ns["Z"]
    assert Y.shape == (100, 20484) and rows["subject_id"].tolist() == demographics["subject_id"].tolist()
    assert len(model.responses_) == 20484 and model.responses_[0] == "lh_00000"
    assert_array_equal(np.flatnonzero(~model.modelled_), MEDIAL_WALL)
    # Z in the memmap z.npy: NaN on the medial wall; elsewhere recovers the planted noise
    on_disk = np.load(tmp_path / "z.npy", mmap_mode="r")
    assert on_disk.dtype == np.float32 and on_disk.shape == Y.shape
    z_all = np.asarray(on_disk)
    assert np.isnan(z_all[:, MEDIAL_WALL]).all()
    cortex = np.delete(np.arange(Y.shape[1]), MEDIAL_WALL)
    assert np.isfinite(z_all[:, cortex]).all()
    assert float(np.corrcoef(z_all[:, cortex].ravel(), eps[:, cortex].ravel())[0, 1]) > 0.85
    # the saved model gives the same Z as the memmap, and transform_chunked without out (first rows)
    loaded = NormativeModel.load(tmp_path / "thickness_model")
    head = transform_chunked(loaded, cov.iloc[:6], np.ascontiguousarray(Y[:6]))
    np.testing.assert_allclose(np.asarray(on_disk[:6]), head, rtol=2e-6, atol=2e-6, equal_nan=True)
    np.testing.assert_array_equal(np.asarray(Z[:6]), np.asarray(on_disk[:6]))
    # the plot: two hemispheres x two views, plus a colour bar
    import matplotlib.pyplot as plt

    assert len(plt.gcf().axes) == 5
    plt.close("all")


# --------------------------------------------------------------------- block 3
@pytest.fixture(scope="module")
def cluster():
    """One single-threaded in-process worker, TCP on 127.0.0.1, no dashboard."""
    distributed = pytest.importorskip("distributed", reason="needs the 'dask' extra")
    cl = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  protocol="tcp", host="127.0.0.1", dashboard_address=None)
    yield cl
    cl.close()


@pytest.mark.slow
def test_dask_cluster(cluster, tmp_path, monkeypatch):
    """Dask block on a LocalCluster equals the single-machine fit, bootstrap CI and XGBoost trees."""
    pytest.importorskip("dask.dataframe", reason="needs the 'dask' extra")
    from models.evaluate import bootstrap_ci
    from models.xgb import XGBClassifierModel
    from normative.many import fit_chunked
    from normative.simulate import simulate_controls

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(3)
    # cov, Y: 300 simulated controls x 600 responses (two chunks of 500)
    sim = simulate_controls(300, 600, n_sites=3, seed=4)
    resp = [c for c in sim.columns if c.startswith("region_")]
    cov, Y = sim.drop(columns=resp), sim[resp].to_numpy()
    # y, risk: 200 outcomes and a planted-informative risk
    y = rng.integers(0, 2, 200)
    risk = 1 / (1 + np.exp(-(1.2 * y - 0.6 + rng.normal(size=200))))
    # the analysis table as one Parquet partition (dev__/ehr__ features, one with missing values)
    n = 600
    table = pd.DataFrame({"patient_id": np.arange(n), "dev__n_crit": rng.poisson(1.5, n).astype(float),
                          "dev__z_thal": rng.normal(size=n), "ehr__relapses": rng.normal(size=n)})
    table.loc[rng.random(n) < 0.1, "ehr__relapses"] = np.nan
    lin = 0.8 * table["dev__n_crit"] - 0.7 * table["dev__z_thal"] + rng.normal(size=n)
    table["y_edss4_3y"] = (lin > 1.2).astype(int)
    (tmp_path / "analysis_table").mkdir()
    table.to_parquet(tmp_path / "analysis_table" / "part.0.parquet")

    ns = _run("dask-cluster",
              {'"tcp://scheduler.example.org:8786"': repr(cluster.scheduler_address),
               '"s3://bucket/analysis_table/"': repr(str(tmp_path / "analysis_table") + "/")},
              {"cov": cov, "Y": Y, "y": y, "risk": risk})
    try:
        # the normative fit equals the single-machine fit exactly
        local = fit_chunked(cov, Y, chunk_size=500)
        for a in ("beta_", "gamma_", "eps_", "tau_", "cov_beta_", "y_mean_", "y_sd_"):
            np.testing.assert_array_equal(getattr(ns["model"], a), getattr(local, a))
        # the bootstrap CI equals the local one
        ci_local = bootstrap_ci(y, risk, n_boot=10_000)
        pd.testing.assert_frame_equal(ns["ci"].summary(), ci_local.summary())
        assert ns["ci"].replicates.shape[0] == 10_000
        # one partition on one worker: the trees of fit(early_stopping_rounds=None)
        xgb_local = XGBClassifierModel(feature_prefixes=("dev__", "ehr__"), early_stopping_rounds=None,
                                       device="cpu").fit(table, "y_edss4_3y")
        loaded = XGBClassifierModel.load(tmp_path / "xgb_model")
        np.testing.assert_allclose(loaded.predict_proba(table), xgb_local.predict_proba(table),
                                   rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(loaded.predict_proba(table), ns["xgb"].predict_proba(table))
    finally:
        ns["client"].close()


# --------------------------------------------------------------------- block 4
def _calls(tree: ast.AST) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)]


def test_dask_gpu_block_binds():
    """The CUDA block compiles and every call in it binds to the real signature (no GPU needed)."""
    from models.xgb import XGBClassifierModel
    from normative.many import fit_chunked
    from normative.model import NormativeModel

    _code("dask-gpu", {})
    line, text = BLOCKS["dask-gpu"]
    tree = ast.parse(text)
    known = {"fit_chunked": fit_chunked, "XGBClassifierModel": XGBClassifierModel,
             "fit_dask": XGBClassifierModel.fit_dask}
    seen = set()
    for call in _calls(tree):
        f = call.func
        name = f.id if isinstance(f, ast.Name) else f.attr
        assert name in known, f"README line ~{line}: {name} is not a known normfuse call"
        sig = inspect.signature(known[name])
        args = [object()] * len(call.args)
        if name == "fit_dask":
            args = [object(), *args]          # self
        sig.bind_partial(*args, **{k.arg: object() for k in call.keywords})
        seen.add(name)
        if name == "fit_chunked":            # its **model_kwargs go to NormativeModel
            extra = {k.arg for k in call.keywords} - set(sig.parameters)
            inspect.signature(NormativeModel).bind_partial(**{k: object() for k in extra})
            assert extra == {"device"}
    assert seen == set(known)
    # fit_dask returns the fitted model, so `xgb = XGBClassifierModel(...).fit_dask(...)` is the model
    assert inspect.signature(XGBClassifierModel.fit_dask).return_annotation in ("XGBClassifierModel",
                                                                               XGBClassifierModel)
