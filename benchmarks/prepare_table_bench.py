"""Throughput and peak memory of `canctr prepare table` on a generated 12-column Parquet file.

The file has one row per impression: label, user, item, category, shop, brand, campaign, hour (ids;
items and the rest Zipf-like), price, age (dense; age ~2% missing), a time column and one list column
of clicked items (lengths uniform in 0..40, mean 20; item ids again). It is written deterministically
(seeded) in 512k-row row groups with pyarrow's defaults (snappy, dictionary pages). Each run is the real
CLI in a child process, so the time includes the interpreter start and imports, and the peak RSS is
that process's (wait4).

    python benchmarks/prepare_table_bench.py --rows 5000000 --runs 3 --stages \
        --md benchmarks/results/prepare_table_cpu.md

With --baseline OLD/src (the src/ folder of another checkout, e.g. `git worktree add OLD 80ddaff`) every
run is preceded by the same CLI run on that version, so a before/after pair shares the machine's state.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SPEC = """\
version = 1
label = "label"
group = "user_id"
time = "ts"

[split]
by = "{split}"
test_fraction = 0.1
seed = 3

[[fields]]
name = "user"
column = "user_id"
side = "user"
[[fields]]
name = "item"
column = "item_id"
side = "item"
[[fields]]
name = "cate"
column = "category"
side = "item"
[[fields]]
name = "shop"
column = "shop_id"
side = "item"
[[fields]]
name = "brand"
column = "brand_id"
side = "item"
[[fields]]
name = "campaign"
column = "campaign_id"
side = "item"
[[fields]]
name = "hour"
side = "context"
[[fields]]
name = "price"
kind = "dense"
norm = "log1p"
[[fields]]
name = "age"
kind = "dense"
nan = "mean"
[[fields]]
name = "hist_item"
column = "clicked_items"
kind = "sequence"
side = "user"
table = "item"
group = "hist"

[[sequences]]
name = "hist"
max_len = 50

