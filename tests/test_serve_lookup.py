"""The small-request mapping path: a vocabulary's dict probed for a request's ids (`_Table.lookup_known`,
`RawIdMapper.known_sequence`) gives exactly what the pyarrow path (`_Table.lookup_arrow`, the reference) gives,
indices and unknown counts, or steps aside (None) for the reference to answer."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from canctr.data.spec import behaviour_spec
from canctr.serve.scorer import Limits, RequestError, Scorer
from canctr.serve.vocab import RawIdMapper, _Table

NUMERIC = ["<pad/unk>", "7", "12", "300", "0", "-5", "12"]  # a repeated id: the first index wins
TEXT = ["<pad/unk>", "a", "b", "ünï", "", "7", "a b"]
QUERIES = [
    ["7", "12", "300"], ["12", "12", "-5", "0"], ["7", "8"], ["07", " 7", "+7", "-0"], [7, 12], [7, "12"],
    ["a", "b", "ünï", "", "a b"], ["a", None], [None], [], ["x"], ["9223372036854775808"], [True, "7"],
]


def tables() -> dict[str, _Table]:
    return {"numeric text": _Table("t", ids=NUMERIC), "numeric int": _Table("t", ids=NUMERIC, key_type="int"),
            "text": _Table("t", ids=TEXT), "text int": _Table("t", ids=TEXT, key_type="int")}


@pytest.mark.parametrize("name", ["numeric text", "numeric int", "text", "text int"])
def test_lookup_equals_the_arrow_reference(name: str) -> None:
    table = tables()[name]
    assert (table.keys is None) == (name == "text int")  # an int-keyed table of non-numeric ids: no dict
    for q in QUERIES:
        try:
            want = table.lookup_arrow(list(q))
        except (ValueError, pa.ArrowException) as e:
            with pytest.raises(type(e)):
                table.lookup(list(q))
            continue
        got = table.lookup(list(q))
        np.testing.assert_array_equal(got[0], want[0], err_msg=f"{name} {q}")
        assert got[1] == want[1], (name, q)
        known = table.lookup_known(list(q))
        assert known is None or (np.array_equal(known, want[0]) and want[1] == 0), (name, q)
    assert table.lookup_known(["7"] if name.startswith("numeric") else ["a"]) is not None or table.keys is None
    assert table.lookup_known(("7", "12")) is None and table.lookup_known(np.array(["7"])) is None  # lists only
    assert table.lookup_known([["7"]]) is None  # unhashable: the reference says what is wrong


def test_repeated_vocabulary_id_takes_its_first_index() -> None:
    table = _Table("t", ids=NUMERIC)
    assert table.lookup_known(["12"]).tolist() == [2] == table.lookup_arrow(["12"])[0].tolist()


def test_known_sequence_equals_the_arrow_path() -> None:
    spec = behaviour_spec(max_len=4)
    items = ["<pad/unk>", *(str(2000 + i) for i in range(1, 30))]
    cates = ["<pad/unk>", *(f"c{i}" for i in range(1, 6))]
    mapper = RawIdMapper(spec, {"user": {"ids": ["<pad/unk>", "u1"]}, "item": {"ids": items},
                                "cate": {"ids": cates}})
    rows = [["2001", "2002", "2003", "2004", "2005", "2006"], [], ["2010"], ["2029", "2001", "2002", "2003"]]
    got = mapper.known_sequence("hist_item", rows)
    want = mapper._map_sequence(spec.field("hist_item"), pa.array(rows, pa.list_(pa.string())))
    assert got is not None
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    assert got[1].tolist() == [4, 0, 1, 4] and got[0][:4].tolist() == [3, 4, 5, 6]  # the last max_len kept
    assert mapper.known_sequence("hist_item", [["2001", "9999"]]) is None  # an unknown id: counted elsewhere
    assert mapper.known_sequence("hist_item", [["2001"], None]) is None  # a null row
    assert mapper.known_sequence("hist_item", ["2001"]) is None  # not a list of lists
    assert mapper.known_sequence("hist_cate", [["c1", "c5"]])[0].tolist() == [1, 5]
    before = dict(mapper.unknown)
    flat, lens = mapper.map_sequence("hist_item", [["2001", "9999"], ["2002"]])
    assert flat.tolist() == [1, 0, 2] and lens.tolist() == [2, 1]
    assert mapper.unknown["hist_item"] == before["hist_item"] + 1


def _scorer() -> Scorer:
    spec = behaviour_spec(max_len=5)
    tables = {"user": {"ids": ["<pad/unk>", *(str(i) for i in range(1, 20))], "key_type": "int"},
              "item": {"ids": ["<pad/unk>", *(str(2000 + i) for i in range(1, 40))]},
              "cate": {"ids": ["<pad/unk>", *(f"c{i}" for i in range(1, 6))]}}
    return Scorer(engine="torch", spec=spec, mapper=RawIdMapper(spec, tables), info={"shared_user": True},
                  limits=Limits())


REQUESTS = [
    # all known, text ids, a history longer than max_len
    [({"user": "3", "hist_item": [str(2000 + i) for i in range(1, 9)], "hist_cate": ["c1"] * 8},
      [{"item": "2004", "cate": "c2"}, {"item": "2005", "cate": "c3"}])],
    # unknown user, integer ids, text for the int-keyed user table, nulls, an unknown history id
    [({"user": "07", "hist_item": [2001, "2002", "9999"], "hist_cate": ["c1", None, "c9"]},
      [{"item": 2004, "cate": "c2"}, {"item": "2099", "cate": None}, {"item": "2003", "cate": "c1"}]),
     ({"user": 99, "hist_item": [], "hist_cate": []}, [{"item": "2010", "cate": "c5"}])],
    # ids mixing integers and text in one history
    [({"user": 4, "hist_item": ["2001", 2002], "hist_cate": ["c1", "c2"]}, [{"item": "2001", "cate": "c1"}])],
]


@pytest.mark.parametrize("k", range(len(REQUESTS)))
def test_map_requests_equals_the_arrow_path(k: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A request maps to the same batch and unknown counts with the dict path as with pyarrow alone."""
    fast = _scorer().map_requests(REQUESTS[k])
    with monkeypatch.context() as m:
        m.setattr(_Table, "lookup_known", lambda self, values: None)
        m.setattr(RawIdMapper, "known_sequence", lambda self, name, rows: None)
        ref = _scorer().map_requests(REQUESTS[k])
    (b1, k1, u1), (b2, k2, u2) = fast, ref
    assert k1.tolist() == k2.tolist() and u1.keys() == u2.keys()
    for name in u1:
        assert u1[name].tolist() == u2[name].tolist(), name
    for name, t in b2.sparse.items():
        assert b1.sparse[name].tolist() == t.tolist(), name
    assert b1.lengths["hist"].tolist() == b2.lengths["hist"].tolist()
    assert b1.user.tolist() == b2.user.tolist()


