"""Compatibility: the names `canctr.data.readers` used to define, now beside what they serve.

    lines.py     DataFormatError, iter_lines, read_bytes, GZIP_MAGIC (reading raw lines, the bad-row policy)
    vocab.py     Interner
    samples.py   Interactions, DEFAULT_CATE
    formats/     every read_<format> function, next to its pipeline (one module per input format)

Import from those modules in new code; this one only keeps older imports working.
"""

from canctr.data.formats.amazon import read_amazon_meta, read_amazon_reviews
from canctr.data.formats.dien import (
    DienSamples,
    read_dien_item_info,
    read_dien_reviews_info,
    read_dien_samples,
    read_vocab_pickle,
)
from canctr.data.formats.movielens import read_movielens_movies, read_movielens_ratings, read_movielens_users
from canctr.data.formats.sequences import read_item_attributes, read_sequences
from canctr.data.formats.taobao import TAOBAO_BEHAVIORS, TAOBAO_WINDOW, TaobaoLog, read_taobao
from canctr.data.lines import GZIP_MAGIC, DataFormatError, iter_lines, read_bytes
from canctr.data.samples import DEFAULT_CATE, Interactions
from canctr.data.vocab import Interner

__all__ = [
    "DEFAULT_CATE", "DataFormatError", "DienSamples", "GZIP_MAGIC", "Interactions", "Interner", "TAOBAO_BEHAVIORS",
    "TAOBAO_WINDOW", "TaobaoLog", "iter_lines", "read_amazon_meta", "read_amazon_reviews", "read_bytes",
    "read_dien_item_info", "read_dien_reviews_info", "read_dien_samples", "read_item_attributes",
    "read_movielens_movies", "read_movielens_ratings", "read_movielens_users", "read_sequences", "read_taobao",
    "read_vocab_pickle",
]
