"""Package data of :mod:`normative`: the FreeSurfer label table (``freesurfer_labels.tsv``)."""
