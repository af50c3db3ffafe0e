"""Vertex-wise surface measures: read ``?h.<measure>.<template>.mgh`` files into arrays.

FreeSurfer resamples each subject's cortical thickness (area, volume, ...) to a
template surface with ``mris_preproc``/``mri_surf2surf`` or ``recon-all -qcache``,
writing one MGH file per hemisphere, e.g. ``surf/lh.thickness.fsaverage5.mgh`` or
``surf/lh.thickness.fwhm10.fsaverage5.mgh`` (shape ``(10242, 1, 1)`` on fsaverage5).
:func:`collect_surface` stacks left then right hemisphere of every scan into one
``(n_scans, n_vertices)`` array next to a small DataFrame of scan keys, ready for
:func:`normative.many.fit_chunked`; :func:`vertex_names` names the columns.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from normfuse import checks
from normfuse.errors import DataDroppedWarning, InputFormatError, NormfuseError

__all__ = ["TEMPLATE_VERTICES", "read_surface_measure", "collect_surface", "vertex_names"]

_log = checks.get_logger("normative.surface")

#: vertices per hemisphere of FreeSurfer's template surfaces
TEMPLATE_VERTICES = {"fsaverage3": 642, "fsaverage4": 2562, "fsaverage5": 10242,
                     "fsaverage6": 40962, "fsaverage": 163842}
_HEMIS = ("lh", "rh")


def vertex_names(template: str = "fsaverage5") -> list[str]:
    """Column names of a two-hemisphere vertex array: ``lh_00000`` ... ``rh_10241``."""
    nv = _n_vertices(template)
    return [f"{h}_{j:05d}" for h in _HEMIS for j in range(nv)]


def _n_vertices(template):
    if template not in TEMPLATE_VERTICES:
        raise ValueError(f"template={template!r}; expected one of {sorted(TEMPLATE_VERTICES)}.")
    return TEMPLATE_VERTICES[template]


def read_surface_measure(path: str | Path, n_vertices: int | None = None) -> np.ndarray:
    """Read one hemisphere's per-vertex measure as a 1-D float64 array.

    Parameters
    ----------
    path : str or Path
        An MGH/MGZ file (``lh.thickness.fsaverage5.mgh``, data shape ``(V, 1, 1)``), or
        a FreeSurfer curv-format morphometry file (``lh.thickness``).
    n_vertices : int, optional
        Expected number of vertices (10242 on fsaverage5); a mismatch is an error.

    Returns
    -------
    ndarray of shape (V,)

    Raises
    ------
    InputFormatError
        Missing or unreadable file, data that are not one value per vertex, or the wrong
        number of vertices.
    """
    import nibabel as nib

    p = Path(path)
    if not p.is_file():
        raise InputFormatError("does not exist. Check the path, or resample the subject to the "
                               "template first (mris_preproc / recon-all -qcache).", path=p)
    try:
        if p.name.endswith((".mgh", ".mgz")):
            img = nib.load(str(p))
            data = np.asarray(img.dataobj, dtype=np.float64)
        else:
            data = np.asarray(nib.freesurfer.read_morph_data(str(p)), dtype=np.float64)
    except (OSError, ValueError, EOFError, nib.filebasedimages.ImageFileError) as exc:
        raise InputFormatError(f"cannot be read as an MGH or curv file ({exc}).", path=p) from exc
    if data.ndim > 1 and sum(s > 1 for s in data.shape) > 1:
        raise InputFormatError(
            f"holds data of shape {data.shape}; a surface measure has one value per vertex, "
            "shape (V, 1, 1). Pass a surface overlay, not a volume.", path=p)
    data = data.reshape(-1)
    if n_vertices is not None and data.size != int(n_vertices):
        raise InputFormatError(
            f"has {data.size} vertices; expected {int(n_vertices)}. Resample it to the "
            "template named by `template=` (e.g. mri_surf2surf --trgsubject fsaverage5).", path=p)
    return data


def _file_name(hemi, measure, template, fwhm):
    mid = f".fwhm{int(fwhm)}" if fwhm is not None else ""
    return f"{hemi}.{measure}{mid}.{template}.mgh"


def _find_pairs(root: Path, measure, template, fwhm):
    """(subject_id, session_id, lh_path, rh_path) for every scan folder holding an lh file."""
    lh = _file_name("lh", measure, template, fwhm)
    found = []
    for pattern, depth in ((f"*/surf/{lh}", 1), (f"*/*/surf/{lh}", 2)):
        for f in root.glob(pattern):
            parts = f.relative_to(root).parts
            if parts[0].startswith("fsaverage"):
                continue
            sub, ses = (parts[0], None) if depth == 1 else (parts[0], parts[1])
            found.append((sub, ses, f, f.with_name("rh" + f.name[2:])))
    return sorted(found, key=lambda r: (r[0], r[1] or ""))


def collect_surface(
    source: str | Path | Mapping[str, tuple[str | Path, str | Path]] | Sequence[str | Path],
    *,
    measure: str = "thickness",
    template: str = "fsaverage5",
    fwhm: int | None = None,
    dtype=np.float64,
    errors: Literal["raise", "skip"] = "raise",
):
    """Collect one template-space surface measure of many scans into an array.

    Parameters
    ----------
    source : folder, mapping or list of files
        * a SUBJECTS_DIR (``<subject>/surf/lh.<measure>[.fwhmN].<template>.mgh``) or a
          BIDS-derivatives folder (``sub-*/ses-*/surf/...``); ``fsaverage*`` folders are
          ignored;
        * a mapping ``{subject_id: (lh_path, rh_path)}``;
        * a list of left-hemisphere files; each right file is the same path with the
          leading ``lh.`` of the file name replaced by ``rh.``, and the subject id is the
          folder above ``surf/`` (or the file's folder).
    measure : str, default "thickness"
    template : str, default "fsaverage5"
    fwhm : int, optional
        Smoothing kernel in the file name (``fwhm10``); None reads unsmoothed files.
    dtype : numpy dtype, default float64
        Of the returned array (float32 halves the memory).
    errors : {"raise", "skip"}
        ``"skip"`` leaves out scans with missing or malformed files, logging each and
        warning with :class:`~normfuse.errors.DataDroppedWarning`.

    Returns
    -------
    rows : DataFrame
        One row per scan: ``subject_id``, ``session_id`` (missing when there are no
        sessions), ``lh_path``, ``rh_path``. RangeIndex; join covariates with
        :func:`normative.freesurfer.attach_demographics`.
    values : ndarray of shape (n_scans, 2 * V)
        Left hemisphere then right hemisphere (columns :func:`vertex_names`).

    Raises
    ------
    InputFormatError
        No scans found; a file missing or malformed (``errors="raise"``); every scan skipped.
    """
    import pandas as pd

    who = "collect_surface"
    if errors not in ("raise", "skip"):
        raise ValueError(f"{who}: errors={errors!r}; expected 'raise' or 'skip'.")
    nv = _n_vertices(template)
    if isinstance(source, (str, Path)):
        root = Path(source)
        if not root.is_dir():
            raise InputFormatError("is not a folder. Pass a SUBJECTS_DIR, a mapping "
                                   "{subject: (lh, rh)} or a list of lh files.", path=root)
        scans = _find_pairs(root, measure, template, fwhm)
        if not scans:
            raise InputFormatError(
                f"holds no '<subject>/surf/{_file_name('lh', measure, template, fwhm)}' files "
                "(nor sub-*/ses-*/surf/...). Resample with recon-all -qcache or mris_preproc, "
                "or check measure=, template= and fwhm=.", path=root)
    elif isinstance(source, Mapping):
        scans = [(str(k), None, Path(v[0]), Path(v[1])) for k, v in source.items()]
    else:
        scans = []
        for f in map(Path, source):
            if not f.name.startswith("lh."):
                raise ValueError(f"{who}: {str(f)!r} does not start with 'lh.'; pass left-hemisphere "
                                 "files (the rh file is found beside each) or a mapping "
                                 "{subject: (lh, rh)}.")
            folder = f.parent.parent if f.parent.name == "surf" else f.parent
            scans.append((folder.name, None, f, f.with_name("rh" + f.name[2:])))
    if not scans:
        raise ValueError(f"{who}: no scans given.")
    out = np.empty((len(scans), 2 * nv), dtype=dtype)
    keep, skipped = [], []
    for sub, ses, lh, rh in scans:
        try:
            row = len(keep)
            out[row, :nv] = read_surface_measure(lh, nv)
            out[row, nv:] = read_surface_measure(rh, nv)
        except NormfuseError as exc:
            if errors == "raise":
                raise
            skipped.append((sub, ses, str(exc)))
            _log.warning("skipped %s%s: %s", sub, f"/{ses}" if ses else "", exc)
            continue
        keep.append((sub, ses, str(lh), str(rh)))
    if skipped:
        checks.log_dropped(_log, len(skipped), "scans", "surface files missing or malformed")
        if not keep:
            raise InputFormatError(f"all {len(skipped)} scans were skipped; first reason: "
                                   f"{skipped[0][2]}")
        warnings.warn(
            f"{who}: skipped {len(skipped)} of {len(scans)} scans with missing or malformed "
            "surface files (see the log and rows.attrs['skipped']). Silence with "
            "warnings.filterwarnings('ignore', category=DataDroppedWarning).",
            DataDroppedWarning, stacklevel=2)
    rows = pd.DataFrame(keep, columns=["subject_id", "session_id", "lh_path", "rh_path"])
    rows = rows.astype({"subject_id": "string", "session_id": "string",
                        "lh_path": "string", "rh_path": "string"})
    rows.attrs["skipped"] = tuple(skipped)
    rows.attrs["template"] = template
    rows.attrs["measure"] = measure
    values = out[:len(keep)]
    if len(keep) < len(scans):
        values = values.copy()      # release the rows of skipped scans
    return rows, values

