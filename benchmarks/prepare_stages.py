"""Stage timings of `prepare amazon` in one process: reviews, meta, categories, samples, encode + write.

Wraps the pipeline's stage functions with timers and runs `prepare_amazon` (2 parse workers, as the CLI).
Run it with PYTHONPATH=<an older checkout>/src to time an earlier version on the same file.

    python benchmarks/gen_amazon.py --reviews 5000000 --out /tmp/canctr-bench/amazon_5000000
    python benchmarks/prepare_stages.py --raw /tmp/canctr-bench/amazon_5000000
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

try:  # the module layout since data/ was split by job; an older checkout (PYTHONPATH) has the flat one
    from canctr.data import encode
    from canctr.data.formats import amazon
    from canctr.data.samples import PrepareOptions

    STAGES = ((amazon, "read_amazon_reviews"), (amazon, "read_amazon_meta"), (encode, "item_categories"),
              (encode, "event_samples"), (encode, "encode_and_save"))
    prepare_amazon = amazon.prepare_amazon
except ImportError:
    from canctr.data.pipeline import PrepareOptions

    from canctr.data import pipeline, readers

    STAGES = ((readers, "read_amazon_reviews"), (readers, "read_amazon_meta"), (pipeline, "_item_categories"),
              (pipeline, "event_samples"), (pipeline, "encode_and_save"))
    prepare_amazon = pipeline.prepare_amazon


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--raw", required=True, help="a gen_amazon.py output directory (reviews.json, meta.json)")
    a = ap.parse_args()
    seconds: dict[str, float] = {}
    for module, name in STAGES:
        fn = getattr(module, name)

        @functools.wraps(fn)
        def timed(*args, _fn=fn, _name=name, **kwargs):  # noqa: ANN002, ANN003, ANN202
            t = time.perf_counter()
            try:
                return _fn(*args, **kwargs)
            finally:
                seconds[_name.lstrip("_")] = seconds.get(_name.lstrip("_"), 0.0) + time.perf_counter() - t

        setattr(module, name, timed)
    raw = Path(a.raw)
    out = Path(tempfile.mkdtemp(prefix="canctr-stages-"))
    try:
        t = time.perf_counter()
        prepare_amazon(raw / "reviews.json", raw / "meta.json", out, PrepareOptions())
        total = time.perf_counter() - t
    finally:
        shutil.rmtree(out, ignore_errors=True)
    reviews = sum(1 for _ in open(raw / "reviews.json", "rb"))
    print(json.dumps({"stages_s": {k: round(v, 2) for k, v in seconds.items()}, "total_s": round(total, 2),
                      "reviews_per_second": round(reviews / total)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
