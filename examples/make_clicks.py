"""A small synthetic click log in the shape of examples/specs/clicks.toml, for trying `canctr prepare table`.

    python examples/make_clicks.py --rows 200000 --out data/clicks.parquet
    python examples/make_clicks.py --rows 200000 --format csv --out data/clicks.csv

One row per impression, with exactly the columns the spec reads:

    user_id             int64    1..U
    item_id             int64    1..I (the target ad)
    category            string   "c000".. (the target's category; ids may be text)
    shop_id             int64    the target's shop
    hour                int64    0..23, the hour of `ts` (UTC)
    price               float64  the target's price (2 decimals); ~1% missing
    age                 float64  the user's age; ~2% missing
    clicked_items       list<int64>   the user's earlier clicks, oldest first (0..40 of them)
    clicked_categories  list<string>  their categories, aligned with clicked_items
    clicked             int8     the label, 0/1
    ts                  int64    unix seconds over one week; rows are in time order

CSV has the same columns, each list joined by "|" ("17|4|9"; an empty history is an empty field).

The clicks have signal a model can learn (logistic in these terms):

    * co-action: +1.6 when the target's category occurs among the clicked categories (every user has three
      favourite categories that fill most of the history and half of the targets);
    * price (dense): -0.7 per standard deviation of log price;
    * hour (context): +-0.6 over the day, highest at 21:00;
    * shop quality: a fixed N(0, 0.5) effect per shop; age: -0.015 per year over 40.

`make_clicks(rows, seed)` returns the table (same arguments, same table); `write(table, path, fmt)` writes
it; `bayes_auc(rows, seed)` is the AUC of the true click probabilities, the best any model can reach.
Only numpy and pyarrow are needed, and everything is vectorised (200k rows take about a second).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

T0 = 1_700_006_400  # a midnight (UTC), 2023-11-15
LIST_SEP = "|"
FORMATS = ("parquet", "csv")


def _simulate(rows: int, seed: int) -> tuple[pa.Table, np.ndarray]:
    """(the click log, the true click probability of every row)."""
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    rng = np.random.default_rng(seed)
    n_users = max(rows // 10, 20)
    n_items = max(rows // 20, 100)
    n_cates = int(np.clip(rows // 400, 30, 200))
    n_shops = max(rows // 100, 20)

    # the catalogue: every category has items; an item has one category, one shop and a list price
    item_cate = rng.permutation(np.arange(n_items) % n_cates)
    by_cate = np.argsort(item_cate, kind="stable")
    cate_count = np.bincount(item_cate, minlength=n_cates)
    cate_start = np.concatenate([[0], np.cumsum(cate_count)[:-1]])
    item_shop = rng.integers(n_shops, size=n_items)
    item_price = np.exp(rng.normal(3.0, 0.8, size=n_items))
    shop_quality = rng.normal(0.0, 0.5, size=n_shops)
    user_pref = rng.integers(n_cates, size=(n_users, 3))
    user_age = rng.integers(18, 70, size=n_users).astype(np.float64)

    def categories(users: np.ndarray, p_favourite: float) -> np.ndarray:
        favourite = user_pref[users, rng.integers(3, size=users.size)]
        return np.where(rng.random(users.size) < p_favourite, favourite, rng.integers(n_cates, size=users.size))

    def items_of(cates: np.ndarray) -> np.ndarray:
        return by_cate[cate_start[cates] + (rng.random(cates.size) * cate_count[cates]).astype(np.int64)]

    user = rng.integers(n_users, size=rows)
    cate = categories(user, 0.5)
    item = items_of(cate)
    lens = rng.integers(0, 41, size=rows)
    owner = np.repeat(np.arange(rows), lens)
    hist_cate = categories(user[owner], 0.7)
    hist_item = items_of(hist_cate)
    hit = np.bincount(owner[hist_cate == cate[owner]], minlength=rows) > 0

    ts = T0 + np.sort(rng.integers(0, 7 * 86_400, size=rows))
    hour = (ts % 86_400) // 3_600
    price = np.round(item_price[item] * rng.uniform(0.85, 1.15, size=rows), 2)
    age = user_age[user]
    z_price = (np.log(price) - 3.0) / 0.8
    logit = (-0.9 + 1.6 * hit - 0.7 * z_price + 0.6 * np.cos(2 * np.pi * (hour - 21) / 24)
             + shop_quality[item_shop[item]] - 0.015 * (age - 40))
    prob = 1.0 / (1.0 + np.exp(-logit))
    clicked = (rng.random(rows) < prob).astype(np.int8)

    names = pa.array([f"c{i:03d}" for i in range(n_cates)])
    offsets = pa.array(np.concatenate([[0], np.cumsum(lens)]).astype(np.int32))
    table = pa.table({
        "user_id": pa.array(user + 1),
        "item_id": pa.array(item + 1),
        "category": pc.take(names, pa.array(cate)),
        "shop_id": pa.array(item_shop[item] + 1),
        "hour": pa.array(hour),
        "price": pa.array(price, mask=rng.random(rows) < 0.01),
        "age": pa.array(age, mask=rng.random(rows) < 0.02),
        "clicked_items": pa.ListArray.from_arrays(offsets, pa.array(hist_item + 1)),
        "clicked_categories": pa.ListArray.from_arrays(offsets, pc.take(names, pa.array(hist_cate))),
        "clicked": pa.array(clicked),
        "ts": pa.array(ts),
    })
    return table, prob


def make_clicks(rows: int = 200_000, seed: int = 0) -> pa.Table:
    """The click log of `rows` impressions (deterministic in (rows, seed))."""
    return _simulate(rows, seed)[0]


def bayes_auc(rows: int = 200_000, seed: int = 0) -> float:
    """The AUC of the true click probabilities against the drawn clicks of `make_clicks(rows, seed)`."""
    table, prob = _simulate(rows, seed)
    return _auc(table.column("clicked").to_numpy(), prob)


def _auc(label: np.ndarray, score: np.ndarray) -> float:
    """The Mann-Whitney AUC (tied scores get their mean rank); NaN with one class only."""
    label = np.asarray(label).astype(bool)
    pos, neg = int(label.sum()), int((~label).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    mean_rank = np.cumsum(counts) - (counts - 1) / 2  # 1-based mean rank of each distinct score
    return float((mean_rank[inverse][label].sum() - pos * (pos + 1) / 2) / (pos * neg))


def format_of(path: str | Path, fmt: str | None = None) -> str:
    """`fmt` if given, else from the file name: .csv -> csv, anything else parquet."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
        return fmt
    return "csv" if str(path).endswith(".csv") else "parquet"


