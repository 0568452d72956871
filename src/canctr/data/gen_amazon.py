"""Generate a raw McAuley-2014-format Amazon review file (+ meta) of any size, for pipeline benchmarks.

Reviews are strict JSON lines with every field of the published files (reviewerID, asin, reviewerName,
helpful, reviewText, overall, summary, unixReviewTime, reviewTime); meta lines are Python-literal dicts
(single quotes) as in the 2014 meta files. Popularity is Zipf-like, times are increasing per user with
day resolution, review texts are 200-1,200 characters: the byte mix of the real files.

    python -m canctr.data.gen_amazon --reviews 5000000 --out data/amazon5m
    (or python benchmarks/gen_amazon.py ..., the same in a source checkout)

`canctr bench --sections pipeline` runs it (part of the package, so an installed wheel can too).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

WORDS = ("great product works well love quality price fast shipping would buy again skin hair smell nice "
         "bottle small size color recommend daughter gift cheap broke after week").split()


def generate_amazon(out: str | Path, reviews: int, *, users_per_review: float = 0.12,
                    items_per_review: float = 0.06, seed: int = 0) -> None:
    """Write OUT/reviews.json and OUT/meta.json: `reviews` reviews by reviews x users_per_review users of
    reviews x items_per_review items; prints one line with the sizes."""
    rng = np.random.default_rng(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n = reviews
    n_users, n_items = max(2, int(n * users_per_review)), max(2, int(n * items_per_review))
    t0 = time.perf_counter()
    # every user gets >= 1 review; items Zipf-ish popular
    user = np.sort(np.concatenate([np.arange(n_users), rng.integers(0, n_users, n - n_users)]))
    item = np.minimum((rng.pareto(1.2, n) * n_items / 50).astype(np.int64), n_items - 1)
    day = 1_000_000_000 // 86400 + np.cumsum(rng.integers(0, 40, n))  # increasing within each user's block
    texts = [" ".join(rng.choice(WORDS, size=k)) for k in rng.integers(40, 220, 4096)]
    text_id = rng.integers(0, len(texts), n)
    overall = rng.integers(1, 6, n)
    with open(out / "reviews.json", "w") as f:
        chunk = 100_000
        for s in range(0, n, chunk):
            lines = []
            for j in range(s, min(n, s + chunk)):
                d = int(day[j]) * 86400
                lines.append(json.dumps({
                    "reviewerID": f"A{user[j]:012X}", "asin": f"B{item[j]:09d}", "reviewerName": "Jane D.",
                    "helpful": [int(text_id[j] % 5), int(text_id[j] % 7)], "reviewText": texts[text_id[j]],
                    "overall": float(overall[j]), "summary": texts[text_id[j]][:40],
                    "unixReviewTime": d, "reviewTime": time.strftime("%m %d, %Y", time.gmtime(d)),
                }))
            f.write("\n".join(lines) + "\n")
    with open(out / "meta.json", "w") as f:
        for k in range(n_items):
            f.write(repr({"asin": f"B{k:09d}", "title": f"Item {k}", "price": 9.99,
                          "categories": [["Beauty", "Skin Care", f"Cat{k % 800}"]]}) + "\n")
    size = (out / "reviews.json").stat().st_size
    print(f"{n:,} reviews ({size / 1e9:.2f} GB), {n_users:,} users, {n_items:,} items "
          f"in {time.perf_counter() - t0:.0f}s -> {out}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reviews", type=int, default=5_000_000)
    ap.add_argument("--users-per-review", type=float, default=0.12, help="users = reviews x this")
    ap.add_argument("--items-per-review", type=float, default=0.06)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    generate_amazon(a.out, a.reviews, users_per_review=a.users_per_review, items_per_review=a.items_per_review,
                    seed=a.seed)


if __name__ == "__main__":
    main()
