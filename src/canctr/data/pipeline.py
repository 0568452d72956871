"""Compatibility: the names `canctr.data.pipeline` used to define, now in their own modules.

    samples.py   PrepareOptions, RawSplit, Timeline, HistoryIndex, event_samples, sample_excluding, ...
    vocab.py     Vocab, distinct_sorted
    encode.py    encode_and_save, Names, SideInfo, describe_source
    summary.py   format_summary
    formats/     prepare_amazon, prepare_sequences, prepare_dien (one module per input format)

Import from those modules in new code; this one only keeps older imports working.
"""

from canctr.data.encode import Names, SideInfo, describe_source, encode_and_save
from canctr.data.formats.amazon import prepare_amazon
from canctr.data.formats.dien import dien_split, prepare_dien
from canctr.data.formats.sequences import prepare_sequences
from canctr.data.samples import (
    PAD,
    HistoryIndex,
    PrepareOptions,
    RawSplit,
    Timeline,
    event_counts,
    event_samples,
    sample_excluding,
)
from canctr.data.summary import SUMMARY_NOTES, format_summary
from canctr.data.vocab import DENSE_MAX_KEYS, PAD_NAME, Vocab, distinct_sorted

__all__ = [
    "DENSE_MAX_KEYS", "HistoryIndex", "Names", "PAD", "PAD_NAME", "PrepareOptions", "RawSplit", "SUMMARY_NOTES",
    "SideInfo", "Timeline", "Vocab", "describe_source", "dien_split", "distinct_sorted", "encode_and_save",
    "event_counts", "event_samples", "format_summary", "prepare_amazon", "prepare_dien", "prepare_sequences",
    "sample_excluding",
]
