"""`canctr bench` end to end on a tiny prepared dataset: every section runs in real subprocesses and is
written as JSON + markdown (the numbers themselves are benchmarks, not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

from synth import make_prepared

from canctr.cli import main


def test_bench_writes_every_section(tmp_path, capsys):
    data = make_prepared(tmp_path / "data")
    stem = tmp_path / "bench"
    rc = main(["bench", "--data", str(data), "--models", "can-dnn", "--device", "cpu", "--large-batch", "256",
               "--optimizer", "lazy_adam", "--warmup", "1", "--steps", "2", "--requests", "3", "--out", str(stem)])
    assert rc == 0
    r = json.loads(stem.with_suffix(".json").read_text())
    assert [(c["model"], c["batch_size"]) for c in r["train"]] == [("can-dnn", 128), ("can-dnn", 256)]
    assert all(c["samples_per_second"] > 0 and c["peak_memory_mb"] > 0 for c in r["train"])
    assert {c["model"] for c in r["infer"]} == {"can-dnn"} and r["loader"]
    md = stem.with_suffix(".md").read_text()
    assert "## Training" in md and "## Inference" in md and "## Loader alone" in md


def test_process_tree_memory_counts_children():
    from canctr.bench import _watch_tree_memory

    code = ("import subprocess, sys; subprocess.run([sys.executable, '-c', "
            "'import time; b = bytearray(300 * 2**20); time.sleep(1.0)'])")
    peak = _watch_tree_memory(subprocess.Popen([sys.executable, "-c", code]))
    assert peak > 300  # the grandchild's 300 MB are included


def test_bench_pipeline_section_times_prepare_on_a_generated_file(tmp_path):
    data = make_prepared(tmp_path / "data")
    stem = tmp_path / "bench"
    rc = main(["bench", "--data", str(data), "--sections", "pipeline", "--pipeline-reviews", "3000", "--workdir",
               str(tmp_path / "work"), "--out", str(stem)])
    assert rc == 0
    r = json.loads(stem.with_suffix(".json").read_text())
    assert r["train"] == [] and r["infer"] == [] and r["loader"] == []
    (cell,) = r["pipeline"]
    assert cell["reviews"] == 3000 and cell["reviews_per_second"] > 0 and cell["output_mb"] > 0
    schema = json.loads((tmp_path / "work" / "amazon_3000_prepared" / "schema.json").read_text())
    assert schema["counts"]["events"] == 3000
    assert "| 3,000 |" in stem.with_suffix(".md").read_text()