def write(table: pa.Table, path: str | Path, fmt: str | None = None) -> Path:
    """Write `table` as Parquet or CSV (lists joined by "|"); the parent folder is created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if format_of(path, fmt) == "parquet":
        pq.write_table(table, path)
        return path
    columns = {}
    for name in table.column_names:
        col = table.column(name)
        if pa.types.is_list(col.type):
            col = pc.binary_join(col.cast(pa.list_(pa.string())), LIST_SEP)
        columns[name] = col
    pcsv.write_csv(pa.table(columns), path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", choices=FORMATS, default=None, help="default: from --out (.csv or parquet)")
    parser.add_argument("--out", required=True, help="output file, e.g. data/clicks.parquet")
    args = parser.parse_args(argv)
    if args.rows < 1:
        parser.error(f"--rows must be >= 1, got {args.rows}")
    table, prob = _simulate(args.rows, args.seed)
    path = write(table, args.out, args.format)
    clicked = table.column("clicked").to_numpy()
    print(f"{path}: {table.num_rows:,} rows ({format_of(path, args.format)}), click rate {clicked.mean():.3f}, "
          f"{pc.count_distinct(table.column('user_id')).as_py():,} users, "
          f"{pc.count_distinct(table.column('item_id')).as_py():,} items; "
          f"the true click probabilities reach AUC {_auc(clicked, prob):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
