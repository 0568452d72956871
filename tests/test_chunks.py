"""Block-parallel parsing gives exactly the single-pass result: codes, order, errors and their line numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_data import files_bytes, write_amazon

from canctr.data import chunks
from canctr.data.formats import amazon
from canctr.data.formats.amazon import fast_meta, parse_meta, prepare_amazon, read_amazon_reviews
from canctr.data.lines import DataFormatError
from canctr.data.samples import PrepareOptions
from canctr.data.vocab import Interner, Vocab, n_distinct, unique_first_inverse_counts


def _same(a, b) -> None:
    assert a.users.names == b.users.names and a.items.names == b.items.names
    for f in ("user", "item", "time"):
        assert np.array_equal(getattr(a, f), getattr(b, f)), f
    assert a.skipped_rows == b.skipped_rows


def test_byte_ranges_cover_the_file_at_line_boundaries(tmp_path: Path) -> None:
    path = tmp_path / "f.txt"
    data = b"".join(b"x" * (i % 7) + b"\n" for i in range(200)) + b"tail-without-newline"
    path.write_bytes(data)
    for block in (1, 5, 64, 10_000):
        ranges = chunks.byte_ranges(path, block)
        assert ranges[0][0] == 0 and ranges[-1][1] == len(data)
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        assert all(data[e - 1 : e] == b"\n" for _, e in ranges[:-1])
        lines = [ln for s, e in ranges for ln in chunks.split_lines(data[s:e])]
        assert lines == data.split(b"\n")


def test_block_view_is_the_range_without_a_copy_and_counts_alike(tmp_path: Path) -> None:
    path = tmp_path / "f.txt"
    data = b"".join(b"y" * (i % 5) + b"\n" for i in range(300)) + b"\n\nlast"
    path.write_bytes(data)
    for start, end in chunks.byte_ranges(path, 37):
        block = chunks.Block(str(path), start, end)
        with block.view() as view:
            assert isinstance(view, memoryview) and bytes(view) == block.read() == data[start:end]
            lines = len(chunks.split_lines(view.tobytes()))
            assert chunks.count_lines(view) == chunks.count_lines(block.read()) == lines
    shipped = chunks.Block(str(path), data=b"a\nb")
    with shipped.view() as view:
        assert view == b"a\nb" and chunks.count_lines(view) == 2
    with chunks.Block(str(path), 5, 5).view() as view:
        assert chunks.count_lines(view) == 0


def test_block_view_falls_back_to_read_without_mmap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "f.txt"
    path.write_bytes(b"a\nbb\nccc\n")

    def no_mmap(*args: object, **kwargs: object) -> None:
        raise OSError("mmap not supported here")

    monkeypatch.setattr(chunks.mmap, "mmap", no_mmap)
    with chunks.Block(str(path), 2, 9).view() as view:
        assert view == b"bb\nccc\n" and chunks.count_lines(view) == 2


@pytest.mark.parametrize("gz", [False, True])
def test_parallel_blocks_equal_one_pass(tmp_path: Path, gz: bool) -> None:
    reviews, _ = write_amazon(tmp_path, gz, n_users=120, seed=4)
    one = read_amazon_reviews(reviews, block_bytes=1 << 30)
    with chunks.worker_pool(2) as pool:
        many = read_amazon_reviews(reviews, pool=pool, block_bytes=700)  # dozens of blocks
    _same(one, many)
    assert len(many.item) == len(reviews.read_bytes().splitlines()) or gz


def test_errors_name_the_file_line_from_a_late_block(tmp_path: Path) -> None:
    reviews, _ = write_amazon(tmp_path, gz=False, n_users=120, seed=4)
    good = reviews.read_bytes().splitlines(keepends=True)
    bad = tmp_path / "reviews_bad.json"  # line 301 blank (fine), 302 a bad row, the last not UTF-8
    bad.write_bytes(b"".join(good[:300]) + b"\n" + b'{"reviewerID": "A1"}\n' + b"".join(good[300:]) + b"\xff\xfe\n")
    expected = r"reviews_bad.json, line 302: missing field 'asin'"
    with chunks.worker_pool(2) as pool, pytest.raises(DataFormatError, match=expected):
        read_amazon_reviews(bad, pool=pool, block_bytes=500)
    last = len(good) + 3
    tail = tmp_path / "reviews_tail.json"
    tail.write_bytes(b"".join(good) + b"\xff\xfe\n")
    expected = rf"reviews_tail.json, line {last - 2}: not UTF-8"
    with chunks.worker_pool(2) as pool, pytest.raises(DataFormatError, match=expected):
        read_amazon_reviews(tail, pool=pool, block_bytes=500)
    with chunks.worker_pool(2) as pool:
        skipping = read_amazon_reviews(bad, pool=pool, block_bytes=500, skip_bad_rows=True)
    _same(read_amazon_reviews(bad, skip_bad_rows=True), skipping)
    assert skipping.skipped_rows == {str(bad): 2}
    assert len(skipping.item) == len(good)


def test_prepare_output_does_not_depend_on_workers(tmp_path: Path) -> None:
    reviews, meta = write_amazon(tmp_path, gz=False, n_users=80, seed=2)
    a = prepare_amazon(reviews, meta, tmp_path / "a", PrepareOptions(test_fraction=0.3), workers=1)
    b = prepare_amazon(reviews, meta, tmp_path / "b", PrepareOptions(test_fraction=0.3), workers=2)
    assert a.sources == b.sources and a.counts == b.counts
    assert files_bytes(tmp_path / "a") == files_bytes(tmp_path / "b")


@pytest.mark.parametrize("line", [
    "{'asin': '0000031852', 'title': 'Tutu', 'related': {'also_bought': ['B00JHONN1S']}, "
    "'categories': [['Clothing, Shoes & Jewelry', 'Girls'], ['Sports', 'Dance']], 'price': 3.17}",
    """{'asin': 'X1', 'categories': [["Kids' Furniture", 'Beds']]}""",
    "{'asin': 'X2', 'categories': [[]]}",
    '{"asin": "J1", "categories": [["A", "B"]]}',
    "{'asin': 'X4', 'title': 'no categories'}",
    r"{'asin': 'X5', 'categories': [['a\'b', 'c']]}",
    "{'asin': 'X6', 'categories': [['A', 'B']]",
    "{'asin': 'X7', 'categories': [['A', 'B']], 'reviewerID': 'A1'}",
])
def test_fast_meta_agrees_with_the_full_parse(line: str) -> None:
    fast = fast_meta(line)
    if fast is not None:  # whenever the pattern answers, it answers what literal_eval would
        assert fast == parse_meta(line)


@pytest.mark.parametrize("line, problem", [
    ('{"reviewerID": "a", "asin": "b", "unixReviewTime": 1}{"reviewerID": "c", "asin": "d", "unixReviewTime": 2}',
     "not valid JSON"),
    ('{"reviewerID": "a", "asin": "b", "unixReviewTime": 99999999999999999999}', "unixReviewTime"),
    ('{"reviewerID": "", "asin": "b", "unixReviewTime": 1}', "must be a non-empty string"),
    ('{"reviewerID": "a", "asin": "b", "unixReviewTime": true}', "must be an integer"),
    ('{"reviewerID": "a", "asin": "b", "unixReviewTime": 1.0}', "must be an integer"),
])
def test_block_decoder_refuses_what_the_reference_parser_refuses(tmp_path: Path, line: str, problem: str) -> None:
    path = tmp_path / "reviews.json"
    ok = '{"reviewerID": "u", "asin": "i", "unixReviewTime": 5}\n'
    path.write_text(ok + line + "\n" + ok)
    with pytest.raises(DataFormatError, match=rf"reviews.json, line 2: .*{problem}"):
        read_amazon_reviews(path)


def test_block_decoder_and_line_parser_agree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if getattr(amazon, "_REVIEW_LINES", None) is None:
        pytest.skip("msgspec is not installed: there is no block decoder to compare with the line parser")
    reviews, _ = write_amazon(tmp_path, gz=False, n_users=60, seed=9)
    text = reviews.read_text().splitlines(keepends=True)
    reviews.write_text("".join(text[:10]) + "\n  \n" + "".join(text[10:]))  # blank lines are skipped
    fast = read_amazon_reviews(reviews)
    monkeypatch.setattr(amazon, "_REVIEW_LINES", None)
    _same(fast, read_amazon_reviews(reviews))


def test_unique_by_value_sort_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    for v in (rng.integers(0, 50, 1000), rng.integers(0, 10**12, 500), np.array([7]), np.array([1 << 61, 3])):
        ref = np.unique(v, return_index=True, return_inverse=True, return_counts=True)
        for a, b in zip(unique_first_inverse_counts(v), ref):
            assert np.array_equal(a, b.ravel())


def test_vocab_order_is_count_descending_then_first_appearance() -> None:
    rng = np.random.default_rng(1)
    # dense keys (counted) and sparse keys (sorted), with ties in count and invalid (-1) entries
    for v in (rng.integers(-1, 40, 2000), rng.integers(0, 30, 300) * 10**11, np.array([5, 3, 5, 3, 9, -1, 9, 9])):
        valid = v[v >= 0]
        uniq, first, count = np.unique(valid, return_index=True, return_counts=True)
        expected = uniq[np.lexsort((first, -count))]  # the reference: count descending, first appearance
        vocab = Vocab.fit(v)
        assert vocab.codes.tolist() == expected.tolist()
        assert vocab.encode(v).tolist() == [0 if x < 0 else expected.tolist().index(x) + 1 for x in v.tolist()]
        assert n_distinct(valid) == uniq.size
    assert n_distinct(np.array([10**15, 3, 3])) == 2 and n_distinct(np.array([], np.int64)) == 0


def test_interner_codes_follow_first_appearance_and_merge_in_bulk() -> None:
    one, bulk = Interner(), Interner()
    names = ["b", "a", "b", "c", "a", "d"]
    codes = [one(x) for x in names]
    assert codes == [0, 1, 0, 2, 1, 3] and one.names == ["b", "a", "c", "d"] and len(one) == 4
    assert bulk.merge(["b", "a"]).tolist() == [0, 1]
    assert bulk.merge(["c", "a", "d", "b"]).tolist() == [2, 1, 3, 0]  # a block's distinct names, in its order
    assert bulk.names == one.names and bulk.index == one.index


def test_vocab_encode_and_table_agree_on_unknowns() -> None:
    vocab = Vocab.fit(np.array([7, 3, 7, -1, 9, 3, 7]))
    assert vocab.codes.tolist() == [7, 3, 9] and len(vocab) == 4
    raw = np.array([3, 9, 7, 8, -1, 100])
    assert vocab.encode(raw).tolist() == [2, 3, 1, 0, 0, 0]
    assert vocab.table(10)[raw[:-1]].tolist() == [2, 3, 1, 0, 0]  # codes 0..9; code -1 reads the last entry, 0