BAD = [
    [({"user": "1", "hist_item": ["2001", 1.5], "hist_cate": ["c1", "c1"]}, [{"item": "2001", "cate": "c1"}])],
    [({"user": "1", "hist_item": [], "hist_cate": []}, [{"item": ["2001"], "cate": "c1"}])],
    [({"user": "1", "hist_item": "2001", "hist_cate": "c1"}, [{"item": "2001", "cate": "c1"}])],
    [({"user": 1.0, "hist_item": [], "hist_cate": []}, [{"item": "2001", "cate": "c1"}])],
]


@pytest.mark.parametrize("k", range(len(BAD)))
def test_odd_ids_get_the_answer_of_the_arrow_path(k: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ids the dict cannot take (a float, a list, a string for a history) get the reference's answer or error."""
    def outcome() -> object:
        try:
            b, _, u = _scorer().map_requests(BAD[k])
        except RequestError as e:
            return str(e)
        return {n: t.tolist() for n, t in b.sparse.items()}, {n: v.tolist() for n, v in u.items()}

    fast = outcome()
    with monkeypatch.context() as m:
        m.setattr(_Table, "lookup_known", lambda self, values: None)
        m.setattr(RawIdMapper, "known_sequence", lambda self, name, rows: None)
        assert outcome() == fast
