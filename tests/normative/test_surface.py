"""Tests of the vertex-wise surface readers and the fsaverage5 surface plot."""
from __future__ import annotations

import socket
import urllib.request
import warnings

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from normative.surface import collect_surface, read_surface_measure, vertex_names
from normfuse.errors import DataDroppedWarning, InputFormatError

NV = 10242


def _write_mgh(path, values):
    """Write a real-format FreeSurfer MGH overlay of shape (V, 1, 1) with nibabel."""
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.asarray(values, dtype=np.float32).reshape(-1, 1, 1)
    nib.save(nib.MGHImage(data, np.eye(4)), str(path))
    return path


@pytest.fixture
def subjects_dir(tmp_path, rng):
    """A SUBJECTS_DIR with three subjects' fsaverage5 thickness and an fsaverage folder."""
    vals = {}
    for sub in ("sub-02", "sub-01", "sub-03"):
        lh = rng.uniform(1.5, 3.5, NV).astype(np.float32)
        rh = rng.uniform(1.5, 3.5, NV).astype(np.float32)
        _write_mgh(tmp_path / sub / "surf" / "lh.thickness.fsaverage5.mgh", lh)
        _write_mgh(tmp_path / sub / "surf" / "rh.thickness.fsaverage5.mgh", rh)
        _write_mgh(tmp_path / sub / "surf" / "lh.thickness.fwhm10.fsaverage5.mgh", lh + 1)
        _write_mgh(tmp_path / sub / "surf" / "rh.thickness.fwhm10.fsaverage5.mgh", rh + 1)
        vals[sub] = np.r_[lh, rh]
    _write_mgh(tmp_path / "fsaverage5" / "surf" / "lh.thickness.fsaverage5.mgh", np.zeros(NV))
    return tmp_path, vals


def test_read_surface_measure_mgh_and_curv(tmp_path, rng):
    """MGH (V,1,1) and curv-format files read back the written values."""
    import nibabel as nib

    v = rng.normal(2.5, 0.3, NV).astype(np.float32)
    got = read_surface_measure(_write_mgh(tmp_path / "lh.thickness.fsaverage5.mgh", v), NV)
    assert got.shape == (NV,) and got.dtype == np.float64
    assert_array_equal(got, v.astype(np.float64))
    nib.freesurfer.write_morph_data(str(tmp_path / "lh.thickness"), v)
    assert_array_equal(read_surface_measure(tmp_path / "lh.thickness"), v.astype(np.float64))


def test_read_surface_measure_errors(tmp_path):
    """Wrong vertex count, a volume and a missing file raise naming the file and the fix."""
    p = _write_mgh(tmp_path / "lh.thickness.fsaverage6.mgh", np.zeros(40962))
    with pytest.raises(InputFormatError, match=r"fsaverage6\.mgh: has 40962 vertices; expected 10242"):
        read_surface_measure(p, NV)
    import nibabel as nib

    nib.save(nib.MGHImage(np.zeros((4, 5, 6), np.float32), np.eye(4)), str(tmp_path / "vol.mgh"))
    with pytest.raises(InputFormatError, match=r"shape \(4, 5, 6\)"):
        read_surface_measure(tmp_path / "vol.mgh")
    with pytest.raises(InputFormatError, match="does not exist"):
        read_surface_measure(tmp_path / "nope.mgh")


def test_collect_surface_subjects_dir(subjects_dir):
    """Subjects sorted, fsaverage ignored, lh then rh per row; fwhm picks smoothed files."""
    root, vals = subjects_dir
    rows, Y = collect_surface(root)
    assert rows["subject_id"].tolist() == ["sub-01", "sub-02", "sub-03"]
    assert rows["session_id"].isna().all()
    assert Y.shape == (3, 2 * NV)
    for i, sub in enumerate(rows["subject_id"]):
        assert_array_equal(Y[i], vals[sub])
    _, Ys = collect_surface(root, fwhm=10, dtype=np.float32)
    assert Ys.dtype == np.float32
    assert_array_equal(Ys, (Y + 1).astype(np.float32))
    assert len(vertex_names()) == 2 * NV
    assert vertex_names()[NV - 1:NV + 1] == ["lh_10241", "rh_00000"]


def test_collect_surface_mapping_list_and_bids(subjects_dir, tmp_path):
    """A {subject: (lh, rh)} mapping, a list of lh files and a BIDS tree agree."""
    root, vals = subjects_dir
    lh = {s: root / s / "surf" / "lh.thickness.fsaverage5.mgh" for s in vals}
    rows_m, Ym = collect_surface({s: (p, p.with_name("rh" + p.name[2:])) for s, p in lh.items()})
    rows_l, Yl = collect_surface([lh["sub-03"], lh["sub-01"]])
    assert rows_m["subject_id"].tolist() == list(vals)
    assert rows_l["subject_id"].tolist() == ["sub-03", "sub-01"]
    assert_array_equal(Yl[1], vals["sub-01"])
    assert_array_equal(Ym[0], vals["sub-02"])
    bids = tmp_path / "bids"
    _write_mgh(bids / "sub-01" / "ses-02" / "surf" / "lh.thickness.fsaverage5.mgh", vals["sub-01"][:NV])
    _write_mgh(bids / "sub-01" / "ses-02" / "surf" / "rh.thickness.fsaverage5.mgh", vals["sub-01"][NV:])
    rows_b, Yb = collect_surface(bids)
    assert rows_b[["subject_id", "session_id"]].values.tolist() == [["sub-01", "ses-02"]]
    assert_array_equal(Yb[0], vals["sub-01"])


def test_collect_surface_skip_counts_and_warns(subjects_dir):
    """errors='skip' drops a scan with a missing rh file, warns and records the reason."""
    root, vals = subjects_dir
    (root / "sub-02" / "surf" / "rh.thickness.fsaverage5.mgh").unlink()
    with pytest.raises(InputFormatError, match="rh.thickness.fsaverage5.mgh: does not exist"):
        collect_surface(root)
    with pytest.warns(DataDroppedWarning, match="skipped 1 of 3"):
        rows, Y = collect_surface(root, errors="skip")
    assert rows["subject_id"].tolist() == ["sub-01", "sub-03"]
    assert_array_equal(Y[1], vals["sub-03"])
    assert rows.attrs["skipped"][0][0] == "sub-02"
    with pytest.raises(InputFormatError, match="no '<subject>/surf/lh.area.fsaverage5.mgh'"):
        collect_surface(root, measure="area")


def test_plot_surface_map_offline(monkeypatch):
    """Both hemispheres, two views each, on the bundled fsaverage5 with no network access."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from normative.surface_plotting import plot_surface_map

    def no_network(*args, **kwargs):
        raise AssertionError("plot_surface_map tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    v = np.random.default_rng(3).standard_normal(2 * NV)
    v[:10] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # nilearn's own deprecation notes
        fig = plot_surface_map(v, threshold=1.96, title="Z")
    kinds = [type(a).__name__ for a in fig.axes]
    assert kinds.count("Axes3D") == 4 and len(kinds) == 5        # 4 panels + colour bar
    assert [a.get_title() for a in fig.axes[:4]] == ["left lateral", "left medial",
                                                     "right lateral", "right medial"]
    assert all(len(a.collections) >= 1 for a in fig.axes[:4])
    assert fig._suptitle.get_text() == "Z"
    plt.close(fig)
    with pytest.raises(ValueError, match="needs 20484 values"):
        plot_surface_map(np.zeros(NV))
