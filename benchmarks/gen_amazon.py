"""Generate a raw McAuley-2014-format Amazon review file (+ meta) of any size, for pipeline benchmarks.

The generator ships with the package (`canctr.data.gen_amazon`, which `canctr bench --sections pipeline` runs);
this script is the same command from a source checkout:

    python benchmarks/gen_amazon.py --reviews 5000000 --out data/amazon5m
    python -m canctr.data.gen_amazon --reviews 5000000 --out data/amazon5m     # the same
"""

from __future__ import annotations

from canctr.data.gen_amazon import main

if __name__ == "__main__":
    main()
