"""Clinical inputs to model-ready tables: EHR windows, note embeddings, cohort table.

Modules (import them directly; nothing heavy is imported here):

``features.ehr``
    :func:`~features.ehr.parse_values`, :func:`~features.ehr.make_windows` and
    :class:`~features.ehr.EHRFeaturizer` (rare-variable filter and min-max scaling fitted
    on training patients; padded sequences; as-of summaries per index date).
``features.notes``
    :func:`~features.notes.scrub_phi` and :class:`~features.notes.NoteEmbedder`
    (TF-IDF + SVD, or offline all-MiniLM-L6-v2 with extra ``text``).
``features.cohort``
    Index visits, EDSS milestone labels, confirmed disability progression, event-time
    tables and :func:`~features.cohort.build_cohort_table` (strictly-before as-of joins).
``features.sources``
    :func:`~features.sources.read_table` (CSV/Parquet/DuckDB) and
    :class:`~features.sources.OMOPSource` (OMOP CDM on DuckDB or PostgreSQL).

Typical use::

    from features.cohort import build_index_visits, make_labels, time_to_event_table, build_cohort_table
    from features.ehr import EHRFeaturizer
    from features.notes import NoteEmbedder

    index = build_index_visits(visits)
    train = index["patient_id"].isin(train_ids)
    ehr = EHRFeaturizer().fit(events[events["patient_id"].isin(train_ids)])
    txt = NoteEmbedder().fit(notes[notes["patient_id"].isin(train_ids)], index=index[train])
    table = build_cohort_table(
        index, deviations=deviations, ehr_summaries=ehr.summaries(index, events=events),
        note_embeddings=txt.transform(notes, index),
        labels=[make_labels(visits, index), time_to_event_table(visits, index)])
"""
from __future__ import annotations
