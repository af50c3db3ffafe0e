"""Brain volumes to normative deviations.

FreeSurfer/FastSurfer/SynthSeg readers (:mod:`normative.freesurfer`), the vectorised
normative model (:mod:`normative.model`), new-site adaptation (:mod:`normative.adapt`),
critical-deviation counts (:mod:`normative.deviations`), evaluation metrics
(:mod:`normative.metrics`), and for vertex-wise work: template-surface readers
(:mod:`normative.surface`), chunked fits of many responses, locally or on Dask
(:mod:`normative.many`), and fsaverage5 maps (:mod:`normative.surface_plotting`). Importing this package is light (< 1 s): torch,
matplotlib and pcntoolkit load only inside the functions that use them.
"""
from __future__ import annotations
