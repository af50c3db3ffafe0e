"""Brain volumes to normative deviations.

FreeSurfer/FastSurfer/SynthSeg readers (:mod:`normative.freesurfer`), the vectorised
normative model (:mod:`normative.model`), new-site adaptation (:mod:`normative.adapt`),
critical-deviation counts (:mod:`normative.deviations`) and evaluation metrics
(:mod:`normative.metrics`). Importing this package is light (< 1 s): torch,
matplotlib and pcntoolkit load only inside the functions that use them.
"""
from __future__ import annotations
