"""The report's description of a braincharts reference model (private to :mod:`analyses.report`)."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def braincharts_facts(model) -> tuple[dict, str]:
    """``({fact: value}, note)`` for the model table of a ``BrainchartsModel``."""
    n_ref = int(model.n_reference_sites_)
    adapted = list(model.sites_[n_ref:])
    lo, hi = model.age_range_
    n_train = np.asarray(model.n_train_)
    facts = {
        "reference model": "braincharts lifespan models (Rutherford et al. 2022, eLife)",
        "likelihood": "SinhArcsinh-warped BLR (braincharts)",
        "source": str(model.source_),
        "covariates": "age, sex, site (no ICV)",
        "responses": len(model.responses_),
        "training sites": n_ref,
        "training subjects per measure": (f"{int(n_train.min())}-{int(n_train.max())}"
                                          if n_train.size and n_train.max() > 0 else "not recorded"),
        "adapted sites": ", ".join(adapted) if adapted else "none",
        "model age range (years)": f"{lo:.1f}-{hi:.1f}",
    }
    note = ("" if adapted else "The model was not adapted to any site: Z-scores are only valid "
            "for scans from its training sites.")
    return facts, note


def braincharts_methods(nm: Mapping) -> str:
    """The methods sentence for the settings recorded by :func:`braincharts_facts`."""
    adapted = nm.get("adapted sites", "none")
    head = ("Deviation scores (Z) came from the published braincharts lifespan models (Rutherford "
            "et al. 2022; one SinhArcsinh-warped Bayesian linear regression per region on age, sex "
            f"and site, trained on {nm.get('training sites', '')} sites; {nm.get('source', '')}; "
            f"model age range {nm.get('model age range (years)', '')} years), read without "
            "refitting. ")
    if adapted == "none":
        return head + "They were not adapted to the study's sites."
    return head + (f"They were adapted to the study's sites ({adapted}) from local healthy "
                   "controls: a per-site offset and log-scale in the warped space, shrunk toward "
                   "the training sites' spread (empirical Bayes), with their uncertainty added to "
                   "the predictive variance.")