[[coaction]]
induction = "item"
feed = "hist_item"
"""
CARTESIAN = """
[[cartesian]]
induction = "item"
feed = "hist_item"
"""


def generate(path: Path, rows: int, seed: int, chunk: int = 1 << 19) -> None:
    """Write the benchmark file chunk by chunk (bounded memory; one row group per chunk)."""
    rng = np.random.default_rng(seed)

    def zipf(n: int, size: int) -> np.ndarray:
        return (rng.zipf(1.2, n) % size).astype(np.int64)

    writer = None
    t0 = 1_700_000_000
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        lengths = rng.integers(0, 41, n)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        age = rng.normal(35, 10, n)
        age[rng.random(n) < 0.02] = np.nan
        table = pa.table({
            "label": (rng.random(n) < 0.1).astype(np.int8),
            "user_id": rng.integers(0, 1_000_000, n),
            "item_id": zipf(n, 500_000),
            "category": zipf(n, 5_000),
            "shop_id": zipf(n, 50_000),
            "brand_id": zipf(n, 20_000),
            "campaign_id": zipf(n, 10_000),
            "hour": rng.integers(0, 24, n).astype(np.int8),
            "price": rng.lognormal(3, 1, n),
            "age": pa.array(age, from_pandas=True),  # NaN -> null
            "ts": np.sort(rng.integers(t0 + start * 10, t0 + (start + n) * 10, n)),
            "clicked_items": pa.ListArray.from_arrays(pa.array(offsets), pa.array(zipf(int(offsets[-1]), 500_000))),
        })
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    if writer is not None:
        writer.close()


def run_once(cmd: list[str], src: str | None = None) -> tuple[float, int, float, float, int, str]:
    """(wall seconds, peak RSS in MB, CPU seconds (user + sys), system seconds and minor page faults of that child
    process alone (wait4), its stdout). `src`: import canctr from this source folder instead (PYTHONPATH)."""
    env = None if src is None else {**os.environ, "PYTHONPATH": src}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode:
            sys.exit(f"prepare table failed ({proc.returncode}):\n{err.read()}")
        return (wall, usage.ru_maxrss // 1024, usage.ru_utime + usage.ru_stime, usage.ru_stime, usage.ru_minflt,
                out.read())


def stages(spec: Path, data: Path, out: Path) -> dict[str, float]:
    """Where the time goes, in this process: pyarrow decoding alone (the floor of pass 1's reading), the
    sha256 of the input, and prepare_table's passes (wall seconds)."""
    import hashlib

    import canctr.data.table as table

    columns = [c for c in pq.ParquetFile(data).schema_arrow.names if c != "ts"]
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    f = pq.ParquetFile(data)
    for i in range(f.num_row_groups):
        f.read_row_group(i, columns=columns)
    seconds["pyarrow decode of the 11 columns"] = time.perf_counter() - t
    t = time.perf_counter()
    with open(data, "rb") as fh:
        hashlib.file_digest(fh, "sha256")
    seconds["sha256 of the input"] = time.perf_counter() - t
    for name in ("_time_cutoff", "_pass1", "_pass2"):
        fn = getattr(table._TablePrepare, name)

        def timed(self, *args, _fn=fn, _name=name):  # noqa: ANN001, ANN002, ANN202
            t0 = time.perf_counter()
            try:
                return _fn(self, *args)
            finally:
                seconds[f"prepare_table {_name.lstrip('_')}"] = time.perf_counter() - t0

        setattr(table._TablePrepare, name, timed)
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    table.prepare_table(spec, [data], out)
    seconds["prepare_table in total (no interpreter start)"] = time.perf_counter() - t
    return seconds


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", type=int, default=3, help="prepare runs on the same file (the median is reported)")
    ap.add_argument("--split", choices=("user", "time"), default="user")
    ap.add_argument("--cartesian", action="store_true", help="also collect the item x hist_item Cartesian keys")
    ap.add_argument("--stages", action="store_true", help="also time the stages in-process (see stages())")
    ap.add_argument("--work", help="folder for the file and outputs (default: a temporary one, removed)")
    ap.add_argument("--md", help="write the markdown report here")
    ap.add_argument("--baseline", metavar="SRC", help="the src/ folder of an earlier checkout (e.g. a worktree of the "
                    "commit before a change): each run also runs that version's CLI, alternating with this one, "
                    "so machine drift hits both; its rows are reported as 'before'")
    ap.add_argument("--baseline-label", default="baseline", help="name of the baseline in the report (e.g. a commit)")
    a = ap.parse_args()
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="canctr-table-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        data = work / f"clicks_{a.rows}_{a.seed}.parquet"
        t = time.perf_counter()
        if not data.exists():
            generate(data, a.rows, a.seed)
        gen_s = time.perf_counter() - t
        meta = pq.ParquetFile(data).metadata
        spec = work / "spec.toml"
        spec.write_text(SPEC.format(split=a.split) + (CARTESIAN if a.cartesian else ""))
        cmd = [sys.executable, "-m", "canctr.cli", "prepare", "table", "--spec", str(spec), "--input", str(data),
               "--out", str(work / "out")]
        runs, before = [], []
        for i in range(a.runs):
            for src, into in ((a.baseline, before), (None, runs)) if a.baseline else ((None, runs),):
                shutil.rmtree(work / "out", ignore_errors=True)
                load = os.getloadavg()[0]
                wall, peak, cpu, sys_s, faults, stdout = run_once(cmd, src)
                into.append((wall, peak, cpu, load, sys_s, faults))
                print(f"run {i + 1}{' (' + a.baseline_label + ')' if src else ''}: {wall:.2f}s, "
                      f"{meta.num_rows / wall / 1e6:.2f} M rows/s, peak RSS {peak} MB, CPU {cpu:.2f}s "
                      f"(sys {sys_s:.2f}s), {faults:,} minor faults, load before {load:.2f}", flush=True)
        where = stages(spec, data, work / "out") if a.stages else {}
        median = statistics.median(w for w, *_ in runs)
        peak = max(p for _, p, *_ in runs)
        argv = sys.argv[1:]
        if a.baseline:  # no local paths in the record
            argv = [f"<src of {a.baseline_label}>" if x == a.baseline else x for x in argv]
        shown = " ".join(["python benchmarks/prepare_table_bench.py", *argv])
        loads = [r[3] for r in runs + before]
        lines = [
            "# `canctr prepare table` throughput (CPU)",
            "",
            f"Command: `{shown}`  ",
            f"Machine: {cpu_name()}, {os.cpu_count()} cores; Python {platform.python_version()}, "
            f"pyarrow {pa.__version__}, numpy {np.__version__}",
            "",
            f"Input: {meta.num_rows:,} rows x {meta.num_columns} columns of Parquet ({data.stat().st_size / 2**20:.0f} "
            f"MiB, {meta.num_row_groups} row groups, generated in {gen_s:.1f}s); one list column, mean length "
            f"20; split by {a.split}{'; with the item x hist_item Cartesian keys' if a.cartesian else ''}.",
            "",
            *([f"Each run is preceded by the same command on {a.baseline_label} (its src/ on PYTHONPATH), "
               "alternating, so drift of the machine hits both.", ""] if a.baseline else []),
            "| run | wall (s) | rows/s | peak RSS (MB) | CPU user+sys (s) | of which sys (s) | minor faults "
            "| 1-min load average before |",
            "|---|---|---|---|---|---|---|---|",
            *(f"| {i + 1}{' ' + a.baseline_label if rows is before else ''} | {w:.2f} | "
              f"{meta.num_rows / w / 1e6:.2f} M | {p} | {c:.2f} | {sy:.2f} | {fl:,} | {ld:.2f} |"
              for rows in ((before, runs) if a.baseline else (runs,)) for i, (w, p, c, ld, sy, fl) in enumerate(rows)),
            "",
            *([f"Median of {a.baseline_label}: {statistics.median(w for w, *_ in before):.2f}s = "
               f"{meta.num_rows / statistics.median(w for w, *_ in before) / 1e6:.2f} M rows/s, CPU "
               f"{statistics.median(r[2] for r in before):.2f}s, minor faults "
               f"{statistics.median(r[5] for r in before):,.0f}; peak RSS {max(p for _, p, *_ in before)} MB.",
               ""] if a.baseline else []),
            f"Median: {median:.2f}s = **{meta.num_rows / median / 1e6:.2f} M rows/s** end to end (interpreter start, "
            f"imports, sha256 of the input, both passes, every file written), CPU "
            f"{statistics.median(r[2] for r in runs):.2f}s, minor faults {statistics.median(r[5] for r in runs):,.0f}; "
            f"peak RSS {peak} MB. "
            f"Target 2 M rows/s: {'met' if meta.num_rows / median >= 2e6 else 'not met'}.",
            "",
            *([f"Other jobs shared the machine during these runs (1-min load average up to "
               f"{max(loads):.1f} before a run on {os.cpu_count()} cores), so the wall times "
               "are upper bounds; the CPU column is less sensitive to that.", ""]
              if max(loads) > 0.5 else []),
            *(["Where the time goes (one more run in the benchmark's own process, wall seconds; the passes "
               "overlap reading, writing and hashing on background threads):", "",
               "| stage | seconds |", "|---|---|", *(f"| {k} | {v:.2f} |" for k, v in where.items()), ""]
              if where else []),
            "Summary printed by the last run:",
            "",
            "```",
            stdout.rstrip().replace(str(work), "<work>"),
            "```",
        ]
        text = "\n".join(lines) + "\n"
        if a.md:
            Path(a.md).parent.mkdir(parents=True, exist_ok=True)
            Path(a.md).write_text(text)
        print(text)
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
